"""`cai export` (a run's datasets and card) and `cai score` (rows scored by a reward model)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="write a run's datasets, JSONL files and dataset card")
    p.add_argument("run", help="run folder, e.g. outputs/<run>")
    p.add_argument("--drop-degenerate", action="store_true", default=None,
                   help="generate runs: leave degenerate revisions (empty, copied, repeating) out of the SFT split")
    p.set_defaults(_run=run_export)

    p = sub.add_parser("score", help="score (prompt, response) rows with a reward model from `cai train rm`")
    p.add_argument("--reward-model", required=True, help="a `cai train rm` folder")
    p.add_argument("--data", required=True, help="rows with prompt + response, prompt + chosen + rejected, or messages")
    p.add_argument("--out", dest="score_out", required=True, help="JSONL: each row with its score(s)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per forward pass (default: 8)")
    p.add_argument("--max-length", type=int, default=1024, help="most tokens per scored row (default: 1024)")
    p.add_argument("--split", default="train", help="split of a datasets folder (default: train)")
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a hub model")
    p.set_defaults(_run=run_score)


def run_export(args: argparse.Namespace) -> int:
    """Rewrite a generate or judge run's export, whichever the run is."""
    from pathlib import Path

    from cai.errors import UsageError
    from cai.runs.store import read_manifest

    run = Path(args.run)
    if not (run / "manifest.json").is_file():
        raise UsageError(f"{run} is not a cai run folder (no manifest.json)")
    kind = read_manifest(run / "manifest.json").get("kind")
    if kind == "judge":
        from cai.judge.export import export_judge_run

        counts = export_judge_run(run)
    elif kind == "generate":
        from cai.generate.export import export_generate_run

        counts = export_generate_run(run, args.drop_degenerate)
    else:
        raise UsageError(f"{run} is a `{kind}` run; `cai export` writes generate and judge runs' datasets")
    print(json.dumps({"export": str(run / "export"), "rows": counts}))
    return 0


def run_score(args: argparse.Namespace) -> int:
    from cai.train.scoring import score_file

    summary = score_file(args.reward_model, args.data, args.score_out, args.batch_size, args.max_length, args.split,
                         args.trust_remote_code)
    print(json.dumps(summary))
    return 0
