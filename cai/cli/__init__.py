"""The `cai` command line: one thin module per command, each parsing its options into a config and calling the
library. A `CaiError` prints as one line and sets the exit code; anything else is a bug and shows its traceback.

    cai generate --limit 16            # SL-CAI critique -> revision data on the embedded default model
    cai judge outputs/<run>            # AI-labelled preference pairs
    cai train dpo --data outputs/<judge-run> --out outputs/dpo --loss-type soft
    cai run recipes/quickstart.yaml    # the whole pipeline

Heavy libraries (torch, vllm) are imported only inside the commands that need them.
"""

from __future__ import annotations

import argparse
import sys

from cai.cli import constitution, data, evaluate, generate, judge, model, pipeline, review, train

MODULES = (generate, judge, evaluate, train, review, data, pipeline, constitution, model)
"""Each module adds its parser(s) and maps its command name(s) to a function of the parsed arguments."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cai", description="Constitutional AI data and models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in MODULES:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from cai.errors import CaiError
    from cai.train.distributed import end_process

    args = build_parser().parse_args(argv)
    try:
        code = args._run(args)
    except CaiError as e:
        label = "run failed" if e.exit_code == 1 else "error"
        print(f"cai: {label}: {e}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        print("cai: interrupted (completed work is on disk; rerun the same command to resume)", file=sys.stderr)
        code = 130
    return end_process(code)  # a process of an `accelerate launch` group leaves here (cai/train/distributed.py)
