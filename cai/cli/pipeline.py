"""`cai run RECIPE` (the whole pipeline) and `cai report RUN` (its HTML page)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="a whole pipeline from a recipe: generate, judge, train, eval, report")
    p.add_argument("recipe", help=f"recipe YAML, or a bundled one by name ({', '.join(bundled_recipes())})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--dry-run", action="store_true",
                   help="validate every stage's settings and every path and model the recipe names, print the plan, "
                        "load nothing")
    p.set_defaults(_run=run_recipe)
    r = sub.add_parser("report", help="write RUN/report/index.html with its plots")
    r.add_argument("run", help="a `cai run` folder")
    r.set_defaults(_run=run_report)


def bundled_recipes() -> list[str]:
    from cai.resources import data_dir

    try:
        return sorted(p.stem for p in data_dir("recipes").glob("*.yaml"))
    except FileNotFoundError:
        return []


def run_recipe(args: argparse.Namespace) -> int:
    from cai.pipeline import Pipeline, load_recipe

    pipeline = Pipeline(load_recipe(args.recipe))
    pipeline.check()  # every path and model, before any engine starts
    if args.dry_run:
        print(pipeline.plan_text())
        return 0
    outcome = asyncio.run(pipeline.execute(progress=not args.no_progress))
    print(pipeline.outcome_text(outcome))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from cai.report.page import write_report

    print(write_report(args.run))
    return 0
