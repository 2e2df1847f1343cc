"""`cai train <task>`: the bundled trainer, one subcommand per task of the registry (cai/registry.py, `TASKS`); every
option comes from the task's settings class."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cai.cli.options import add_settings, config_option, overrides


def add_parser(sub: Any) -> None:
    from cai.registry import TASKS

    p = sub.add_parser("train", help=f"train on cai data: {', '.join(TASKS)} (the bundled trainer)")
    tsub = p.add_subparsers(dest="action", required=True)
    for task, stage in TASKS.items():
        t = tsub.add_parser(task, help=stage.help, aliases=list(stage.aliases))
        config_option(t)
        if task == "online-dpo":
            online_options(t)
        else:
            add_settings(t, stage.config_class())
        t.set_defaults(_run=run, _task=task)


def online_options(parser: argparse.ArgumentParser) -> None:
    """online-dpo's own settings, every judge option (`judge.<name>`) and the judge's model."""
    from cai.cli.judge import no_judge_check
    from cai.config import JudgeConfig
    from cai.train.rl_config import JUDGE_OPTIONS, OnlineDPOConfig

    add_settings(parser, OnlineDPOConfig, flags={"data": "--prompts", "max_steps": None, "reference_model": None,
                                                 "eval_data": None, "resume": None})
    judge = parser.add_argument_group("judge (every round's AI judge)")
    add_settings(judge, JudgeConfig, skip=set(JudgeConfig.model_fields) - set(JUDGE_OPTIONS), prefix="judge.",
                 flags={"principles_per_pair": "--principles", "check_judge": None,
                        "concurrency": "--judge-concurrency", "max_failure_rate": "--judge-max-failure-rate"})
    no_judge_check(judge)
    judge.set_defaults(check_judge=None)
    for action in judge._group_actions:
        if action.dest == "check_judge":
            action.dest = "judge.check_judge"
    judge.add_argument("--judge-model", dest="judge_engine.model",
                       help="the judge's model: a local folder or hub id, or openai/<name> with --judge-base-url "
                            "(default: the embedded model)")
    judge.add_argument("--judge-base-url", dest="judge_engine.base_urls", action="append", metavar="URL",
                       help="an OpenAI-compatible server for an openai/<name> judge; repeat for several")


def run(args: argparse.Namespace) -> int:
    from cai.config import load_config
    from cai.registry import TASKS
    from cai.train.run import run_training

    config = load_config(TASKS[args._task].config_class(), args.config, overrides(args))
    final = run_training(args._task, config)
    print(json.dumps({"out": config.out, **{k: round(v, 6) if isinstance(v, float) else v for k, v in final.items()}}))
    return 0
