"""`cai train rm` and `cai score`: a reward model (a one-output sequence-classification head on a causal LM) trained
on prompt/chosen/rejected pairs with the Bradley-Terry loss, soft targets from the judge's `p_chosen`, and
batched scoring of (prompt, response) pairs with it.

    cai train rm --data outputs/<judge-run> --out outputs/rm
    cai score --reward-model outputs/rm --data pairs.jsonl --out scored.jsonl

The saved folder is a plain `AutoModelForSequenceClassification` checkpoint (num_labels=1), so transformers,
TRL and vLLM's reward/classify runner load it as it is. The score of a sequence is the head's output on its last
token that is not the pad token: the position transformers' `ForSequenceClassification` pools, so the saved folder
scores the same there (with pad = eos, as Llama-3 ships, that is the token before a final eos).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from cai.errors import UsageError
from cai.train.config import RewardConfig
from cai.train.data import (
    DataError,
    Truncation,
    _as_messages,
    _render,
    fit_prompt,
    load_rows,
    objective_rows,
    tokenize_preferences,
)
from cai.train.dpo import collate_pairs
from cai.train.loop import Trainer, pad
from cai.train.losses import reward_loss
from cai.train.modeling import add_lora, disable_dropout, load_tokenizer
from cai.train.sft import split_eval


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


def reward_loss_fn(config: RewardConfig):
    def loss_fn(model, batch):
        scores = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
        half = scores.shape[0] // 2
        losses, metrics = reward_loss(scores[:half], scores[half:], batch.get("p_chosen"), batch.get("margin"),
                                      config.center_rewards_coefficient)
        return losses.mean(), metrics, int(batch["attention_mask"].sum())

    return loss_fn


def collate_reward_pairs(examples: list[dict], pad_id: int, soft: bool, margin: bool) -> dict[str, torch.Tensor]:
    batch = collate_pairs(examples, pad_id)
    del batch["labels"]
    if not soft:
        del batch["p_chosen"]
    if margin:
        batch["margin"] = torch.tensor([e["margin"] for e in examples], dtype=torch.float32)
    return batch


def calibration_error(p_model: list[float], p_target: list[float], bins: int = 10) -> float:
    """ECE of a model trained toward soft targets: pairs binned by sigma(r_c - r_r) in [0, 1], and per bin the
    gap between the mean prediction and the mean target p (the judge's p_chosen; 1 for hard labels)."""
    buckets: list[list[tuple[float, float]]] = [[] for _ in range(bins)]
    for predicted, target in zip(p_model, p_target, strict=True):
        buckets[min(int(predicted * bins), bins - 1)].append((predicted, target))
    return sum(len(b) / len(p_model) * abs(sum(x for x, _ in b) - sum(y for _, y in b)) / len(b)
               for b in buckets if b)


@torch.no_grad()
def held_out_scores(trainer: Trainer) -> Iterator[tuple[list[dict], dict[str, torch.Tensor], torch.Tensor]]:
    """Each held-out chunk of pairs, its batch and the model's sequence scores (chosen half, then rejected half),
    in eval mode and the training precision; the model's mode is restored after."""
    was_training = trainer.model.training
    trainer.model.eval()
    try:
        for start in range(0, len(trainer.eval_examples), trainer.config.batch_size):
            chunk = trainer.eval_examples[start: start + trainer.config.batch_size]
            batch = trainer._to_device(trainer.collate(chunk))
            with trainer.accelerator.autocast():
                scores = sequence_scores(trainer.model, batch["input_ids"], batch["attention_mask"])
            yield chunk, batch, scores
    finally:
        trainer.model.train(was_training)


class RewardTrainer(Trainer):
    """The shared loop; evaluation adds calibration over the whole held-out split (ECE needs all of it)."""

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        result = super().evaluate()
        p_model, p_target, all_scores, lengths = [], [], [], []
        for chunk, batch, scores in held_out_scores(self):
            half = scores.shape[0] // 2
            p_model += torch.sigmoid(scores[:half] - scores[half:]).tolist()
            p_target += batch["p_chosen"].tolist() if "p_chosen" in batch else [1.0] * half
            all_scores += scores.tolist()
            lengths += [len(e["chosen_ids"]) for e in chunk] + [len(e["rejected_ids"]) for e in chunk]
        if p_model:
            from cai.diagnostics import pearson

            result["eval/ece"] = calibration_error(p_model, p_target)
            result["eval/pairs"] = float(len(p_model))
            # a reward model that scores length is one a policy can hack by talking longer
            correlation = pearson(all_scores, [float(n) for n in lengths])
            if correlation is not None:
                result["eval/score_length_correlation"] = correlation
        return result


def prepare_reward(config: RewardConfig) -> RewardTrainer:
    tokenizer, path = load_tokenizer(config.model, config.trust_remote_code)
    limits = Truncation(config.max_length, config.max_prompt_length)

    def tokenize(source: str) -> tuple[list[dict], int, bool, bool]:
        rows = load_rows(source, config.split, "rm")
        if config.objective:
            rows = objective_rows(rows, config.objective)
        soft = config.soft_labels and "p_chosen" in rows[0]
        margin = config.use_margin and "margin" in rows[0]
        examples, dropped = tokenize_preferences(rows, tokenizer, limits, need_p=soft, hard_labels=not soft)
        for e in examples:
            if margin:
                value = rows[e["index"]].get("margin")
                if not isinstance(value, int | float) or value != value:
                    raise DataError(f"preference row {e['index']}: margin must be a number, got {value!r}")
                e["margin"] = float(value)
        return examples, dropped, soft, margin

    examples, dropped, soft, margin = tokenize(config.data)
    if len(examples) < 2:
        raise DataError(f"{config.data}: {len(examples)} usable pair(s) after truncation; a reward model needs more")
    train, held_out = split_eval(examples, config.eval_fraction, config.seed)
    if config.eval_data:
        held_out = tokenize(config.eval_data)[0]
    model = load_reward_model(config.model, config.trust_remote_code, tokenizer=tokenizer, resolved=path)[0]
    if not config.keep_dropout:
        disable_dropout(model)
    if config.lora:
        model = add_lora(model, config, task_type="SEQ_CLS")
    return RewardTrainer(config, model, tokenizer, train,
                         lambda b: collate_reward_pairs(b, tokenizer.pad_token_id, soft, margin),
                         reward_loss_fn(config), held_out,
                         {"task": "rm", "model_path": path, "dropped_examples": dropped, "soft_labels": soft,
                          "margin": margin, "objective": config.objective})


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
    from cai.train.ensemble import make_scorer

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
