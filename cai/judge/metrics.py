"""A judge's figures on labelled pairs: accuracy (with its Wilson interval), Brier score, expected calibration error,
position consistency, and the three views of its raw judgements (single, swapped, swapped+ensembled).

    m = metrics(p_chosen, consistency)       # JudgeMetrics
    views(judgements_per_pair)               # {"single": ..., "swapped": ..., "swapped+ensembled": ...}
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from cai.judge.compare import Judgement, aggregate


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
        # 1e-9: a confidence on a bin edge (0.6 computes as 0.0999.. above 0.5) falls in the bin it opens
        buckets[min(int((confidence - 0.5) * 2 * bins + 1e-9), bins - 1)].append((confidence, correct))
    total = len(p_correct)
    return sum(len(b) / total * abs(sum(c for c, _ in b) / len(b) - sum(a for _, a in b) / len(b))
               for b in buckets if b)


def metrics(p_chosen: list[float | None], consistency: list[float | None]) -> JudgeMetrics:
    valid = [p for p in p_chosen if p is not None]
    consistent = [c for c in consistency if c is not None]
    if not valid:
        return JudgeMetrics(len(p_chosen), 0, 1.0, None, None, None, None, None)
    from cai.evaluate.diagnostics import wilson_interval

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


def mcnemar_exact(only_first_right: int, only_second_right: int) -> float:
    """Two-sided exact McNemar p-value for two judges on the same pairs: under "equally good", each discordant
    pair is a fair coin, so p = min(1, 2 P(Binomial(b + c, 1/2) <= min(b, c)))."""
    from math import comb

    n, k = only_first_right + only_second_right, min(only_first_right, only_second_right)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)


def compare_protocols(direct: dict, argued: dict) -> dict:
    """Direct judging against debate or consultancy on the same pairs (reports of `evaluate_judge`, which carry
    `per_pair` labels): accuracy (a pair counts as right when its label prefers the chosen response; an invalid
    label is wrong), label-level position consistency, judge calls per label and McNemar's exact p."""
    from cai.evaluate.diagnostics import wilson_interval

    def right(report: dict) -> dict[str, bool]:
        return {row["id"]: row["p_first"] is not None and row["p_first"] > 0.5 for row in report["per_pair"]}

    def figures(report: dict, marks: dict[str, bool]) -> dict:
        n = len(marks)
        known = [row["consistency"] for row in report["per_pair"] if row["consistency"] is not None]
        return {"accuracy": sum(marks.values()) / n, "ci95": list(wilson_interval(sum(marks.values()), n)),
                "position_consistency": sum(known) / len(known) if known else None,
                "calls_per_label": report["calls_per_label"], "valid": report["valid"], "pairs": n}

    a, b = right(direct), right(argued)
    if a.keys() != b.keys():
        raise ValueError("the two protocols were measured on different pairs")
    only_direct = sum(a[i] and not b[i] for i in a)
    only_argued = sum(b[i] and not a[i] for i in a)
    return {"direct": figures(direct, a), argued["protocol"]: figures(argued, b),
            "discordant": {"direct_only": only_direct, f"{argued['protocol']}_only": only_argued},
            "mcnemar_p": mcnemar_exact(only_direct, only_argued)}
