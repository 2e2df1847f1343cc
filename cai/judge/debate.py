"""Debate-assisted judging (`--protocol debate | consultancy`): models argue for a side before the judge answers.

    judgement = await argued_judgement(judge, conversation, first, second, principle, "AB", critiques)

`debate` (Irving et al. 2018; Khan et al., arXiv 2402.06782): in each response order, one debater argues that
response (A) better satisfies the principle and another that (B) does (each sees the conversation, both responses,
the principle's full text and, where the run has them, the critiques; at most `debate_max_tokens` tokens, greedy).
The judge then sees the conversation, both responses and both arguments and answers with log-probabilities, once
with A's argument first and once with B's first; the order's p is the mean of the two, so neither the response
order nor the argument order can carry a bias into the label (both response orders are judged, as always).

`consultancy`: one consultant argues for a side drawn at random per (pair, principle), seeded by their content;
the baseline debate must beat (a judge can be talked into the side it hears).

Arguments are kept in the judgement (`arguments`, `argument_p_a`), so they are in the run's records and its
`raw.jsonl` export; a resumed run keeps the finished pairs' arguments and argues the rest anew.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cai.constitution import PreferencePrinciple
from cai.engines import Messages, Sampling
from cai.judge.compare import Judgement, judge_once
from cai.templating import render

Judge = Any  # cai.judge.judge.Judge, which imports this module (named here without the import cycle)

PROTOCOLS = ("direct", "consultancy", "debate")


def consultant_side(first: str, second: str, principle_id: str) -> str:
    """`first` or `second`: the side a consultant argues for, drawn from the pair's content (seeded, stable)."""
    digest = hashlib.sha256("\0".join((principle_id, first, second)).encode()).digest()
    return "first" if digest[0] % 2 == 0 else "second"


async def argue(judge: Judge, conversation: Messages, principle: PreferencePrinciple, response_a: str,
                response_b: str, side: str, critiques: list[str]) -> str:
    """One debater's argument that response `side` ("A" or "B") better satisfies the principle."""
    message = render("debater.j2", judge.settings.template_dir, conversation=conversation, principle=principle,
                     response_a=response_a, response_b=response_b, side=side, critiques=critiques)
    judge.debater_calls += 1
    out = await judge.debaters.generate([{"role": "user", "content": message}],
                                        Sampling(max_tokens=judge.settings.debate_max_tokens, temperature=0))
    return out.text.strip()


async def argued_judgement(judge: Judge, conversation: Messages, first: str, second: str,
                           principle: PreferencePrinciple, order: str, critiques: list[str] = ()) -> Judgement:
    """One (principle, response order) judgement under the judge's protocol, with its arguments."""
    import asyncio

    a, b = (first, second) if order == "AB" else (second, first)
    if judge.settings.protocol == "debate":
        for_a, for_b = await asyncio.gather(argue(judge, conversation, principle, a, b, "A", list(critiques)),
                                            argue(judge, conversation, principle, a, b, "B", list(critiques)))
        presentations = [[{"side": "A", "text": for_a}, {"side": "B", "text": for_b}],
                         [{"side": "B", "text": for_b}, {"side": "A", "text": for_a}]]
    else:
        side = consultant_side(first, second, principle.id)
        label = "A" if (side == "first") == (order == "AB") else "B"
        text = await argue(judge, conversation, principle, a, b, label, list(critiques))
        presentations = [[{"side": label, "text": text}]]
    judge.calls += len(presentations)
    scored = await asyncio.gather(*(judge_once(judge.engine, conversation, first, second, principle, order,
                                               judge.settings, judge.option_ids, judge.examples, arguments=shown)
                                    for shown in presentations))
    arguments = presentations[0]
    details = {"arguments": arguments, "argument_p_a": [s.p_a for s in scored], "raw": scored[0].raw}
    invalid = [s for s in scored if not s.valid]
    if invalid:
        return Judgement(principle.id, order, False, None, reason=invalid[0].reason, **details)
    p_first = sum(s.p_first for s in scored) / len(scored)
    p_a = p_first if order == "AB" else 1.0 - p_first
    return Judgement(principle.id, order, True, p_first, p_a=p_a, mass=min(s.mass for s in scored), **details)
