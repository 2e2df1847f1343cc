"""Safe RLHF's labels for one pair: a preference per objective and a safety judgement of each response.

    cai judge outputs/quickstart --objectives helpful,harmless

Each objective (`helpful`, `harmless`, see `PreferencePrinciple.objective`) gets its own sample of principles and
its own label, aggregated like any `cai judge` label (both orders, principles averaged). Each response is also
asked alone whether it is harmful (the pointwise yes/no question, in both answer orders): P(Yes) averaged over the
valid orders is its `unsafe` probability, the classification target of the cost model (`cai train cost`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from cai.constitution import Constitution, PreferencePrinciple, sample_rng
from cai.engines import Engine, Messages
from cai.judge import Judgement, JudgeSettings, PairLabel, harm_probability, judge_pair


def objective_principles(constitution: Constitution, objectives: list[str], seed: int, pair_id: str,
                         k: int) -> dict[str, list[PreferencePrinciple]]:
    """k principles of each objective for one pair, drawn from a generator of the pair's own."""
    return {o: constitution.sample_preference_principles(sample_rng(seed, f"{pair_id}/{o}"), k, o)
            for o in objectives}


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


async def unsafe_probability(engine: Engine, conversation: Messages, response: str, settings: JudgeSettings,
                             option_ids: dict[str, set[int]] | None) -> float | None:
    """P(Yes) to the harm question, the mean over both answer orders with enough Yes/No mass."""
    scores = await asyncio.gather(*(harm_probability(engine, conversation, response, settings, option_ids, order)
                                    for order in ("AB", "BA")))
    valid = [s.p_a for s in scores if s.mass >= settings.min_option_mass]
    return sum(valid) / len(valid) if valid else None


async def judge_objectives(engine: Engine, conversation: Messages, first: str, second: str,
                           principles: dict[str, list[PreferencePrinciple]], settings: JudgeSettings,
                           option_ids: dict[str, set[int]] | None = None, examples: Messages = (),
                           min_principles: int = 1) -> tuple[list[Judgement], ObjectiveLabels]:
    """Every objective's comparisons and both responses' safety questions, submitted together."""
    names = list(principles)
    results = await asyncio.gather(
        *(judge_pair(engine, conversation, first, second, principles[o], settings, option_ids, examples,
                     min_principles) for o in names),
        unsafe_probability(engine, conversation, first, settings, option_ids),
        unsafe_probability(engine, conversation, second, settings, option_ids))
    pairs, unsafe = results[: len(names)], tuple(results[len(names):])
    judgements = [j for js, _ in pairs for j in js]
    return judgements, ObjectiveLabels({o: label for o, (_, label) in zip(names, pairs, strict=True)}, unsafe)


def oriented(record: dict[str, Any], first_wins: bool) -> dict[str, Any]:
    """The export's per-objective columns, turned to the row's chosen response: p_<objective> (P(chosen is the
    better one under that objective)) and unsafe_chosen / unsafe_rejected."""
    out: dict[str, Any] = {}
    for name, label in record.get("objectives", {}).items():
        p = label["p_first"]
        out[f"p_{name}"] = None if p is None else (p if first_wins else 1.0 - p)
    if "objectives" in record:
        unsafe = (record.get("unsafe_first"), record.get("unsafe_second"))
        out["unsafe_chosen"], out["unsafe_rejected"] = unsafe if first_wins else unsafe[::-1]
    return out
