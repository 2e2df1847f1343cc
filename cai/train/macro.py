"""Macro-action PPO (MA-RLHF, Chai et al. 2024, arXiv 2410.02743): credit assigned over spans of tokens.

    cai train ppo ... --macro-action fixed:5 --macro-value equal
    spans = macro_spans("fixed:3", lengths=[7])             # [[0, 0, 0, 1, 1, 1, 2]]: macro index per token
    advantages, returns = macro_gae(rewards, values, mask, spans, gamma, lam, "equal")

A response is cut into macro actions, and GAE runs over those macro steps instead of single tokens: a macro's
reward is the sum of its tokens' rewards (the KL penalties and, on the last token, the score), its value combines
its tokens' values (`equal`: their mean; `unit`: its last token's value; `position`: weights 1, 2, ..., n, the
later tokens counting more), and every token of a macro gets the macro's advantage and return in the clipped
policy loss and the value loss. With `fixed:1` every macro is one token and this is plain token-level PPO (the
trainer then takes the token-level code path, so the run is identical).

How a response is cut (`--macro-action`):
- `fixed:N`: every N tokens (a shorter last macro keeps what is left);
- `random:N1,N2,...`: each macro's length drawn from the list (seeded per step);
- `ppl`: a macro ends before a token whose negative log-probability under the reference model is more than
  `--macro-ppl-threshold` nats above the mean of the macro so far (the macro's perplexity would rise: a new
  phrase starts), and after at most 32 tokens;
- `parsing`: a macro ends after a token whose text ends with sentence or clause punctuation (. , ; : ! ?) or holds
  a line break.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Literal

import torch

MacroValue = Literal["equal", "unit", "position"]
MAX_PPL_MACRO = 32
_PUNCTUATION = re.compile(r"[.,;:!?]['\")\]]*\s*$|\n")


def parse_macro_action(spec: str) -> tuple[str, list[int]]:
    """`fixed:N`, `random:N1,N2,...`, `ppl` or `parsing` -> (kind, sizes); a clear error otherwise."""
    kind, _, rest = spec.partition(":")
    if kind in ("ppl", "parsing") and not rest:
        return kind, []
    if kind in ("fixed", "random") and rest:
        try:
            sizes = [int(n) for n in rest.split(",")]
        except ValueError:
            sizes = []
        if sizes and all(n >= 1 for n in sizes) and (kind == "random" or len(sizes) == 1):
            return kind, sizes
    raise ValueError(f"--macro-action {spec!r}: use fixed:N, random:N1,N2,..., ppl or parsing (N >= 1)")


def is_token_level(spec: str) -> bool:
    return parse_macro_action(spec) == ("fixed", [1])


def fixed_spans(length: int, size: int) -> list[int]:
    return [t // size for t in range(length)]


def random_spans(length: int, sizes: Sequence[int], rng: random.Random) -> list[int]:
    ids, macro = [], 0
    while len(ids) < length:
        ids += [macro] * rng.choice(sizes)
        macro += 1
    return ids[:length]


def ppl_spans(ref_nll: Sequence[float], threshold: float) -> list[int]:
    """Cut before a token whose reference NLL exceeds the current macro's mean NLL by more than `threshold`."""
    ids, macro, total, count = [], 0, 0.0, 0
    for nll in ref_nll:
        if count and (nll > total / count + threshold or count >= MAX_PPL_MACRO):
            macro, total, count = macro + 1, 0.0, 0
        ids.append(macro)
        total, count = total + nll, count + 1
    return ids


def parsing_spans(token_texts: Sequence[str]) -> list[int]:
    """End a macro after each token whose text ends a sentence or clause."""
    ids, macro = [], 0
    for text in token_texts:
        ids.append(macro)
        if _PUNCTUATION.search(text):
            macro += 1
    return ids


def macro_spans(spec: str, lengths: Sequence[int], ref_nll: Sequence[Sequence[float]] | None = None,
                token_texts: Sequence[Sequence[str]] | None = None, threshold: float = 0.0,
                seed: int = 0) -> list[list[int]]:
    """Each response's macro index per real token, as `spec` cuts it."""
    kind, sizes = parse_macro_action(spec)
    rng = random.Random(seed)
    spans = []
    for row, length in enumerate(lengths):
        if kind == "fixed":
            spans.append(fixed_spans(length, sizes[0]))
        elif kind == "random":
            spans.append(random_spans(length, sizes, rng))
        elif kind == "ppl":
            spans.append(ppl_spans(list(ref_nll[row])[:length], threshold))
        else:
            spans.append(parsing_spans(list(token_texts[row])[:length]))
    return spans


def _macro_value(values: list[float], mode: MacroValue) -> float:
    if mode == "equal":
        return sum(values) / len(values)
    if mode == "unit":
        return values[-1]
    weights = range(1, len(values) + 1)
    return sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)


def macro_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, spans: list[list[int]],
              gamma: float, lam: float, mode: MacroValue) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over macro steps, spread back onto tokens: each token gets its macro's advantage and return
    (the return is the macro's advantage plus the macro's value). Padding stays 0."""
    advantages = torch.zeros_like(rewards)
    returns = torch.zeros_like(rewards)
    for row, ids in enumerate(spans):
        macros = [[t for t, m in enumerate(ids) if m == k] for k in range(ids[-1] + 1)] if ids else []
        macro_rewards = [float(rewards[row, tokens].sum()) for tokens in macros]
        macro_values = [_macro_value(values[row, tokens].tolist(), mode) for tokens in macros]
        running = 0.0
        for k in reversed(range(len(macros))):
            next_value = macro_values[k + 1] if k + 1 < len(macros) else 0.0
            delta = macro_rewards[k] + gamma * next_value - macro_values[k]
            running = delta + gamma * lam * running
            advantages[row, macros[k]] = running
            returns[row, macros[k]] = running + macro_values[k]
    return advantages * mask, returns * mask


def span_stats(spans: list[list[int]]) -> dict[str, float]:
    """Mean macro length (tokens) and macros per response."""
    counts = [ids[-1] + 1 for ids in spans if ids]
    tokens = sum(len(ids) for ids in spans)
    if not counts:
        return {"macro/mean_length": 0.0, "macro/per_response": 0.0}
    return {"macro/mean_length": tokens / sum(counts), "macro/per_response": sum(counts) / len(counts)}
