"""`cai train dpo`: preference optimisation on prompt/chosen/rejected, with the judge's soft labels.

    cai train dpo --data outputs/judge-run --out outputs/dpo-model --loss-type soft --beta 0.1

Chosen and rejected run through the model in one concatenated batch. The reference log-probabilities come from
one pass before training (`precompute`, the default without LoRA), a frozen copy (`copy`), or, with LoRA, the
same model with its adapter switched off (`adapter`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from cai.train.config import DPOConfig
from cai.train.data import IGNORE, DataError, Truncation, load_rows, tokenize_preferences
from cai.train.loop import Trainer, add_lora, load_model_and_tokenizer, pad
from cai.train.losses import preference_loss, sequence_logps
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


def pair_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = sequence_logps(logits[:, :-1], batch["labels"][:, 1:])
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


@torch.no_grad()
def precompute_reference(model: torch.nn.Module, examples: list[dict], pad_id: int, batch_size: int) -> None:
    """Store each example's reference log-probs (`ref_chosen`, `ref_rejected`) from the model as it is now."""
    model.eval()
    for start in range(0, len(examples), batch_size):
        chunk = examples[start: start + batch_size]
        chosen, rejected = pair_logps(model, collate_pairs(chunk, pad_id))
        for e, c, r in zip(chunk, chosen.tolist(), rejected.tolist(), strict=True):
            e["ref_chosen"], e["ref_rejected"] = c, r
    model.train()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module"):  # DDP/FSDP wrappers
        model = model.module
    return model


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
    model, tokenizer, path = load_model_and_tokenizer(config, torch.float32)
    limits = Truncation(config.max_length, config.max_prompt_length)
    need_p = config.loss_type == "soft"
    examples, dropped = tokenize_preferences(load_rows(config.data, config.split, "dpo"), tokenizer, limits, need_p)
    if not examples:
        raise DataError(f"all {dropped} pairs were truncated away (max_length={config.max_length}, "
                        f"max_prompt_length={config.max_prompt_length})")
    train, held_out = split_eval(examples, config.eval_fraction, config.seed)
    if config.eval_data:
        held_out, _ = tokenize_preferences(load_rows(config.eval_data, config.split, "dpo"), tokenizer, limits,
                                           need_p)
    mode = config.reference_mode
    reference = None
    if mode == "precompute":
        precompute_reference(model, train + held_out, tokenizer.pad_token_id, config.batch_size)
    elif mode == "copy":
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    if config.lora:
        model = add_lora(model, config)
    return Trainer(config, model, tokenizer, train, lambda b: collate_pairs(b, tokenizer.pad_token_id),
                   make_dpo_loss(config, reference), held_out,
                   {"task": "dpo", "model_path": path, "dropped_examples": dropped, "reference": mode})
