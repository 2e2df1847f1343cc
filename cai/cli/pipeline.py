"""`cai run RECIPE` (the whole pipeline) and `cai report RUN` (its HTML page)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="a whole pipeline from a recipe: generate, judge, train, eval, report")
    p.add_argument("recipe", help="recipe YAML (bundled: quickstart, gpu-8b)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(_run=run_recipe)
    r = sub.add_parser("report", help="write RUN/report/index.html with its plots")
    r.add_argument("run", help="a `cai run` folder")
    r.set_defaults(_run=run_report)


def run_recipe(args: argparse.Namespace) -> int:
    from cai.pipeline import Pipeline, load_recipe

    pipeline = Pipeline(load_recipe(args.recipe))
    outcome = asyncio.run(pipeline.execute(progress=not args.no_progress))
    print(pipeline.outcome_text(outcome))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from cai.report import write_report

    print(write_report(args.run))
    return 0
