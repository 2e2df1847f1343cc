"""`cai eval judge FILE`: how good is a judge on labelled pairs, and `--fit`: its combination and calibration.

    cai eval judge prompts/judge-eval.jsonl --principles 4 [--judge-format hybrid] [--out report.json]
    cai eval judge my-pairs.jsonl --fit my-judge.json      # then: cai judge RUN --calibration my-judge.json

Every pair (prompt, chosen, rejected) is judged once, as `cai judge` would (its format, principles, templates).
The report has, from those judgements:
- the views of the plain mean: `swapped+ensembled` (every principle, both orders), `swapped` (one principle,
  both orders), `single` (one principle, one order, alternating between pairs so position bias is not hidden);
- `fit`: for every combination rule of the format (cai/judge_fit.py), accuracy with its 95% interval, label-level
  position consistency, Brier score and ECE, before and after calibration, all 5-fold cross-validated, per
  category; the rule chosen, the selective-accuracy curve (accuracy of the labels kept against the share kept,
  abstaining on position-inconsistent or near-0.5 labels) and the band chosen from it;
- with `--calibration FILE`, that calibration's figures on these pairs (honest only when it was fitted elsewhere);
- without it, `default_fit`: the judge exactly as `cai judge` labels by default (its combination and calibration
  fitted on the default check pairs, cached or shipped), scored on the pairs of this file it was not fitted on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cai.config import JudgeConfig
from cai.constitution import load_constitution, sample_rng
from cai.engines import Engine
from cai.errors import UsageError
from cai.judge.combine import Combiner, Parts
from cai.judge.compare import judge_examples
from cai.judge.judge import Judge
from cai.judge.metrics import views
from cai.judge.pairs import pairs_from_file


async def judge_pairs(judge: Judge, pairs: list, principles_per_pair: int, seed: int) -> list[tuple[list, Any]]:
    """Every labelled pair judged as a run would judge it: (judgements, label) each, in input order."""

    async def one(pair):
        principles = judge.sample(sample_rng(seed, pair.id), principles_per_pair)
        return await judge.compare(pair.prompt, pair.first, pair.second, principles)

    return list(await asyncio.gather(*(one(p) for p in pairs)))


async def evaluate_judge(engine: Engine, path: str, config: Any, combiner: Combiner | None = None,
                         fit: bool = True, debaters: Engine | None = None, seen: Collection[str] = frozenset(),
                         ) -> dict[str, Any]:
    """A judge's quality on labelled pairs: the views of its raw judgements (single, swapped, ensembled), its
    cross-validated figures for every combination rule of its format (`fit`), per category, the selective-accuracy
    curve and, when `combiner` is given (a calibration fitted elsewhere), that combiner's figures on these pairs,
    leaving out those whose content (`Pair.digest`) is in `seen`, the pairs it was fitted on."""
    from cai.judge.compare import settings_of
    from cai.judge.fit import fit_judge, held_out_metrics

    settings = settings_of(config)
    c = load_constitution(config.constitution)
    pairs, problems = pairs_from_file(path, config.limit)
    unlabelled = [p.id for p in pairs if p.meta.get("label") != "first"]
    if unlabelled:
        raise UsageError(f"{path}: `cai eval judge` needs labelled rows (prompt, chosen, rejected); "
                         f"{len(unlabelled)} rows are not")
    examples = judge_examples(c.judge_examples[: config.judge_few_shot], settings)
    judge = Judge(engine, settings, c, None, examples, config.min_valid_principles, debaters)
    judged = await judge_pairs(judge, pairs, config.principles_per_pair, config.seed)
    report: dict[str, Any] = {
        "file": str(path), "judge_model": engine.model_id, "pairs": len(pairs), "input_problems": len(problems),
        "principles_per_pair": config.principles_per_pair, "judge_format": settings.judge_format, "cot": settings.cot,
        "judge_calls": judge.calls, "calls_per_pair": judge.calls / max(len(pairs), 1),
        "protocol": settings.protocol, "debater_calls": judge.debater_calls,
        "calls_per_label": (judge.calls + judge.debater_calls) / max(len(pairs), 1),
        "per_pair": [{"id": pair.id, "p_first": label.p_first if label.valid else None,
                      "consistency": label.position_consistency if label.valid else None}
                     for pair, (_, label) in zip(pairs, judged, strict=True)],
        "metrics": {name: asdict(m) for name, m in views([j for j, _ in judged], config.seed).items()}}
    valid = [i for i, (_, label) in enumerate(judged) if label.valid]
    report["valid"], report["invalid_rate"] = len(valid), 1 - len(valid) / max(len(pairs), 1)
    parts = [Parts.from_dict(judged[i][1].parts) for i in valid]
    categories = [pairs[i].meta.get("category") for i in valid]
    if fit and len(valid) >= 2:
        result = fit_judge(parts, categories, settings.judge_format, seed=config.seed)
        report["fit"] = {k: v for k, v in result.items() if k not in ("combiner", "predictions")}
        report["combiner"] = result["combiner"].to_dict()
    if combiner is not None:
        unseen = [n for n, i in enumerate(valid) if pairs[i].digest not in seen]
        report["given_calibration"] = {
            **held_out_metrics(combiner, [parts[n] for n in unseen], [categories[n] for n in unseen]),
            "left_out_seen": len(valid) - len(unseen)}
    return report


async def evaluate_judge_file(config: JudgeConfig, out: str | None = None, fit_out: str | None = None) -> dict[str, Any]:
    """`cai eval judge`: everything checked first (settings, the pairs file, the output paths), then the engine
    starts, the judge is measured and the report written to `out` (JSON) when given; with `fit_out`, the fitted
    combination and calibration are written there for `cai judge --calibration`."""
    from cai.engines import create_engine
    from cai.judge.calibration import load_calibration, write_calibration

    pairs, problems = pairs_from_file(config.source, config.limit)
    if not pairs:
        raise UsageError(f"{config.source}: no usable labelled pairs ({len(problems)} rows rejected"
                         + (f", first: {problems[0].reason}" if problems else "") + ")")
    for target in (out, fit_out):
        if target is not None:
            check_writable(Path(target))
    engine = create_engine(config.engine)
    debaters = None
    try:
        debaters = create_engine(config.debater_engine) if config.debater_engine else None
        given = load_calibration(config.calibration, engine, config) if config.calibration else None
        default, seen, described = (None, frozenset(), {}) if given else default_fit(engine, config)
        report = await evaluate_judge(engine, config.source, config, given or default, debaters=debaters, seen=seen)
        if default is not None:
            report["default_fit"] = {**report.pop("given_calibration"), **described}
        if config.protocol != "direct":  # the baseline, on the same pairs in the same run
            from cai.judge.metrics import compare_protocols

            direct = await evaluate_judge(engine, config.source, config.model_copy(update={"protocol": "direct"}),
                                          given, fit=False)
            report["protocols"] = compare_protocols(direct, report)
    finally:
        await engine.close()
        if debaters is not None:
            await debaters.close()
    if out is not None:
        Path(out).write_text(json.dumps(report, indent=2), encoding="utf-8")
    if fit_out is not None:
        if "combiner" not in report:
            raise UsageError(f"{config.source}: fewer than 2 validly judged pairs; nothing to fit")
        write_calibration(Path(fit_out), report, engine, config)
    return report


def default_fit(engine: Engine, config: Any) -> tuple[Combiner | None, frozenset[str], dict[str, Any]]:
    """The combination `cai judge` labels with by default (fitted on the default check pairs, from this machine's
    cache or shipped with cai; never measured here), the digests of the pairs it was fitted on, and where it came
    from. (None, empty, {}) when this judge has no such check."""
    from cai.judge.check_store import check_file, stored_default_check

    stored = stored_default_check(engine, config)
    if stored is None or not stored[0].get("combiner"):
        return None, frozenset(), {}
    quality, source = stored
    check_pairs, _ = pairs_from_file(check_file(None), None)
    described = {"fitted_on": f"{quality.get('pairs')} pairs of the default check ({source})",
                 "rule": quality.get("rule")}
    return Combiner.from_dict(quality["combiner"]), frozenset(p.digest for p in check_pairs), described


def check_writable(target: Path) -> None:
    """A file path that can be written: not a folder, in a folder that exists."""
    if target.is_dir():
        raise UsageError(f"--out {target} is a folder; give a file name such as {target / 'judge-eval.json'}")
    if not target.parent.is_dir():
        raise UsageError(f"--out {target}: the folder {target.parent} does not exist")


def format_judge_report(report: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, tuple | list):
            return f"{value[0]:.2f}-{value[1]:.2f}" if value[0] is not None else "-"
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    columns = ["accuracy", "ci95", "position_consistency", "brier", "ece", "pairs"]
    header = "".join(f"{c:>22}" for c in columns)
    lines = [f"judge: {report['judge_model']}  format: {report['judge_format']}  file: {report['file']}  pairs: "
             f"{report['pairs']} ({report['valid']} validly judged)  principles per pair: "
             f"{report['principles_per_pair']}  judge calls per pair: {report['calls_per_pair']:.1f}"]
    fit = report.get("fit")
    if fit:
        spread = fit["cv"][fit["rule"]]["spread"]
        lines += ["", f"cross-validated ({fit['folds']}-fold, mean of {fit['repeats']} splits), before -> after "
                  f"calibration ({fit['calibration']}); chosen rule: {fit['rule']} (one split: accuracy "
                  f"{fmt(spread['accuracy'])}, ECE {fmt(spread['ece'])})", f"{'rule':<28}" + header]
        for rule, figures in fit["cv"].items():
            for stage in ("raw", "calibrated"):
                m = figures[stage]
                lines.append(f"{rule + ' ' + stage:<28}" + "".join(f"{fmt(m[c]):>22}" for c in columns))
        lines.append(f"by category ({fit['rule']}, calibrated):")
        for name, m in fit["cv"][fit["rule"]]["by_category"].items():
            lines.append(f"  {name:<26}" + "".join(f"{fmt(m[c]):>22}" for c in columns))
        curve = ", ".join(f"band {row['band']:.2f}: {row['kept']:.0%} kept at {fmt(row['accuracy'])}"
                          for row in fit["selective"])
        lines += [f"selective accuracy: {curve}", f"abstain band chosen: {fit['abstain_band']:.2f}"]
    given = report.get("given_calibration")
    if given:
        lines.append("the given calibration on these pairs: " + ", ".join(f"{c} {fmt(given[c])}" for c in columns))
    default = report.get("default_fit")
    if default and not default["pairs"]:
        lines += ["", f"the default judge as `cai judge` labels was fitted on the {default['fitted_on']}: every pair "
                  "here is among them, so there is no held-out figure of it"]
    elif default:
        lines += ["", f"the default judge as `cai judge` labels (fitted on the {default['fitted_on']}), on the "
                  f"{default['pairs']} pairs here it was not fitted on ({default['left_out_seen']} left out):",
                  f"{'':<28}" + header, f"{'all':<28}" + "".join(f"{fmt(default[c]):>22}" for c in columns)]
        for name, m in default["by_category"].items():
            lines.append(f"  {name:<26}" + "".join(f"{fmt(m[c]):>22}" for c in columns))
    protocols = report.get("protocols")
    if protocols:
        lines += ["", f"{'protocol (same pairs)':<28}" + "".join(
            f"{c:>22}" for c in ("accuracy", "ci95", "position_consistency", "calls_per_label"))]
        for name in ("direct", report["protocol"]):
            m = protocols[name]
            lines.append(f"{name:<28}" + "".join(f"{fmt(m[c]):>22}" for c in
                                                 ("accuracy", "ci95", "position_consistency", "calls_per_label")))
        lines.append(f"McNemar's exact p ({report['protocol']} vs direct): {protocols['mcnemar_p']:.4f}  "
                     f"discordant pairs: {protocols['discordant']}")
    lines += ["", "plain mean of the judgements (no fit):", f"{'variant':<28}" + "".join(
        f"{c:>22}" for c in ("accuracy", "accuracy_ci95", "position_consistency", "brier", "ece", "valid"))]
    for name, m in report["metrics"].items():
        lines.append(f"{name:<28}" + "".join(f"{fmt(m[c]):>22}" for c in
                                             ("accuracy", "accuracy_ci95", "position_consistency", "brier", "ece",
                                              "valid")))
    return "\n".join(lines)
