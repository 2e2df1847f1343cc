"""Measure the embedded default judge on the shipped check set, as the shipped recipes use it (hybrid format, 4
principles a pair, the `harmless` constitution, the default templates), and ship the result with cai in
`prompts/judge-checks/<cache key>.json`, so that a fresh machine reads it instead of spending ~11 minutes on 2 CPU
cores measuring the same thing.

    .venv/bin/python scripts/ship_judge_check.py

Run it after changing anything the check's cache key covers (the judge templates, the `harmless` constitution,
`prompts/judge-eval.jsonl`, the judge's format or its defaults): `tests/test_shipped_files.py` fails until the
shipped check matches the key again. The entry records when and on what it was measured, and every report that
reads it says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shipped_judge_config():
    """The judge settings whose check is shipped: those of the shipped recipes' judge, eval and GRPO reward."""
    from cai.config import JudgeConfig

    return JudgeConfig(source="-", principles_per_pair=4)


async def measure() -> dict:
    from cai.engines import EngineConfig, create_engine
    from cai.judge.check import cache_key, check_judge
    from cai.models import cache_dir

    config = shipped_judge_config()
    engine = create_engine(EngineConfig())
    try:
        quality = await check_judge(engine, config)
        key = cache_key(engine, config)
    finally:
        await engine.close()
    target = REPO / "prompts" / "judge-checks" / f"{key}.json"
    target.parent.mkdir(exist_ok=True)
    for old in target.parent.glob("*.json"):
        old.unlink()  # one check is shipped: a stale one would never be read again
    entry = json.loads((cache_dir() / "judge-checks" / f"{key}.json").read_text())
    entry["file"] = "prompts/judge-eval.jsonl"  # not this machine's path (a reader names its own file anyway)
    target.write_text(json.dumps(entry, indent=2))
    return {"shipped": str(target.relative_to(REPO)), "accuracy": quality["accuracy"], "pairs": quality["pairs"]}


def main() -> int:
    os.environ["CAI_RECHECK_JUDGE"] = "1"  # measure it here, whatever the cache or the shipped folder holds
    print(json.dumps(asyncio.run(measure()), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
