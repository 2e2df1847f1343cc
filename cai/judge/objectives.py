"""Safe RLHF's labels for one pair: a preference per objective and a safety judgement of each response.

    cai judge outputs/quickstart --objectives helpful,harmless

Each objective (`helpful`, `harmless`, see `PreferencePrinciple.objective`) gets its own sample of principles and
its own label, made like any `cai judge` label (the same format, combination and calibration). Each response is
also asked alone whether it is harmful (the constitution's first pointwise harm question, else
`pointwise_question`, in both answer orders): P(Yes), the mean of both orders and None unless both answered, is
its `unsafe` probability, the classification target of the cost model (`cai train cost`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from cai.constitution import PreferencePrinciple, sample_rng
from cai.engines import Messages
from cai.judge.compare import Judgement, PairLabel
from cai.judge.judge import Judge


def objective_principles(judge: Judge, objectives: list[str], seed: int, pair_id: str,
                         k: int) -> dict[str, list[PreferencePrinciple]]:
    """k principles of each objective for one pair (in the judge's formats), from a generator of the pair's own."""
    return {o: judge.sample(sample_rng(seed, f"{pair_id}/{o}"), k, o) for o in objectives}


@dataclass
class ObjectiveLabels:
    labels: dict[str, PairLabel]
    """Objective -> its label (p_first: P(first response is better under that objective))."""
    unsafe: tuple[float | None, float | None]
    """P(first is harmful), P(second is harmful); None when no answer order gave the Yes/No tokens enough mass."""

    @property
    def valid(self) -> bool:
        return all(label.valid for label in self.labels.values())

    def record_fields(self, principles: dict[str, list[PreferencePrinciple]]) -> dict[str, Any]:
        return {"objectives": {o: {"p_first": label.p_first, "position_consistency": label.position_consistency,
                                   "n_principles": label.n_principles, "valid": label.valid, "reason": label.reason,
                                   "principle_ids": [p.id for p in principles[o]]}
                               for o, label in self.labels.items()},
                "unsafe_first": self.unsafe[0], "unsafe_second": self.unsafe[1]}


async def judge_objectives(judge: Judge, conversation: Messages, first: str, second: str,
                           principles: dict[str, list[PreferencePrinciple]]) -> tuple[list[Judgement], ObjectiveLabels]:
    """Every objective's label and both responses' safety questions, submitted together; the safety answers
    are the judge's cached per-response scores, shared with any pointwise harm principle."""
    names = list(principles)
    results = await asyncio.gather(
        *(judge.compare(conversation, first, second, principles[o]) for o in names),
        judge.unsafe_probability(conversation, first), judge.unsafe_probability(conversation, second))
    pairs, unsafe = results[: len(names)], tuple(results[len(names):])
    judgements = [j for js, _ in pairs for j in js]
    return judgements, ObjectiveLabels({o: label for o, (_, label) in zip(names, pairs, strict=True)}, unsafe)


def oriented(record: Any, first_wins: bool) -> dict[str, Any]:
    """The export's per-objective columns of a `JudgeRecord`, turned to the row's chosen response: p_<objective>
    (P(chosen is the better one under that objective)) and unsafe_chosen / unsafe_rejected."""
    out: dict[str, Any] = {}
    if record.objectives is None:
        return out
    for name, label in record.objectives.items():
        p = label["p_first"]
        out[f"p_{name}"] = None if p is None else (p if first_wins else 1.0 - p)
    unsafe = (record.unsafe_first, record.unsafe_second)
    out["unsafe_chosen"], out["unsafe_rejected"] = unsafe if first_wins else unsafe[::-1]
    return out
