"""`cai review select|serve|merge|simulate`: a person labels the AI labels most likely to be wrong."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from cai.cli.options import engine_options, overrides


def _budgets(text: str) -> list[float]:
    try:
        values = [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not 0 < v for v in values):
        raise argparse.ArgumentTypeError("budgets are fractions in (0, 1) or counts >= 1")
    return values


def add_parser(sub: Any) -> None:
    p = sub.add_parser("review", help="send the AI labels most likely to be wrong to a person, merge the answers")
    rsub = p.add_subparsers(dest="action", required=True)
    s = rsub.add_parser("select", help="rank a judge run's pairs by doubt; write RUN/review/queue.jsonl")
    s.add_argument("run", help="a `cai judge` run folder")
    s.add_argument("--budget", type=float, required=True, help="a fraction of the pairs (0.1) or a count (50)")
    s.add_argument("--reward-model", help="a `cai train rm` folder: its disagreement with the judge adds doubt")
    v = rsub.add_parser("serve", help="a local page for labelling the queue (its URL is the first line printed)")
    v.add_argument("run", help="a `cai judge` run folder with a review queue")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only; another "
                   "interface's address needs --allow-remote)")
    v.add_argument("--allow-remote", action="store_true",
                   help="allow --host to be an address other machines can reach (the page shows the run's data)")
    v.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    v.add_argument("--no-open", action="store_true", help="do not open a browser")
    v.add_argument("--show-ai-label", action="store_true", help="show the judge's probability beside each pair")
    m = rsub.add_parser("merge", help="rewrite the run's export with the human labels (label_source human|ai)")
    m.add_argument("run", help="a `cai judge` run folder with review labels")
    m.add_argument("--drop-unreviewed-below", type=float, default=0.0,
                   help="drop unreviewed pairs among the least-trusted fraction Q of the ranking (default: 0)")
    i = rsub.add_parser("simulate", help="what a budget of human labels buys on gold-labelled pairs")
    i.add_argument("pairs", help="labelled pairs (prompt, chosen, rejected), as for `cai eval judge`")
    i.add_argument("--budgets", type=_budgets, default=[0.05, 0.1, 0.2], help="comma-separated (default 0.05,0.1,0.2)")
    i.add_argument("--principles", type=int, default=2, help="preference principles per pair (default: 2)")
    i.add_argument("--constitution", default="harmless", help="where the principles come from (default: harmless)")
    i.add_argument("--limit", type=int, help="use only the first N pairs")
    i.add_argument("--seed", type=int, default=0, help="seeds the presentation sides and principles (default: 0)")
    i.add_argument("--judge-format", choices=["pairwise", "pointwise", "hybrid"], default="hybrid",
                   help="the judge's format, as `cai judge --judge-format` (default: hybrid)")
    i.add_argument("--out", required=True, help="JSON results; a PNG plot is written beside it")
    engine_options(i)
    p.set_defaults(_run=run)


def run(args: argparse.Namespace) -> int:
    from cai.review import review

    if args.action == "select":
        print(json.dumps(review.select(args.run, args.budget, args.reward_model)))
    elif args.action == "serve":
        from cai.review.server import serve

        serve(args.run, args.host, args.port, open_browser=not args.no_open, show_ai_label=args.show_ai_label,
              allow_remote=args.allow_remote)
    elif args.action == "merge":
        print(json.dumps(review.merge(args.run, args.drop_unreviewed_below)))
    else:
        print(json.dumps(asyncio.run(_simulate(args)), indent=2))
    return 0


async def _simulate(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from cai.config import load_config
    from cai.engines import EngineConfig, create_engine
    from cai.errors import UsageError
    from cai.judge.evaluate import check_writable
    from cai.judge.pairs import pairs_from_file
    from cai.review import review

    out = Path(args.out)
    check_writable(out)
    if args.principles < 1:
        raise UsageError(f"--principles must be at least 1, got {args.principles}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    pairs, problems = pairs_from_file(args.pairs, args.limit)  # read and checked before the engine starts
    if not pairs:
        raise UsageError(f"{args.pairs}: no usable labelled pairs ({len(problems)} rows rejected)")
    engine_settings = {k.removeprefix("engine."): v for k, v in overrides(args).items() if k.startswith("engine.")}
    engine = create_engine(load_config(EngineConfig, None, engine_settings))
    try:
        result = await review.simulate(engine, args.pairs, args.budgets, args.principles, args.constitution,
                                       args.seed, args.limit, args.judge_format)
    finally:
        await engine.close()
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    review.plot_simulation(result, out.with_suffix(".png"))
    return result
