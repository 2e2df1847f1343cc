"""Loading and preparing models for training: the tokenizer first (so data is checked before weights load), the
causal LM, LoRA adapters, gradient checkpointing and dropout.

    tokenizer, path = load_tokenizer(config.model)
    model = load_causal_lm(path, config)
"""

from __future__ import annotations

from typing import Any

import torch

from cai.errors import UsageError
from cai.train.config import TrainConfig


def load_tokenizer(model: str | None, trust_remote_code: bool = False) -> tuple[Any, str]:
    """The model's tokenizer (with a pad token and a chat template) and the resolved path: loaded first, so the
    training data is read and checked before any weights are."""
    from transformers import AutoTokenizer

    from cai.models import resolve_model

    path = model
    try:
        path = resolve_model(model)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise UsageError(f"cannot load model {model or 'default'} ({path}): its tokenizer: {e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError(f"{path}: the tokenizer has no chat template")
    return tokenizer, path


def load_causal_lm(path: str, config: TrainConfig, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=config.trust_remote_code)
    except Exception as e:
        raise UsageError(f"cannot load model {config.model or 'default'} ({path}): {e}") from None


def add_lora(model: torch.nn.Module, config: TrainConfig, task_type: str = "CAUSAL_LM") -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_target_modules, task_type=task_type)
    return get_peft_model(model, lora)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Every transformers model inside `model` (the policy of PPO's policy-and-value, a peft base ...)."""
    from transformers import PreTrainedModel

    found = [m for m in model.modules() if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing]
    if not found:
        raise UsageError(f"{type(model).__name__} does not support gradient checkpointing")
    for module in found:
        module.config.use_cache = False
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def disable_dropout(model: torch.nn.Module) -> None:
    """Zero every dropout of the model: `nn.Dropout` modules and the attention dropout that transformers'
    attention layers apply functionally (read from their `attention_dropout` attribute in training mode)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
