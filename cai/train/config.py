"""Settings of `cai train sft|dpo`: one pydantic model, each field with its help, loaded like the rest of cai
(`--config FILE` plus CLI overrides)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str
    """A cai run folder, a .jsonl/.json/.parquet file, a datasets folder or a hub id."""
    out: str
    """Output folder: the final model, checkpoints/, metrics.jsonl."""
    model: str | None = None
    """Hub id, checkpoint folder or .gguf; the embedded SmolLM2-135M-Instruct when unset."""
    split: str = "train"
    eval_data: str | None = None
    """Separate evaluation data; otherwise `eval_fraction` of `data` is held out."""
    eval_fraction: float = Field(default=0.0, ge=0, lt=1)
    eval_steps: int = Field(default=0, ge=0)
    """Evaluate every N optimizer steps (0: only at the end, when there is eval data)."""
    max_length: int = Field(default=512, ge=8)
    """Prompt + response tokens; responses are cut to fit."""
    max_prompt_length: int = Field(default=256, ge=1)
    """Prompts longer than this keep their last tokens."""
    batch_size: int = Field(default=4, ge=1)
    """Examples per device per forward pass."""
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    learning_rate: float = Field(default=5e-6, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int = Field(default=0, ge=0)
    """Stop after this many optimizer steps (0: run `epochs`)."""
    seed: int = 0
    bf16: bool = False
    """Train in bfloat16 mixed precision (where the device supports it)."""
    lora: bool = False
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    lora_target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    merge_lora: bool = False
    """Save the base model with the adapter merged in (a plain checkpoint) instead of the adapter alone."""
    save_steps: int = Field(default=0, ge=0)
    """Checkpoint every N optimizer steps (0: never)."""
    resume: bool = False
    """Continue from the newest checkpoint in `out`."""
    logging_steps: int = Field(default=1, ge=1)
    report_to: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)
    trust_remote_code: bool = False
    progress: bool = True

    # preference optimisation
    beta: float = Field(default=0.1, gt=0)
    loss_type: Literal["sigmoid", "ipo", "soft"] = "sigmoid"
    """`soft` uses each pair's p_chosen as its target probability."""
    label_smoothing: float = Field(default=0.0, ge=0, le=0.5)
    reference: Literal["auto", "copy", "precompute", "adapter"] = "auto"
    """Reference log-probs: a frozen copy, one pass before training, or the LoRA base with the adapter off.
    `auto`: adapter with LoRA, else precompute."""

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.reference == "adapter" and not self.lora:
            raise ValueError("reference 'adapter' needs lora: true")
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be smaller than max_length")
        return self

    @property
    def reference_mode(self) -> str:
        if self.reference != "auto":
            return self.reference
        return "adapter" if self.lora else "precompute"
