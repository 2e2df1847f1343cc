"""`cai judge`: AI-judged preference pairs from runs, sampled responses or a pairs file (RL-CAI feedback)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from cai.cli.options import add_settings, config_option, finish, overrides

JUDGE_FLAGS = {"principles_per_pair": "--principles", "check_judge": None}


def no_judge_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-judge-check", dest="check_judge", action="store_false", default=None,
                        help="skip measuring the judge on labelled pairs first (its quality is then unknown)")


def add_parser(sub: Any) -> None:
    from cai.config import JudgeConfig

    p = sub.add_parser("judge", help="AI-judged preference pairs from runs, samples or a pairs file (RL-CAI)")
    p.add_argument("source", nargs="?", help=JudgeConfig.model_fields["source"].description)
    config_option(p)
    add_settings(p, JudgeConfig, skip={"source"}, flags=JUDGE_FLAGS)
    no_judge_check(p)
    p.add_argument("--policy-model", dest="policy_engine.model",
                   help="`sampled`: the model that samples responses (default: the judge)")
    p.add_argument("--debater-model", dest="debater_engine.model",
                   help="`--protocol debate|consultancy`: the debaters' model (default: the judge's)")
    finish(p, run)


def run(args: argparse.Namespace) -> int:
    from cai.config import JudgeConfig, load_config
    from cai.judge.run import judge_run

    config = load_config(JudgeConfig, args.config, overrides(args))
    summary = asyncio.run(judge_run(config, progress=not args.no_progress))
    print(f"run: {summary.run_dir}\npairs: {summary.total} ({summary.skipped} already done, {summary.ok} labelled now, "
          f"{summary.errors} invalid or failed) in {summary.seconds:.1f} s")
    for reason, n in sorted(summary.error_reasons.items(), key=lambda x: -x[1]):
        print(f"  x{n}: {reason}")
    for note in summary.notes:
        print(note)
    print(f"datasets: {summary.run_dir / 'export'}")
    return 0
