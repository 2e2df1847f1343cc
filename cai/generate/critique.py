"""One SL-CAI chain: an initial response, then rounds of critique -> revision under sampled principles.

The chain is one growing conversation (few-shot examples, the prompt, the response, the critique request, the
critique, the revision request, the revision, ...), so every request extends the previous one and the engine's
prefix cache serves the shared part. `cai.generate.run` runs thousands of these concurrently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cai.constitution import Constitution, FewShotExample, sample_rng
from cai.engines import Engine, Messages, Sampling
from cai.templating import render


@dataclass(frozen=True)
class ChainSettings:
    rounds: int
    initial: Sampling
    critique: Sampling
    revision: Sampling
    seed: int = 0
    early_stop_patterns: tuple[str, ...] = ()
    template_dir: str | None = None
    principle_sampling: str = "tags"
    """`tags`: prefer principles whose tags match the prompt's; `weights`: any principle by weight."""


def few_shot_messages(examples: list[FewShotExample], template_dir: str | None = None) -> Messages:
    """The constitution's demonstrations as chat turns, rendered with the same templates as live requests."""
    messages: Messages = []
    for ex in examples:
        if ex.messages is not None:
            messages += [{"role": m.role, "content": m.content.strip()} for m in ex.messages]
            continue
        principle = {"critique_request": ex.critique_request.strip(), "revision_request": ex.revision_request.strip()}
        messages += [
            {"role": "user", "content": ex.prompt.strip()},
            {"role": "assistant", "content": ex.response.strip()},
            {"role": "user", "content": render("critique.j2", template_dir, principle=principle)},
            {"role": "assistant", "content": ex.critique.strip()},
            {"role": "user", "content": render("revision.j2", template_dir, principle=principle)},
            {"role": "assistant", "content": ex.revision.strip()},
        ]
    return messages


def _turn(stage: str, round_: int, principle_id: str | None, request: str | None, completion) -> dict[str, Any]:
    return {
        "stage": stage, "round": round_, "principle_id": principle_id, "request": request,
        "text": completion.text.strip(), "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens, "cached_tokens": completion.cached_tokens,
        "finish_reason": completion.finish_reason,
    }


async def run_chain(engine: Engine, sample_id: str, prompt: Messages, constitution: Constitution,
                    prefix: Messages, settings: ChainSettings, tags: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """All turns of one sample; engine errors propagate to the caller, which records them."""
    tags = tuple(tags) if settings.principle_sampling == "tags" else ()
    rule = "tags" if constitution.matching_principles(tags) else "weights"
    rng = sample_rng(settings.seed, sample_id)
    conversation = prefix + prompt
    first = await engine.generate(conversation, settings.initial)
    turns = [_turn("initial", 0, None, None, first)]
    response = turns[0]["text"]
    stopped_early = False
    for round_ in range(1, settings.rounds + 1):
        principle = constitution.sample_principle(rng, tags)
        critique_request = render("critique.j2", settings.template_dir, principle=principle)
        conversation = conversation + [{"role": "assistant", "content": response},
                                       {"role": "user", "content": critique_request}]
        critique = await engine.generate(conversation, settings.critique)
        turns.append({**_turn("critique", round_, principle.id, critique_request, critique), "principle_rule": rule})
        if any(re.search(p, turns[-1]["text"], re.IGNORECASE) for p in settings.early_stop_patterns):
            stopped_early = True
            break
        revision_request = render("revision.j2", settings.template_dir, principle=principle)
        conversation = conversation + [{"role": "assistant", "content": turns[-1]["text"]},
                                       {"role": "user", "content": revision_request}]
        revision = await engine.generate(conversation, settings.revision)
        turns.append(_turn("revision", round_, principle.id, revision_request, revision))
        response = turns[-1]["text"]
    return {
        "initial": turns[0]["text"],
        "final": response,
        "turns": turns,
        "principle_ids": [t["principle_id"] for t in turns if t["stage"] == "critique"],
        "rounds_done": sum(t["stage"] == "revision" for t in turns),
        "stopped_early": stopped_early,
        "prompt_tokens": sum(t["prompt_tokens"] for t in turns),
        "completion_tokens": sum(t["completion_tokens"] for t in turns),
        "cached_tokens": sum(t["cached_tokens"] or 0 for t in turns),
    }
