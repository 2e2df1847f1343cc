"""`cai generate`: critique -> revision chains into an SFT dataset (the paper's supervised stage)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from cai.cli.options import add_settings, config_option, finish, overrides


def add_parser(sub: Any) -> None:
    from cai.config import GenerateConfig, StageTokens

    p = sub.add_parser("generate", help="critique -> revision chains into an SFT dataset (SL-CAI)")
    config_option(p)
    add_settings(p, GenerateConfig)
    p.add_argument("--max-new-tokens", dest="max_new_tokens_all", type=int, help="most new tokens for every stage")
    add_settings(p, StageTokens, prefix="max_new_tokens.",
                 flags={s: f"--max-new-tokens-{s}" for s in StageTokens.model_fields})
    finish(p, run)


def run(args: argparse.Namespace) -> int:
    from cai.config import GenerateConfig, load_config
    from cai.generate.run import generate

    config = load_config(GenerateConfig, args.config, overrides(args))
    summary = asyncio.run(generate(config, progress=not args.no_progress))
    print(summary.text())
    print(f"datasets: {summary.run_dir / 'export'}")
    return 0
