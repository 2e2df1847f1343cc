"""`cai train dpo`: preference optimisation on prompt/chosen/rejected, with the judge's soft labels.

    cai train dpo --data outputs/judge-run --out outputs/dpo-model --loss-type soft --beta 0.1

Chosen and rejected run through the model in one concatenated batch, with logits computed only from the first
response position on. The reference log-probabilities come from one pass before training (`precompute`, the
default without LoRA), a frozen copy (`copy`), or, with LoRA, the same model with its adapter switched off
(`adapter`); every one runs on the training device under the training precision, so the policy equals its
reference at step 0. Dropout is off unless `--keep-dropout`. Hard-label losses (sigmoid, ipo) skip exact ties.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from typing import Any

import torch

from cai.train.config import DPOConfig
from cai.train.data import (
    IGNORE,
    DataError,
    Truncation,
    is_tie,
    preference_rows,
    tokenize_preferences,
)
from cai.train.loop import Trainer, pad
from cai.train.losses import head_sequence_logps, preference_loss, sequence_logps
from cai.train.modeling import add_lora, disable_dropout, load_causal_lm, load_tokenizer
from cai.train.sft import split_eval


def collate_pairs(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows 0..B-1 are prompt+chosen, rows B..2B-1 prompt+rejected; labels mask the prompt."""
    sequences, labels = [], []
    for key in ("chosen_ids", "rejected_ids"):
        for e in examples:
            sequences.append(e["prompt_ids"] + e[key])
            labels.append([IGNORE] * len(e["prompt_ids"]) + e[key])
    batch = {
        "input_ids": pad(sequences, pad_id),
        "attention_mask": pad([[1] * len(s) for s in sequences], 0),
        "labels": pad(labels, IGNORE),
        "p_chosen": torch.tensor([e["p_chosen"] for e in examples], dtype=torch.float32),
    }
    if "ref_chosen" in examples[0]:
        batch["ref_chosen"] = torch.tensor([e["ref_chosen"] for e in examples], dtype=torch.float32)
        batch["ref_rejected"] = torch.tensor([e["ref_rejected"] for e in examples], dtype=torch.float32)
    return batch


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module"):  # DDP/FSDP wrappers
        model = model.module
    return model


def pair_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs of the chosen half and the rejected half of a `collate_pairs` batch.

    The model's forward (through any DDP/peft wrapper) stops at the final hidden states (`logits_to_keep=1`);
    the response positions' log-probs come from the output layer one sequence at a time (`head_sequence_logps`),
    so no [batch, length, vocab] logits tensor is ever held. Models whose logits are not just the output layer
    of the last hidden state (soft-capped or scaled logits) are detected on first use and get the plain path."""
    labels = batch["labels"]
    labelled = (labels != IGNORE).any(0).nonzero()
    first = max(1, int(labelled[0])) if len(labelled) else 1
    head = _unwrap(model).get_output_embeddings()
    if head is None or not _head_matches(model, batch, head):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       logits_to_keep=labels.shape[1] - first + 1).logits
        logps = sequence_logps(logits[:, :-1], labels[:, first:])
    else:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                    logits_to_keep=1)
        logps = head_sequence_logps(out.hidden_states[-1][:, first - 1: -1], head, labels[:, first:])
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


_HEAD_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def _head_matches(model: torch.nn.Module, batch: dict[str, torch.Tensor], head: torch.nn.Module) -> bool:
    """Once per model: does the output layer applied to the last hidden state give the model's own logits?"""
    key = _unwrap(model)
    if key not in _HEAD_CHECKED:
        ids, mask = batch["input_ids"][:1], batch["attention_mask"][:1]
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=0)
        own = out.logits.float()
        from_head = torch.nn.functional.linear(out.hidden_states[-1], head.weight, head.bias).float()
        _HEAD_CHECKED[key] = own.shape == from_head.shape and torch.allclose(own, from_head, atol=1e-3, rtol=1e-3)
    return _HEAD_CHECKED[key]


@torch.no_grad()
def precompute_reference(model: torch.nn.Module, examples: list[dict], collate: Callable, batch_size: int,
                         to_device: Callable, autocast: Callable) -> None:
    """Store each example's reference log-probs (`ref_chosen`, `ref_rejected`) from the model as it is now, on
    its device and under the training precision (`autocast`), in eval mode."""
    was_training = model.training
    model.eval()
    for start in range(0, len(examples), batch_size):
        chunk = examples[start: start + batch_size]
        with autocast():
            chosen, rejected = pair_logps(model, to_device(collate(chunk)))
        for e, c, r in zip(chunk, chosen.tolist(), rejected.tolist(), strict=True):
            e["ref_chosen"], e["ref_rejected"] = c, r
    model.train(was_training)


class DPOTrainer(Trainer):
    """The shared loop; with `precompute`, the reference pass runs once the model sits on its device in its
    training precision (after accelerate's `prepare`), before any checkpoint is restored."""

    def __init__(self, *args, precompute: bool = False, reference_model: torch.nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if precompute:
            scorer = self.accelerator.unwrap_model(self.model)
            if reference_model is not None:
                scorer = reference_model.to(self.accelerator.device)
            precompute_reference(scorer, self.train_examples + self.eval_examples, self.collate,
                                 self.config.batch_size, self._to_device, self.accelerator.autocast)


def make_dpo_loss(config: DPOConfig, reference: torch.nn.Module | None) -> Callable:
    def loss_fn(model, batch):
        chosen, rejected = pair_logps(model, batch)
        if "ref_chosen" in batch:
            ref_chosen, ref_rejected = batch["ref_chosen"], batch["ref_rejected"]
        else:
            with torch.no_grad():
                if reference is not None:
                    ref_chosen, ref_rejected = pair_logps(reference.to(batch["input_ids"].device), batch)
                else:
                    with _unwrap(model).disable_adapter():
                        ref_chosen, ref_rejected = pair_logps(model, batch)
        losses, metrics = preference_loss(chosen, rejected, ref_chosen, ref_rejected, config.beta, config.loss_type,
                                          batch["p_chosen"], config.label_smoothing)
        return losses.mean(), metrics, int(batch["attention_mask"].sum())

    return loss_fn


def prepare_dpo(config: DPOConfig) -> Trainer:
    tokenizer, path = load_tokenizer(config.model, config.trust_remote_code)
    limits = Truncation(config.max_length, config.max_prompt_length)
    need_p = config.loss_type == "soft"
    rows = preference_rows(config.data, config.split, "dpo", config.keep_abstained)
    examples, dropped = tokenize_preferences(rows, tokenizer, limits, need_p, hard_labels=not need_p)
    ties = 0 if need_p else sum(map(is_tie, rows))
    if not examples:
        raise DataError(f"all {dropped} pairs were truncated away (max_length={config.max_length}, "
                        f"max_prompt_length={config.max_prompt_length})")
    train, held_out = split_eval(examples, config.eval_fraction, config.seed)
    if config.eval_data:
        held_out, _ = tokenize_preferences(preference_rows(config.eval_data, config.split, "dpo"), tokenizer, limits,
                                           need_p, hard_labels=not need_p)
    model = load_causal_lm(path, config, torch.float32)  # only once the data is known to be usable
    mode = config.reference_mode
    if not config.keep_dropout:
        disable_dropout(model)
    reference = copy.deepcopy(model).eval().requires_grad_(False) if mode == "copy" else None
    separate = load_reference_model(config, tokenizer) if config.reference_model else None
    if config.lora:
        model = add_lora(model, config)
    return DPOTrainer(config, model, tokenizer, train, lambda b: collate_pairs(b, tokenizer.pad_token_id),
                      make_dpo_loss(config, reference), held_out,
                      {"task": "dpo", "model_path": path, "dropped_examples": dropped, "ties_skipped": ties,
                       "reference": mode, "reference_model": config.reference_model},
                      precompute=mode == "precompute", reference_model=separate)


def load_reference_model(config: DPOConfig, tokenizer: Any) -> torch.nn.Module:
    """The separate reference, checked to share the policy's vocabulary (its log-probs score the same ids)."""
    ref_tokenizer, ref_path = load_tokenizer(config.reference_model, config.trust_remote_code)
    if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise DataError(f"reference_model {config.reference_model} has another tokenizer than the policy; DPO "
                        "compares log-probs of the same token ids")
    model = load_causal_lm(ref_path, config, torch.float32)
    disable_dropout(model)
    return model.eval().requires_grad_(False)
