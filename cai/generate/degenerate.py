"""Supervised rows that are not what they seem: a final revision that is empty, copies a few-shot example,
repeats itself, or merely restates the critique or revision request. Flagged in the export (`degenerate`),
counted in the dataset card and the report, dropped with `cai export RUN --drop-degenerate`.

    degenerate_reasons(final, requests=[...], few_shot=[...])   # e.g. ["copies a few-shot example"]
"""

from __future__ import annotations

import re

COPY_RUN = 10
"""Words in a row shared with a few-shot example that make a revision a copy (a quoted phrase is shorter)."""
REQUEST_RUN = 8
"""Words in a row shared with a critique or revision request that make a revision a restatement."""


def words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def longest_shared_run(a: list[str], b: list[str]) -> int:
    """The longest run of consecutive words that `a` and `b` share."""
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def repeats_itself(tokens: list[str], n: int = 5, times: int = 3) -> bool:
    """Some n-word phrase occurs `times` times or more."""
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i: i + n])
        counts[gram] = counts.get(gram, 0) + 1
        if counts[gram] >= times:
            return True
    return False


def degenerate_reasons(final: str, requests: list[str], few_shot: list[str]) -> list[str]:
    tokens = words(final)
    if not tokens:
        return ["empty"]
    reasons = []
    if any(longest_shared_run(tokens, words(text)) >= COPY_RUN for text in few_shot):
        reasons.append("copies a few-shot example")
    if repeats_itself(tokens):
        reasons.append("repeats itself")
    if any(longest_shared_run(tokens, words(text)) >= REQUEST_RUN for text in requests if text):
        reasons.append("restates the request")
    return reasons


def few_shot_texts(constitution_yaml: str) -> list[str]:
    """The assistant-side texts of a constitution's few-shot examples (what a revision might copy)."""
    from cai.yaml_safe import load_yaml

    data = load_yaml(constitution_yaml, "the run's constitution") if constitution_yaml else {}
    texts = []
    for example in (data or {}).get("few_shot", []) or []:
        texts += [example.get(k, "") for k in ("response", "critique", "revision")]
        texts += [m.get("content", "") for m in example.get("messages", []) or [] if m.get("role") == "assistant"]
    return [t for t in texts if t]
