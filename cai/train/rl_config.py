"""Settings of the RL tasks: `cai train ppo` (PPO against a reward model, Safe RLHF under a cost model) and
`cai train online-dpo` (rounds of sampling, AI judging and DPO). Loaded like every cai config: `--config FILE`
plus command-line overrides; every field's docstring is its `--help` text."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cai.engines import EngineConfig
from cai.train.config import DPOConfig, TrainConfig


class SamplingRLConfig(TrainConfig):
    """What every on-policy trainer that samples its own responses shares (`ppo`, `grpo`): prompts, rollouts,
    the clipped ratio, the reference, held-out evaluations and the evaluation judge."""

    data: str = "red-team"
    """Prompts: a bundled prompt set name, a prompt file or dataset (as for `cai generate`)."""
    learning_rate: float = Field(default=1e-6, gt=0)
    """Peak learning rate of AdamW."""
    eval_fraction: float = Field(default=0.1, ge=0, lt=1)
    """Share of the data (prompts, for PPO) held out for evaluation."""
    limit: int | None = Field(default=None, ge=1)
    """Use the first N prompts only."""
    rollout_batch_size: int = Field(default=8, ge=1)
    """Responses sampled per iteration per process (PPO: one per prompt; GRPO: num_generations per prompt). A
    multiple of batch_size x accumulation."""
    ppo_epochs: int = Field(default=4, ge=1)
    """Passes over each batch of rollouts."""
    max_new_tokens: int = Field(default=64, ge=1)
    """Most new tokens per sampled response."""
    temperature: float = Field(default=0.7, gt=0)
    """Sampling temperature of the rollouts (their log-probabilities use the same)."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    """Must be 1: the log-probabilities are those of softmax(logits / temperature) over the whole vocabulary, and
    nucleus sampling would draw from another distribution than the one the ratios assume."""
    cliprange: float = Field(default=0.2, gt=0)
    """Clip of the policy ratio in the PPO loss."""
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
    eval_judge_format: Literal["pairwise", "pointwise", "hybrid"] = "hybrid"
    """The evaluation judge's format (as `cai judge --judge-format`)."""
    eval_judge_calibration: str | None = None
    """The evaluation judge's calibration file (as `cai judge --calibration`)."""
    eval_judge_check: bool = True
    """Measure the evaluation judge on the shipped check pairs first (cached, as `cai judge` does) and label with
    the combination fitted there; off: the fixed rule of the format."""
    eval_judge_gpu_memory_utilization: float = Field(default=0.15, gt=0, le=1)
    """The evaluation judge's engine share of accelerator memory (on a CPU, of the node's memory for its KV
    cache): one-token answers need little."""

    @model_validator(mode="after")
    def _check_sampling(self) -> SamplingRLConfig:
        micro = self.batch_size * self.gradient_accumulation_steps
        if self.rollout_batch_size % micro:
            raise ValueError(f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of batch_size x "
                             f"gradient_accumulation_steps ({micro})")
        if self.reference == "adapter" and not self.lora:
            raise ValueError("reference 'adapter' needs lora: true")
        if self.top_p < 1:
            raise ValueError(f"top_p={self.top_p}: the trainer samples from the full softmax(logits / temperature) "
                             "its log-probabilities describe; nucleus sampling would bias every ratio (use top_p 1)")
        self.needs(("rollout_sync", "rollout_gpu_memory_utilization"), self.rollouts == "vllm", "--rollouts vllm")
        self.needs(("eval_judge_constitution", "eval_judge_gpu_memory_utilization", "eval_judge_format",
                    "eval_judge_calibration", "eval_judge_check"), self.eval_judge is not None, "--eval-judge")
        if self.max_prompt_length + self.max_new_tokens > self.max_length:
            raise ValueError(f"max_prompt_length + max_new_tokens ({self.max_prompt_length + self.max_new_tokens}) "
                             f"must fit in max_length ({self.max_length})")
        return self

    @property
    def reference_mode(self) -> str:
        if self.reference != "auto":
            return self.reference
        return "adapter" if self.lora else "copy"


class PPOConfig(SamplingRLConfig):
    """`cai train ppo`: PPO against a reward model (and, under a cost model, Safe RLHF's Lagrangian)."""

    reward_model: str
    """A `cai train rm` output folder (or any sequence-classification checkpoint with one label)."""
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
    cliprange_value: float = Field(default=0.2, gt=0)
    """Clip of the value update around the old values."""
    vf_coef: float = Field(default=0.1, ge=0)
    """Weight of the value loss beside the policy loss."""
    whiten_advantages: bool = True
    """Normalise advantages to zero mean and unit variance per batch."""
    macro_action: str = "fixed:1"
    """Macro-action PPO (cai/train/macro.py): how responses are cut into spans that share one advantage:
    `fixed:N`, `random:N1,N2,...`, `ppl` (where the reference model's perplexity rises) or `parsing` (at sentence and
    clause punctuation). `fixed:1` is token-level PPO."""
    macro_value: Literal["equal", "unit", "position"] = "equal"
    """How a macro's value combines its tokens' values: their mean, its last token's, or position-weighted."""
    macro_ppl_threshold: float = Field(default=0.0, ge=0)
    """`--macro-action ppl`: nats above the macro's mean NLL at which a token starts a new macro."""
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

    @field_validator("macro_action")
    @classmethod
    def _macro_action(cls, value: str) -> str:
        from cai.train.macro import parse_macro_action

        parse_macro_action(value)
        return value

    @model_validator(mode="after")
    def _check_ppo(self) -> PPOConfig:
        self.needs(("cost_limit", "lambda_init", "lambda_lr", "lambda_max", "lambda_window"),
                   self.cost_model is not None, "a cost model (--cost-model)")
        self.needs(("kl_horizon",), self.target_kl is not None, "--target-kl (the adaptive KL controller)")
        self.needs(("ensemble_std_weight",), self.reward_ensemble == "mean-minus-std", "--reward-ensemble mean-minus-std")
        if self.lambda_init > self.lambda_max:
            raise ValueError(f"lambda_init ({self.lambda_init}) is above lambda_max ({self.lambda_max})")
        return self


class GRPOConfig(SamplingRLConfig):
    """`cai train grpo`: critic-free RL (GRPO, RLOO, REINFORCE++) with the constitution as the reward."""

    rollout_batch_size: int = Field(default=16, ge=2)
    """Completions sampled per step per process: rollout_batch_size / num_generations prompts, num_generations
    completions each. A multiple of num_generations and of batch_size x accumulation."""
    ppo_epochs: int = Field(default=1, ge=1)
    """Passes over each batch of completions (1: every update is on-policy and the ratio stays 1)."""
    temperature: float = Field(default=1.0, gt=0)
    """Sampling temperature of the completions (their log-probabilities use the same)."""
    num_generations: int = Field(default=4, ge=2)
    """G: completions sampled per prompt (the group whose rewards set each other's baseline)."""
    advantage: Literal["grpo", "rloo", "reinforce++"] = "grpo"
    """`grpo`: (r - group mean) / (group std + 1e-4); `rloo`: r - the mean of the other G - 1 of its group;
    `reinforce++`: per-token return r - beta x (summed KL from that token on), normalised over the batch."""
    loss_type: Literal["grpo", "dapo", "dr_grpo"] = "grpo"
    """How the clipped per-token losses are averaged: `grpo` per completion then over completions (short answers
    weigh more per token), `dapo` over all tokens of the batch, `dr_grpo` summed and divided by completions x
    max_new_tokens (no length bias)."""
    beta: float = Field(default=0.0, ge=0)
    """KL to the reference: a per-token k3 penalty in the loss (grpo, rloo) or in the reward (reinforce++); 0
    loads no reference model."""
    scale_rewards: bool = True
    """`grpo`: divide by the group's standard deviation (off: Dr. GRPO's unscaled group-centred reward)."""
    constitution_reward: bool = True
    """Score completions with the constitution's judge (`cai.judge.reward.ConstitutionReward`)."""
    constitution: str = "harmless"
    """The constitution whose principles are the reward."""
    reward_mode: Literal["pointwise", "group"] = "pointwise"
    """`pointwise`: each completion judged alone on the pointwise principles; `group`: its mean win probability
    against the other completions of its group (pairwise, both orders)."""
    reward_principles: int = Field(default=4, ge=1)
    """`group` mode: principles sampled per group (seeded)."""
    principle_weights: list[str] = Field(default_factory=list)
    """`ID=WEIGHT` for pointwise principles (others weigh 1)."""
    judge: str | None = None
    """The reward's judge model (unset: the embedded default; `openai/<name>` with `--judge-base-url`)."""
    judge_base_urls: list[str] = Field(default_factory=list)
    """OpenAI-compatible servers of an `openai/<name>` judge."""
    judge_format: Literal["pairwise", "pointwise", "hybrid"] = "hybrid"
    """The judge's format (as `cai judge --judge-format`)."""
    judge_calibration: str | None = None
    """A calibration file (as `cai judge --calibration`)."""
    judge_check: bool = True
    """Check the judge on the shipped pairs first (cached) and reward with the combination fitted there."""
    judge_gpu_memory_utilization: float = Field(default=0.15, gt=0, le=1)
    """The judge engine's share of accelerator memory (one-token answers need little)."""
    reward_model: list[str] = Field(default_factory=list)
    """`cai train rm` folders whose scores are rewards too."""
    reward_weights: list[float] | None = None
    """One weight per reward: the constitution's first (when on), then each reward model's (default: all 1)."""
    zero_variance_warning: float = Field(default=0.5, ge=0, le=1)
    """Warn when, over the last 5 steps, more than this share of groups had all completions scored the same (no
    learning signal: a judge too coarse or completions too alike)."""

    @model_validator(mode="after")
    def _check_grpo(self) -> GRPOConfig:
        if self.rollout_batch_size % self.num_generations:
            raise ValueError(f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of num_generations "
                             f"({self.num_generations})")
        sources = int(self.constitution_reward) + len(self.reward_model)
        if not sources:
            raise ValueError("no reward: turn on the constitution reward or give --reward-model")
        if self.reward_weights is not None and len(self.reward_weights) != sources:
            raise ValueError(f"{len(self.reward_weights)} reward weights for {sources} rewards")
        for item in self.principle_weights:
            name, _, weight = item.partition("=")
            try:
                if not name or float(weight) < 0:
                    raise ValueError
            except ValueError:
                raise ValueError(f"principle weight {item!r}: use ID=WEIGHT with WEIGHT >= 0") from None
        self.needs(("constitution", "reward_mode", "reward_principles", "principle_weights", "judge",
                    "judge_base_urls", "judge_format", "judge_calibration", "judge_check",
                    "judge_gpu_memory_utilization"), self.constitution_reward, "the constitution reward")
        self.needs(("reward_principles",), self.reward_mode == "group", "--reward-mode group")
        self.needs(("scale_rewards",), self.advantage == "grpo", "--advantage grpo")
        return self

    @property
    def weights_by_principle(self) -> dict[str, float]:
        return {name: float(weight) for name, _, weight in (i.partition("=") for i in self.principle_weights)}


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
