"""`cai eval judge` (how good is a judge on labelled pairs), `cai eval model` (did training work) and `cai eval w2s`
(what training on the judge's labels costs against true labels: weak-to-strong)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from cai.cli.judge import JUDGE_FLAGS, no_judge_check
from cai.cli.options import add_settings, engine_options, overrides

JUDGE_EVAL_FIELDS = {"constitution", "principles_per_pair", "judge_few_shot", "seed", "cot", "cot_max_tokens",
                     "cot_band", "min_option_mass", "top_logprobs", "limit", "templates", "judge_format", "contrast",
                     "pointwise_question", "calibration", "min_valid_principles", "protocol", "debate_max_tokens"}


def add_parser(sub: Any) -> None:
    from cai.config import EvalConfig, JudgeConfig

    p = sub.add_parser("eval", help="measure a judge (cai eval judge) or a trained model (cai eval model)")
    esub = p.add_subparsers(dest="action", required=True)
    j = esub.add_parser("judge", help="accuracy, consistency and calibration of a judge on labelled pairs")
    j.add_argument("file", nargs="?", default=None,
                   help="labelled pairs (prompt, chosen, rejected); default: the shipped prompts/judge-eval.jsonl")
    add_settings(j, JudgeConfig, skip=set(JudgeConfig.model_fields) - JUDGE_EVAL_FIELDS, flags=JUDGE_FLAGS)
    j.add_argument("--debater-model", dest="debater_engine.model",
                   help="`--protocol debate|consultancy`: the debaters' model (default: the judge's)")
    j.add_argument("--out", dest="report_out", help="also write the report as JSON here")
    j.add_argument("--fit", dest="fit_out", metavar="FILE",
                   help="write the combination and calibration fitted on these pairs (cross-validated figures "
                        "inside) for `cai judge --calibration FILE`")
    engine_options(j)
    j.set_defaults(_run=run_judge)

    m = esub.add_parser("model", help="harmlessness win-rate and over-refusal of a trained model vs its base")
    add_settings(m, EvalConfig, flags={"principles_per_pair": "--principles", "check_judge": None})
    no_judge_check(m)
    m.add_argument("--out", dest="report_out", required=True, help="folder for results.json and examples.json")
    m.add_argument("--judge-model", dest="judge.model", help="the judge's model (default: the embedded one)")
    m.set_defaults(_run=run_model)

    from cai.evaluate.w2s import W2SConfig

    w = esub.add_parser("w2s", help="weak-to-strong: students trained on the judge's labels vs on true labels (PGR)")
    add_settings(w, W2SConfig, flags={"progress": None, "principles_per_pair": "--principles"})
    w.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bars")
    engine_options(w, title="judge engine (the weak supervisor)")
    w.set_defaults(_run=run_w2s)


def run_judge(args: argparse.Namespace) -> int:
    from cai.config import JudgeConfig, load_config
    from cai.judge.evaluate import evaluate_judge_file, format_judge_report
    from cai.resources import data_dir

    path = args.file or str(data_dir("prompts") / "judge-eval.jsonl")
    config = load_config(JudgeConfig, None, {**overrides(args), "source": path, "strategy": "file"})
    report = asyncio.run(evaluate_judge_file(config, args.report_out, args.fit_out))
    print(format_judge_report(report))
    return 0


def run_model(args: argparse.Namespace) -> int:
    from cai.config import EvalConfig, load_config
    from cai.evaluate.model import evaluate_models

    config = load_config(EvalConfig, None, overrides(args))
    print(json.dumps(asyncio.run(evaluate_models(config, args.report_out)), indent=2))
    return 0


def run_w2s(args: argparse.Namespace) -> int:
    from cai.config import load_config
    from cai.evaluate.w2s import W2SConfig, format_w2s, run_w2s

    config = load_config(W2SConfig, None, overrides(args))
    print(format_w2s(asyncio.run(run_w2s(config))))
    return 0
