"""Scoring with trained reward and cost models: loading one, its per-token and per-sequence scores, a scorer that
renders each (prompt, response) with the model's own chat template, ensembles of them, and `cai score`.

    scorer = make_scorer("outputs/rm")                       # one model, or an ensemble folder (ensemble.json)
    scores = scorer.score(prompts, responses)
    cai score --reward-model outputs/rm --data responses.jsonl --out scored.jsonl

An ensemble's members are centred by their offsets (each one's mean score on its own training responses, from
ensemble.json) and combined per response: `mean`, `min` (worst case over members) or `mean-minus-std` (mean - w *
std with the sample std), Coste et al.'s conservative rewards against reward hacking.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

import torch

from cai.errors import UsageError
from cai.train.data import DataError, Truncation, _as_messages, _render, fit_prompt, load_rows
from cai.train.loop import pad
from cai.train.modeling import load_tokenizer

Combine = Literal["mean", "min", "mean-minus-std"]
MANIFEST = "ensemble.json"


def load_reward_model(path: str | None, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32,
                      tokenizer: Any = None, resolved: str | None = None):
    """A sequence-classification model with one output and its tokenizer; from a causal LM the head starts
    random (transformers says so), from a `cai train rm` folder it is the trained one. Pass the tokenizer and
    resolved path from `load_tokenizer` when they are already loaded."""
    from transformers import AutoModelForSequenceClassification

    if tokenizer is None:
        tokenizer, resolved = load_tokenizer(path, trust_remote_code)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(resolved, num_labels=1, dtype=dtype,
                                                                   trust_remote_code=trust_remote_code)
    except Exception as e:
        raise UsageError(f"cannot load reward model {path or 'default'} ({resolved}): {e}") from None
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, resolved


def _backbone_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    while hasattr(model, "module"):  # DDP wrappers
        model = model.module
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    head = getattr(model, "score", None)
    if head is None:
        raise UsageError(f"{type(model).__name__} has no `score` head; reward models here are decoder-only LMs")
    return getattr(model, model.base_model_prefix), head


def token_scores(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The head's output at every position, [batch, length] (per-token values when used as a critic)."""
    backbone, head = _backbone_and_head(model)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
    return head(hidden).squeeze(-1).float()


def sequence_scores(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One score per sequence from the model's own forward: transformers pools the head's output at the last
    token that is not the pad token, so these are the numbers the saved checkpoint gives anywhere. Going through
    the (possibly DDP-wrapped) forward also keeps multi-process gradients synchronised."""
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()


def combine(scores: list[list[float]], how: Combine = "mean", std_weight: float = 1.0,
            offsets: list[float] | None = None) -> list[float]:
    """Member scores [K][N] -> one score per response [N]. Each member's `offset` (its mean score on its own
    training responses) is subtracted first: a Bradley-Terry reward is defined only up to a constant, so
    without centring `min` would follow whichever member happens to sit lowest. `mean-minus-std` uses the sample
    standard deviation (K - 1), so with K = 2 it is mean - |a - b| / sqrt(2), not the same as `min`."""
    if offsets is not None:
        scores = [[s - o for s in member] for member, o in zip(scores, offsets, strict=True)]
    out = []
    for column in zip(*scores, strict=True):
        mean = sum(column) / len(column)
        if how == "mean":
            out.append(mean)
        elif how == "min":
            out.append(min(column))
        else:
            std = math.sqrt(sum((s - mean) ** 2 for s in column) / max(len(column) - 1, 1))
            out.append(mean - std_weight * std)
    return out


def is_ensemble(path: str | Path | None) -> bool:
    return path is not None and (Path(path) / MANIFEST).is_file()


def members(path: str | Path) -> list[str]:
    """The member folders of a finished ensemble (an unfinished one is refused: rerun its command with --resume)."""
    from cai.errors import UsageError

    data = json.loads((Path(path) / MANIFEST).read_text())
    unfinished = [m for m in data["members"] if m not in data.get("finished", data["members"])]
    if unfinished:
        raise UsageError(f"{path}: ensemble members {', '.join(unfinished)} have not finished training; continue "
                         "it with the same command and --resume")
    return [str(Path(path) / name) for name in data["members"]]


def offsets(path: str | Path) -> list[float] | None:
    """The members' offsets in member order (None for an ensemble trained before offsets were recorded)."""
    data = json.loads((Path(path) / MANIFEST).read_text())
    recorded = data.get("offsets") or {}
    return [recorded[m] for m in data["members"]] if all(m in recorded for m in data["members"]) else None


class RewardScorer:
    """Scores (prompt messages, response) pairs in batches, rendering each with the reward model's own chat
    template (so a policy with another tokenizer can be scored)."""

    def __init__(self, path: str, batch_size: int = 8, limits: Truncation | None = None,
                 trust_remote_code: bool = False, device: torch.device | str = "cpu"):
        self.model, self.tokenizer, self.path = load_reward_model(path, trust_remote_code)
        self.model.to(device).eval().requires_grad_(False)
        self.device = device
        self.batch_size = batch_size
        self.limits = limits or Truncation(1024, 512)

    def encode(self, prompt: list[dict[str, str]], response: list[dict[str, str]]) -> list[int]:
        prompt_ids = _render(self.tokenizer, prompt, True)
        full = _render(self.tokenizer, prompt + response, False)
        if full[: len(prompt_ids)] != prompt_ids:  # a template that rewrites earlier turns: keep the end
            return full[-self.limits.max_length:]
        response_ids = full[len(prompt_ids):]
        prompt_ids = fit_prompt(self.tokenizer, prompt, self.limits.max_prompt_length)[1]
        return prompt_ids + response_ids[: max(1, self.limits.max_length - len(prompt_ids))]

    @torch.no_grad()
    def score(self, prompts: list[list[dict[str, str]]], responses: list[str | list[dict[str, str]]]) -> list[float]:
        encoded = [self.encode(p, _as_messages(r, "assistant", "response")) for p, r in zip(prompts, responses,
                                                                                             strict=True)]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        scores = [0.0] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start: start + self.batch_size]
            ids = [encoded[i] for i in chunk]
            input_ids = pad(ids, self.tokenizer.pad_token_id).to(self.device)
            mask = pad([[1] * len(s) for s in ids], 0).to(self.device)
            for i, value in zip(chunk, sequence_scores(self.model, input_ids, mask).tolist(), strict=True):
                scores[i] = value
        return scores


def score_file(reward_model: str, data: str, out: str, batch_size: int = 8, max_length: int = 1024,
               split: str = "train", trust_remote_code: bool = False) -> dict[str, Any]:
    """`cai score`: every row with its score. Rows have `prompt` + `response`, `messages` ending in an assistant
    turn, or `prompt` + `chosen` + `rejected` (both scored). Written to OUT.partial, renamed when whole."""
    rows = load_rows(data, split, "score")
    from cai.train.scoring import make_scorer

    scorer = make_scorer(reward_model, batch_size=batch_size, limits=Truncation(max_length, max_length // 2),
                         trust_remote_code=trust_remote_code)  # an ensemble folder scores with its members' mean
    prompts, responses, slots = [], [], []
    for index, row in enumerate(rows):
        if "messages" in row and "prompt" not in row:
            messages = _as_messages(row["messages"], "user", "messages")
            if messages[-1]["role"] != "assistant":
                raise DataError(f"row {index}: `messages` must end with an assistant turn to be scored")
            pairs = [("score", messages[:-1], messages[-1:])]
        else:
            columns = ("chosen", "rejected") if "chosen" in row else ("response",)
            missing = [c for c in ("prompt", *columns) if c not in row]
            if missing:
                raise DataError(f"row {index}: missing {', '.join(missing)} (need prompt + response, "
                                f"prompt + chosen + rejected, or messages)")
            prompt = _as_messages(row["prompt"], "user", "prompt")
            pairs = [("score" if c == "response" else f"score_{c}", prompt, row[c]) for c in columns]
        for key, prompt, response in pairs:
            prompts.append(prompt)
            responses.append(response)
            slots.append((index, key))
    scores = scorer.score(prompts, responses)
    for (index, key), value in zip(slots, scores, strict=True):
        rows[index][key] = value
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with open(partial, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    partial.replace(target)
    return {"out": str(target), "rows": len(rows), "scored": len(scores),
            "mean_score": sum(scores) / len(scores), "reward_model": scorer.path}


class EnsembleScorer:
    """Scores with every member (`RewardScorer` each) and combines per response."""

    def __init__(self, path: str, how: Combine = "mean", std_weight: float = 1.0, **scorer: Any):
        from cai.train.scoring import RewardScorer

        self.scorers = [RewardScorer(m, **scorer) for m in members(path)]
        self.how, self.std_weight, self.path = how, std_weight, path
        self.offsets = offsets(path)

    def score(self, prompts: list, responses: list) -> list[float]:
        return combine([s.score(prompts, responses) for s in self.scorers], self.how, self.std_weight, self.offsets)


def make_scorer(path: str, how: Combine = "mean", std_weight: float = 1.0, **scorer: Any) -> Any:
    """An `EnsembleScorer` for an ensemble folder, else a single `RewardScorer`."""
    from cai.train.scoring import RewardScorer

    return EnsembleScorer(path, how, std_weight, **scorer) if is_ensemble(path) else RewardScorer(path, **scorer)
