"""`cai train sft`: supervised fine-tuning on conversational `messages`, loss on assistant tokens only.

    cai train sft --data outputs/quickstart --out outputs/sft-model --max-steps 100 --learning-rate 2e-5
"""

from __future__ import annotations

import torch

from cai.train.config import TrainConfig
from cai.train.data import IGNORE, DataError, Truncation, load_rows, tokenize_sft
from cai.train.loop import Trainer, pad
from cai.train.modeling import add_lora, load_causal_lm, load_tokenizer


def collate_sft(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    input_ids = pad([e["input_ids"] for e in examples], pad_id)
    return {
        "input_ids": input_ids,
        "attention_mask": pad([[1] * len(e["input_ids"]) for e in examples], 0),
        "labels": pad([e["labels"] for e in examples], IGNORE),
    }


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(),
                                             ignore_index=IGNORE)
    return loss, {}, int(batch["attention_mask"].sum())


def split_eval(examples: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    if not fraction:
        return examples, []
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = max(1, int(len(examples) * fraction))
    return [examples[i] for i in order[n_eval:]], [examples[i] for i in order[:n_eval]]


def prepare_sft(config: TrainConfig) -> Trainer:
    tokenizer, path = load_tokenizer(config.model, config.trust_remote_code)
    limits = Truncation(config.max_length, config.max_prompt_length)
    examples, dropped = tokenize_sft(load_rows(config.data, config.split, "sft"), tokenizer, limits)
    if not examples:
        raise DataError(f"all {dropped} examples lost their assistant tokens to max_length={config.max_length}")
    train, held_out = split_eval(examples, config.eval_fraction, config.seed)
    if config.eval_data:
        held_out, _ = tokenize_sft(load_rows(config.eval_data, config.split, "sft"), tokenizer, limits)
    model = load_causal_lm(path, config, torch.float32)  # only once the data is known to be usable
    if config.lora:
        model = add_lora(model, config)
    return Trainer(config, model, tokenizer, train, lambda b: collate_sft(b, tokenizer.pad_token_id), sft_loss,
                   held_out, {"task": "sft", "model_path": path, "dropped_examples": dropped})
