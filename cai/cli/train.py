"""`cai train sft|dpo|rm|cost|ppo`: the bundled trainer; every option comes from the task's config."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cai.cli.options import add_settings, config_option, overrides

TASKS = {"sft": "supervised fine-tuning on `messages`",
         "dpo": "preference optimisation (sigmoid, ipo or soft labels)",
         "rm": "a reward model on preference pairs (Bradley-Terry, soft labels)",
         "cost": "a cost model (Safe RLHF): harmlessness pairs plus a safe/unsafe term",
         "ppo": "PPO of a policy against a reward model, KL-penalised to a reference"}


def add_parser(sub: Any) -> None:
    from cai.train.config import CONFIGS

    p = sub.add_parser("train", help="train on cai data: sft, dpo, rm, cost or ppo (bundled trainer)")
    tsub = p.add_subparsers(dest="action", required=True)
    for task, text in TASKS.items():
        t = tsub.add_parser(task, help=text)
        config_option(t)
        add_settings(t, CONFIGS[task])
        t.set_defaults(_run=run)


def run(args: argparse.Namespace) -> int:
    from cai.config import load_config
    from cai.train import CONFIGS, run_training

    config = load_config(CONFIGS[args.action], args.config, overrides(args))
    final = run_training(args.action, config)
    print(json.dumps({"out": config.out, **{k: round(v, 6) if isinstance(v, float) else v for k, v in final.items()}}))
    return 0
