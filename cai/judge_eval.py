"""`cai eval judge FILE`: how good is a judge model on labelled pairs, with and without swapping and ensembling.

    cai eval judge prompts/judge-eval.jsonl --principles 4 [--model ...] [--out report.json]

Every pair (prompt, chosen, rejected) is judged under M principles in both orders, once. From those judgements:
- `swapped+ensembled`: the mean of all of them (what `cai judge` labels with);
- `swapped`: one principle, both orders;
- `single`: one principle, one order (alternating between pairs so position bias is not hidden).
Each reports accuracy, position consistency, Brier score, expected calibration error and invalid rate.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cai.config import JudgeConfig
from cai.constitution import load_constitution, sample_rng
from cai.engines import Engine
from cai.errors import UsageError
from cai.judge import Judgement, JudgeSettings, aggregate, judge_examples, judge_pair, option_token_ids
from cai.pairs import pairs_from_file


@dataclass
class JudgeMetrics:
    pairs: int
    valid: int
    invalid_rate: float
    accuracy: float | None
    """Share of valid pairs where p(chosen) > 0.5 (a tie at exactly 0.5 counts half)."""
    brier: float | None
    """Mean of (1 - p(chosen))^2 over valid pairs; 0.25 is what always answering 0.5 scores."""
    ece: float | None
    """Expected calibration error over 10 equal-width confidence bins in [0.5, 1]."""
    position_consistency: float | None
    mean_p_chosen: float | None
    accuracy_ci95: tuple[float, float] | None = None
    """95% Wilson interval of the accuracy over the valid pairs."""


def expected_calibration_error(p_correct: list[float], bins: int = 10) -> float:
    """ECE of a binary judge: confidence max(p, 1-p) against how often the favoured side was right."""
    buckets: list[list[tuple[float, float]]] = [[] for _ in range(bins)]
    for p in p_correct:
        confidence = max(p, 1.0 - p)
        correct = 1.0 if p > 0.5 else (0.5 if p == 0.5 else 0.0)
        buckets[min(int((confidence - 0.5) * 2 * bins), bins - 1)].append((confidence, correct))
    total = len(p_correct)
    return sum(len(b) / total * abs(sum(c for c, _ in b) / len(b) - sum(a for _, a in b) / len(b))
               for b in buckets if b)


def metrics(p_chosen: list[float | None], consistency: list[float | None]) -> JudgeMetrics:
    valid = [p for p in p_chosen if p is not None]
    consistent = [c for c in consistency if c is not None]
    if not valid:
        return JudgeMetrics(len(p_chosen), 0, 1.0, None, None, None, None, None)
    from cai.diagnostics import wilson_interval

    right = sum(1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0 for p in valid)
    return JudgeMetrics(
        pairs=len(p_chosen), valid=len(valid), invalid_rate=1 - len(valid) / len(p_chosen),
        accuracy=right / len(valid), accuracy_ci95=wilson_interval(right, len(valid)),
        brier=sum((1 - p) ** 2 for p in valid) / len(valid),
        ece=expected_calibration_error(valid),
        position_consistency=sum(consistent) / len(consistent) if consistent else None,
        mean_p_chosen=sum(valid) / len(valid),
    )


def views(judgements_per_pair: list[list[Judgement]], seed: int = 0) -> dict[str, JudgeMetrics]:
    """The three judge variants computed from the same judgements (chosen is each pair's first response)."""
    rng = random.Random(seed)
    full, swapped, single = [], [], []
    for judgements in judgements_per_pair:
        label = aggregate(judgements)
        full.append((label.p_first, label.position_consistency))
        first_principle = judgements[0].principle_id
        one = [j for j in judgements if j.principle_id == first_principle]
        label_one = aggregate(one)
        swapped.append((label_one.p_first, label_one.position_consistency))
        order = rng.choice(("AB", "BA"))
        pick = next(j for j in one if j.order == order)
        single.append((pick.p_first if pick.valid else None, None))
    return {name: metrics([p for p, _ in rows], [c for _, c in rows])
            for name, rows in (("single", single), ("swapped", swapped), ("swapped+ensembled", full))}


async def evaluate_judge(engine: Engine, path: str, principles_per_pair: int = 4, constitution: str = "harmless",
                         settings: JudgeSettings | None = None, seed: int = 0, limit: int | None = None,
                         judge_few_shot: int = 0) -> dict[str, Any]:
    settings = settings or JudgeSettings()
    c = load_constitution(constitution)
    pairs, problems = pairs_from_file(path, limit)
    unlabelled = [p.id for p in pairs if p.meta.get("label") != "first"]
    if unlabelled:
        raise UsageError(f"{path}: `cai eval judge` needs labelled rows (prompt, chosen, rejected); "
                         f"{len(unlabelled)} rows are not")
    option_ids = option_token_ids(engine.local_tokenizer())
    examples = judge_examples(c.judge_examples[:judge_few_shot], settings)

    async def one(pair):
        principles = c.sample_preference_principles(sample_rng(seed, pair.id), principles_per_pair)
        judgements, _ = await judge_pair(engine, pair.prompt, pair.first, pair.second, principles, settings,
                                         option_ids, examples)
        return judgements

    per_pair = await asyncio.gather(*(one(p) for p in pairs))
    report = {name: asdict(m) for name, m in views(list(per_pair), seed).items()}
    categories = sorted({p.meta.get("category") for p in pairs if p.meta.get("category")})
    by_category = {}
    for category in categories:
        subset = [j for p, j in zip(pairs, per_pair, strict=True) if p.meta.get("category") == category]
        by_category[category] = asdict(views(subset, seed)["swapped+ensembled"])
    return {"file": str(path), "judge_model": engine.model_id, "pairs": len(pairs), "input_problems": len(problems),
            "principles_per_pair": principles_per_pair, "cot": settings.cot, "metrics": report,
            "by_category": by_category}


async def evaluate_judge_file(config: JudgeConfig, out: str | None = None) -> dict[str, Any]:
    """`cai eval judge`: everything checked first (settings, the pairs file, the report path), then the engine
    starts, the judge is measured and the report written to `out` (JSON) when given."""
    from cai.engines import create_engine
    from cai.judge_run import settings_of

    pairs, problems = pairs_from_file(config.source, config.limit)
    if not pairs:
        raise UsageError(f"{config.source}: no usable labelled pairs ({len(problems)} rows rejected"
                         + (f", first: {problems[0].reason}" if problems else "") + ")")
    if out is not None:
        check_writable(Path(out))
    engine = create_engine(config.engine)
    try:
        report = await evaluate_judge(engine, config.source, config.principles_per_pair, config.constitution,
                                      settings_of(config), config.seed, config.limit, config.judge_few_shot)
    finally:
        await engine.close()
    if out is not None:
        Path(out).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def check_writable(target: Path) -> None:
    """A file path that can be written: not a folder, in a folder that exists."""
    if target.is_dir():
        raise UsageError(f"--out {target} is a folder; give a file name such as {target / 'judge-eval.json'}")
    if not target.parent.is_dir():
        raise UsageError(f"--out {target}: the folder {target.parent} does not exist")


def format_judge_report(report: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, tuple | list):
            return f"{value[0]:.2f}-{value[1]:.2f}"
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    columns = ["accuracy", "accuracy_ci95", "position_consistency", "brier", "ece", "invalid_rate", "valid"]
    lines = [f"judge: {report['judge_model']}  file: {report['file']}  pairs: {report['pairs']}  "
             f"principles per pair: {report['principles_per_pair']}",
             f"{'variant':<20}" + "".join(f"{c:>22}" for c in columns)]
    for name, m in report["metrics"].items():
        lines.append(f"{name:<20}" + "".join(f"{fmt(m[c]):>22}" for c in columns))
    for name, m in report["by_category"].items():
        lines.append(f"  {name:<18}" + "".join(f"{fmt(m[c]):>22}" for c in columns))
    return "\n".join(lines)
