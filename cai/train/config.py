"""Settings of `cai train sft|dpo|rm|ppo`: pydantic models, each field with its help, loaded like the rest of
cai (`--config FILE` plus CLI overrides). `TrainConfig` holds what every task shares; each task adds its own."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from cai.engines import EngineConfig
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
    classification_weight: float = Field(default=1.0, ge=0)
    """Weight of the term that puts a harmful response's cost above 0 and a safe one's below (targets: the
    judge's `unsafe_chosen` / `unsafe_rejected`); 0 trains on the pairs alone, as a plain reward model would."""


class PPOConfig(TrainConfig):
    reward_model: str
    """A `cai train rm` output folder (or any sequence-classification checkpoint with one label)."""
    data: str = "red-team"
    """Prompts: a bundled prompt set name, a prompt file or dataset (as for `cai generate`)."""
    learning_rate: float = Field(default=1e-6, gt=0)
    """Peak learning rate of AdamW."""
    eval_fraction: float = Field(default=0.1, ge=0, lt=1)
    """Share of the data (prompts, for PPO) held out for evaluation."""
    limit: int | None = Field(default=None, ge=1)
    """Use the first N prompts only."""
    rollout_batch_size: int = Field(default=8, ge=1)
    """Prompts per PPO iteration per process; one response each. A multiple of batch_size x accumulation."""
    ppo_epochs: int = Field(default=4, ge=1)
    """Passes over each batch of rollouts."""
    max_new_tokens: int = Field(default=64, ge=1)
    """Most new tokens per sampled response."""
    temperature: float = Field(default=0.7, gt=0)
    """Sampling temperature of the rollouts (their log-probabilities use the same)."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    """Must be 1: PPO's log-probabilities are those of softmax(logits / temperature) over the whole vocabulary,
    and nucleus sampling would draw from another distribution than the one the ratios assume."""
    kl_coef: float = Field(default=0.05, ge=0)
    """Per-token KL penalty against the reference (the starting value when adaptive)."""
    target_kl: float | None = Field(default=None, gt=0)
    """Adapt kl_coef toward this KL (summed over a response, in nats), Ziegler et al.'s controller."""
    kl_horizon: int = Field(default=10000, ge=1)
    """Episodes over which the adaptive KL controller moves the coefficient."""
    gamma: float = Field(default=1.0, ge=0, le=1)
    """Discount of per-token rewards."""
    lam: float = Field(default=0.95, ge=0, le=1)
    """GAE lambda: bias-variance trade-off of the advantages."""
    cliprange: float = Field(default=0.2, gt=0)
    """Clip of the policy ratio in the PPO loss."""
    cliprange_value: float = Field(default=0.2, gt=0)
    """Clip of the value update around the old values."""
    vf_coef: float = Field(default=0.1, ge=0)
    """Weight of the value loss beside the policy loss."""
    whiten_advantages: bool = True
    """Normalise advantages to zero mean and unit variance per batch."""
    value_model: Literal["head", "separate"] = "head"
    """`head`: a linear value head on the policy's last hidden state (one forward pass for both);
    `separate`: a critic initialised from the reward model (more memory, no shared features)."""
    reward_ensemble: Literal["mean", "min", "mean-minus-std"] = "mean"
    """With an ensemble reward model (`cai train rm --ensemble K`): how the members' scores combine; `min` and
    `mean-minus-std` are the conservative choices of Coste et al. (2023)."""
    ensemble_std_weight: float = Field(default=1.0, ge=0)
    """w in mean - w * std for `mean-minus-std`."""
    missing_eos_penalty: float = Field(default=1.0, ge=0)
    """Subtract this from the score of responses that hit max_new_tokens without ending, so a cut-off answer
    never scores like a finished one (0 turns it off; the reward model's scale sets how large 1.0 is)."""
    reference: Literal["auto", "copy", "adapter"] = "auto"
    """`auto`: the LoRA base with the adapter off when training LoRA, else a frozen copy."""
    eval_prompts: int = Field(default=0, ge=0)
    """Cap on held-out prompts scored at each evaluation (0: all)."""
    eval_samples: int = Field(default=1, ge=1)
    """Responses sampled per held-out prompt at each evaluation (more: less noisy means)."""
    rollouts: Literal["transformers", "vllm"] = "transformers"
    """Who samples the rollouts: `model.generate` on the training process, or a vLLM engine whose weights follow
    the policy after every step (faster sampling; one process only)."""
    rollout_sync: Literal["inplace", "reload"] = "inplace"
    """`--rollouts vllm`: push new weights into the running engine (`inplace`) or start a fresh engine on them
    (`reload`, slower, for builds whose workers cannot reload weights)."""
    rollout_gpu_memory_utilization: float = Field(default=0.3, gt=0, le=1)
    """`--rollouts vllm`: the engine's share of accelerator memory (on a CPU, of the node's memory for its KV
    cache); the rest stays for training."""
    eval_judge: str | None = None
    """A judge for the held-out evaluations (`default` for the embedded model, or a model): its win-rate of
    each evaluation's answers over the step-0 answers (`eval/judge_win_rate`), plotted in the report beside the
    proxy reward, so over-optimisation of the reward model shows."""
    eval_judge_constitution: str = "harmless"
    """Where the evaluation judge's principles come from (its `harmless` ones when it has any)."""
    eval_judge_gpu_memory_utilization: float = Field(default=0.15, gt=0, le=1)
    """The evaluation judge's engine share of accelerator memory (on a CPU, of the node's memory for its KV
    cache): one-token answers need little."""
    cost_model: str | None = None
    """A `cai train cost` folder: PPO then maximises reward subject to E[cost] <= `cost_limit` (Safe RLHF), with a
    Lagrange multiplier lambda on the cost. Unset: plain reward PPO."""
    cost_limit: float = 0.0
    """d: the bound on the mean episode cost (the cost model's scale: 0 is its safe/unsafe boundary)."""
    lambda_init: float = Field(default=1.0, ge=0)
    """The multiplier's starting value."""
    lambda_lr: float = Field(default=0.1, ge=0)
    """Step size of lambda's gradient ascent on (mean episode cost - cost_limit); 0 keeps lambda fixed."""
    lambda_max: float = Field(default=10.0, gt=0)
    """Cap on lambda, so one bad stretch of costs cannot silence the reward for good."""
    lambda_window: int = Field(default=1, ge=1)
    """PPO steps whose episode costs are averaged for each lambda update."""

    @model_validator(mode="after")
    def _check_ppo(self) -> PPOConfig:
        micro = self.batch_size * self.gradient_accumulation_steps
        if self.rollout_batch_size % micro:
            raise ValueError(f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of batch_size x "
                             f"gradient_accumulation_steps ({micro})")
        if self.reference == "adapter" and not self.lora:
            raise ValueError("reference 'adapter' needs lora: true")
        if self.top_p < 1:
            raise ValueError(f"top_p={self.top_p}: PPO samples from the full softmax(logits / temperature) its "
                             "log-probabilities describe; nucleus sampling would bias every ratio (use top_p 1)")
        if self.lambda_init > self.lambda_max:
            raise ValueError(f"lambda_init ({self.lambda_init}) is above lambda_max ({self.lambda_max})")
        if self.max_prompt_length + self.max_new_tokens > self.max_length:
            raise ValueError(f"max_prompt_length + max_new_tokens ({self.max_prompt_length + self.max_new_tokens}) "
                             f"must fit in max_length ({self.max_length})")
        return self

    @property
    def reference_mode(self) -> str:
        if self.reference != "auto":
            return self.reference
        return "adapter" if self.lora else "copy"


JUDGE_OPTIONS = ("constitution", "principles_per_pair", "min_valid_principles", "judge_few_shot", "cot",
                 "cot_max_tokens", "cot_band", "judge_format", "pointwise_question", "min_option_mass",
                 "top_logprobs", "min_confidence", "drop_inconsistent", "check_judge", "judge_check",
                 "min_judge_accuracy", "strict_judge", "templates", "concurrency", "max_failure_rate")
"""`cai judge` settings that `cai train online-dpo` passes to each round's judge (`judge.<name>` in a config)."""


class OnlineDPOConfig(DPOConfig):
    """`cai train online-dpo`: rounds of sample (vLLM) -> judge -> DPO, each from the previous round's policy."""

    data: str = "red-team"
    """Prompts: a bundled prompt set name, a prompt file or dataset (as for `cai generate`)."""
    loss_type: Literal["sigmoid", "ipo", "soft"] = "soft"
    """DPO loss of each round; `soft` uses the judge's probability of each pair."""
    limit: int | None = Field(default=None, ge=1)
    """Use the first N prompts only."""
    rounds: int = Field(default=3, ge=1)
    """R: sample -> judge -> train rounds."""
    samples_per_prompt: int = Field(default=4, ge=2)
    """K responses sampled per prompt from the current policy each round."""
    pairing: Literal["best-worst", "all"] = "best-worst"
    """Pairs trained on: the judge's best against its worst response per prompt (by each response's mean win
    probability over all K(K-1)/2 judged pairs), or every judged pair."""
    max_steps_per_round: int = Field(default=0, ge=0)
    """DPO optimizer steps per round (0: `epochs` over the round's pairs)."""
    reuse_prompts: bool = False
    """Every round samples the same training prompts (default: the training prompts are split across rounds, so
    each round's are fresh)."""
    prompts_per_round: int | None = Field(default=None, ge=1)
    """Training prompts per round (default: all of them split evenly across the rounds)."""
    heldout_prompts: int = Field(default=16, ge=1)
    """Prompts held out from training: each round's model answers them and is judged against the previous
    round's and the starting model's answers (both orders)."""
    max_new_tokens: int = Field(default=128, ge=1)
    """Most new tokens per sampled response (training samples and held-out answers)."""
    temperature: float = Field(default=1.0, gt=0)
    """Sampling temperature (1: the policy's own distribution, which the KL estimate assumes)."""
    rollout_sync: Literal["inplace", "reload"] = "inplace"
    """How the sampling engine gets a new round's weights: reloaded in place, or a fresh engine."""
    judge: dict[str, Any] = Field(default_factory=dict)
    """`cai judge` settings for every round's judge (`principles_per_pair`, `cot`, `min_confidence` ...; the
    names of `JUDGE_OPTIONS`)."""
    judge_engine: EngineConfig = Field(default_factory=EngineConfig)
    """The judge's engine: the embedded default unless `model` is set (a bigger local model, or `openai/...`
    with `base_urls` for `vllm serve` servers)."""
    engine: EngineConfig = Field(default_factory=EngineConfig)
    """Settings of the vLLM engine that samples the policy (its `model` is the round's policy)."""
    save_steps: int = Field(default=10, ge=0)
    """Checkpoint each round's DPO every N steps (a killed round resumes from it)."""

    @model_validator(mode="after")
    def _check_online(self) -> OnlineDPOConfig:
        unknown = sorted(set(self.judge) - set(JUDGE_OPTIONS))
        if unknown:
            raise ValueError(f"judge: unknown setting(s) {', '.join(unknown)} (known: {', '.join(JUDGE_OPTIONS)})")
        if self.reference_model:
            raise ValueError("online-dpo's reference is always the starting model (`model`)")
        from cai.config import JudgeConfig

        JudgeConfig(source="-", **self.judge)  # every judge setting checked before any model loads
        return self


CONFIGS: dict[str, type[TrainConfig]] = {"sft": TrainConfig, "dpo": DPOConfig, "rm": RewardConfig, "cost": CostConfig,
                                         "ppo": PPOConfig, "online-dpo": OnlineDPOConfig}
