"""Settings of `cai train sft|dpo|rm|cost` (those of `ppo` and `online-dpo` are in rl_config.py): pydantic models,
each field with its help, loaded like the rest of cai (`--config FILE` plus CLI overrides). `TrainConfig` holds what
every task shares; each task adds its own."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cai.settings import Settings


class TrainConfig(Settings):
    """What every `cai train` task shares."""

    data: str
    """A cai run folder, a .jsonl/.json/.parquet file, a datasets folder or a hub id."""
    out: str
    """Output folder: the final model, checkpoints/, metrics.jsonl."""
    model: str | None = None
    """Hub id, checkpoint folder or .gguf; the embedded SmolLM2-135M-Instruct when unset."""
    split: str = "train"
    """Split to read from a datasets folder or hub dataset."""
    eval_data: str | None = None
    """Separate evaluation data; otherwise `eval_fraction` of `data` is held out."""
    eval_fraction: float = Field(default=0.0, ge=0, lt=1)
    """Share of `data` held out for evaluation (when no `eval_data` is given)."""
    eval_steps: int = Field(default=0, ge=0)
    """Evaluate every N optimizer steps (0: only at the end, when there is eval data)."""
    max_length: int = Field(default=512, ge=8)
    """Prompt + response tokens; responses are cut to fit."""
    max_prompt_length: int = Field(default=256, ge=1)
    """Prompts longer than this keep their last tokens."""
    batch_size: int = Field(default=4, ge=1)
    """Examples per device per forward pass."""
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    """Forward/backward passes summed into one optimizer step."""
    learning_rate: float = Field(default=5e-6, gt=0)
    """Peak learning rate of AdamW."""
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """Learning-rate schedule after the warm-up."""
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    """Share of the optimizer steps spent warming the learning rate up from 0."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW's decoupled weight decay."""
    max_grad_norm: float = Field(default=1.0, gt=0)
    """Clip the global gradient norm to this before each step."""
    epochs: float = Field(default=1.0, gt=0)
    """Passes over the training data (fractions allowed), unless `max_steps` is set."""
    max_steps: int = Field(default=0, ge=0)
    """Stop after this many optimizer steps (0: run `epochs`)."""
    seed: int = 0
    """Seeds the data order, the held-out split and initial weights of new heads."""
    bf16: bool = False
    """Train in bfloat16 mixed precision (where the device supports it)."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them: far less memory for
    long sequences and big models, about a third more compute (TRL turns it on by default)."""
    lora: bool = False
    """Train a LoRA adapter (peft) instead of every weight."""
    lora_r: int = Field(default=16, ge=1)
    """LoRA rank."""
    lora_alpha: int = Field(default=32, ge=1)
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout on the LoRA branch."""
    lora_target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names that get adapters."""
    merge_lora: bool = False
    """Save the base model with the adapter merged in (a plain checkpoint) instead of the adapter alone."""
    save_steps: int = Field(default=0, ge=0)
    """Checkpoint every N optimizer steps (0: never)."""
    save_total_limit: int | None = Field(default=None, ge=1)
    """Keep only the newest N checkpoints (all when unset)."""
    resume: bool = False
    """Continue from the newest checkpoint in `out`."""
    overwrite: bool = False
    """Train into a non-empty `out` that is not this run's own resumable folder, replacing what is there."""
    logging_steps: int = Field(default=1, ge=1)
    """Log metrics every N optimizer steps (means over them)."""
    report_to: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)
    """Trackers to log to besides metrics.jsonl (when installed)."""
    keep_abstained: bool = False
    """Preference tasks: also train on pairs the judge abstained on (`abstain: true` in the export: too close to
    0.5, or its presentation orders disagree); by default they are left out."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model. Off unless asked for."""
    progress: bool = True
    """Show a progress bar."""

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be smaller than max_length")
        return self


class DPOConfig(TrainConfig):
    beta: float = Field(default=0.1, gt=0)
    """DPO temperature: how far the policy may move from its reference per unit of preference."""
    loss_type: Literal["sigmoid", "ipo", "soft"] = "sigmoid"
    """`soft` uses each pair's p_chosen as its target probability."""
    label_smoothing: float = Field(default=0.0, ge=0, le=0.5)
    """Assume each label is flipped with this probability (conservative DPO)."""
    reference: Literal["auto", "copy", "precompute", "adapter"] = "auto"
    """Reference log-probs: a frozen copy, one pass before training, or the LoRA base with the adapter off.
    `auto`: adapter with LoRA, else precompute. All run on the training device in the training precision."""
    keep_dropout: bool = False
    """Train with the model's dropout on. Off by default (as TRL does): the reference log-probs come from the
    model without dropout, so with it on the policy would differ from its reference at step 0."""
    reference_model: str | None = None
    """Another model as the reference (same tokenizer), scored once before training: online DPO anchors every
    round to the starting model this way. Unset: the policy's own starting weights."""

    @model_validator(mode="after")
    def _check_reference(self) -> DPOConfig:
        if self.reference == "adapter" and not self.lora:
            raise ValueError("reference 'adapter' needs lora: true")
        if self.reference_model and self.reference not in ("auto", "precompute"):
            raise ValueError("reference_model is scored once before training (reference auto or precompute)")
        return self

    @property
    def reference_mode(self) -> str:
        if self.reference_model:
            return "precompute"
        if self.reference != "auto":
            return self.reference
        return "adapter" if self.lora else "precompute"


class RewardConfig(TrainConfig):
    learning_rate: float = Field(default=1e-5, gt=0)
    """Peak learning rate of AdamW."""
    eval_fraction: float = Field(default=0.1, ge=0, lt=1)
    """Share of the data (prompts, for PPO) held out for evaluation."""
    soft_labels: bool = True
    """Use each pair's p_chosen (when the data has it) as the Bradley-Terry target instead of 1."""
    use_margin: bool = False
    """Subtract a `margin` column (when the data has it) from the reward difference, as in Llama 2. Only with
    hard labels (`--no-soft-labels`): a soft target already carries the judge's confidence, and the export's
    margin (2p - 1) on top would count it twice (the optimum would move from logit(p) to logit(p) + 2p - 1)."""
    keep_dropout: bool = False
    """Train with the model's dropout on (off by default, as TRL does for reward and preference training)."""
    center_rewards_coefficient: float = Field(default=0.0, ge=0)
    """Weight of a penalty on (r_chosen + r_rejected)^2 that keeps rewards centred on zero."""
    ensemble: int = Field(default=1, ge=1, le=16)
    """Train this many reward models (seeds seed..seed+K-1: head initialisation and data order) into
    OUT/member-i, scored together by PPO and `cai score` (a mitigation of reward hacking)."""
    objective: Literal["helpful", "harmless"] | None = None
    """Train on this objective's label (`p_helpful` / `p_harmless` from `cai judge --objectives`) instead of
    `p_chosen`; each pair is turned so that `chosen` is the response the objective prefers."""
    loss: Literal["xent", "logconf"] = "xent"
    """`xent`: Bradley-Terry toward the labels. `logconf`: the auxiliary confidence loss for weak labels (Burns et
    al. 2023): the target mixes each label with the model's own hardened prediction (`cai eval w2s` compares)."""
    logconf_alpha: float = Field(default=0.75, ge=0, le=1)
    """`logconf`: the hardened predictions' final weight in the target."""
    logconf_warmup: float = Field(default=0.2, ge=0, le=1)
    """`logconf`: share of training over which that weight ramps up from 0."""

    @model_validator(mode="after")
    def _check_margin(self) -> RewardConfig:
        if self.use_margin and self.soft_labels:
            raise ValueError("use_margin with soft_labels counts the judge's confidence twice (the soft target "
                             "already holds it): use --no-soft-labels with --use-margin, or drop --use-margin")
        return self


class CostConfig(RewardConfig):
    """`cai train cost`: Safe RLHF's cost model on harmlessness pairs and per-response safety judgements."""

    objective: Literal["harmless"] = "harmless"
    """The cost model always learns from the harmlessness labels (more harmful = higher cost)."""
    loss: Literal["xent"] = "xent"
    """The cost model has its own loss (below); the confidence loss is for reward models only."""
    classification_weight: float = Field(default=1.0, ge=0)
    """Weight of the term that puts a harmful response's cost above 0 and a safe one's below (targets: the
    judge's `unsafe_chosen` / `unsafe_rejected`); 0 trains on the pairs alone, as a plain reward model would."""
