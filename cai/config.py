"""Run configuration: pydantic models loaded from a `--config` YAML file, with CLI values overriding it.

    cai generate --config my-run.yaml --rounds 2 --temperature 0.5

Every field has a default; unknown keys are errors. `compat_settings` picks the fields that shape the outputs, so
a rerun into the same run folder resumes only when they match.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from cai.engines import EngineConfig
from cai.runs.fingerprint import settings_hash
from cai.settings import ConfigError, Settings, error_lines, load_config, read_yaml_file  # noqa: F401 (re-exported)


class StageTokens(Settings):
    initial: int = Field(default=256, ge=1)
    """Most new tokens for the first response."""
    critique: int = Field(default=160, ge=1)
    """Most new tokens for each critique."""
    revision: int = Field(default=256, ge=1)
    """Most new tokens for each revision."""


DEFAULT_EARLY_STOP = [
    r"^\W*no (issues|problems|changes|revisions?)\b",
    r"\bnothing (to|that needs to be) (fix|change|improve|revise)",
    r"\b(is|was) (already )?(harmless|appropriate|fine) as (it is|written)\b",
]


def check_template_folder(folder: str | None) -> str | None:
    """A custom template folder must exist and be a folder (checked before any engine starts)."""
    if folder is not None and not Path(folder).expanduser().is_dir():
        raise ValueError(f"templates: {folder} is not a folder (it should hold the .j2 files replacing "
                         "prompts/templates)")
    return folder


class RunSettings(Settings):
    """What every record-producing stage (generate, judge) shares."""

    constitution: str = "harmless"
    """Bundled constitution name (harmless, helpful-honest) or path to a YAML file."""
    prompt_column: str | None = None
    """Column holding the prompt; found automatically when unset."""
    split: str = "train"
    """Split to read from a datasets folder or hub dataset."""
    limit: int | None = Field(default=None, ge=1)
    """Use only the first N inputs."""
    seed: int = 0
    """Seeds principle sampling (per item) and the engine."""
    concurrency: int = Field(default=256, ge=1)
    """Items in flight at once; the engine batches across them."""
    output_dir: str = "outputs"
    """Folder that holds the run folders."""
    run_name: str | None = None
    """Run folder name; by default derived from the inputs and a hash of the settings."""
    templates: str | None = None
    """Folder of templates replacing the bundled `prompts/templates`."""
    engine: EngineConfig = Field(default_factory=EngineConfig)
    """The model's engine (the judge's, for `cai judge`)."""

    @field_validator("templates")
    @classmethod
    def _templates_exist(cls, folder: str | None) -> str | None:
        return check_template_folder(folder)


class GenerateConfig(RunSettings):
    """Settings of `cai generate` (the SL-CAI critique -> revision stage)."""

    prompts: str = "red-team"
    """Bundled prompt set (red-team, benign), a file (.jsonl/.json/.csv/.parquet), a datasets folder or a hub id."""
    rounds: int = Field(default=1, ge=0)
    """Critique -> revision rounds per prompt."""
    few_shot: int | None = Field(default=None, ge=0)
    """How many of the constitution's few-shot examples to prepend (all when unset)."""
    temperature: float = Field(default=0.7, ge=0)
    """Sampling temperature of every stage."""
    top_p: float = Field(default=0.95, gt=0, le=1)
    """Nucleus sampling of every stage."""
    max_new_tokens: StageTokens = Field(default_factory=StageTokens)
    """Most new tokens per stage (initial, critique, revision)."""
    early_stop: bool = False
    """Stop a chain when its critique says there is nothing to fix (matched by `early_stop_patterns`)."""
    early_stop_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_EARLY_STOP))
    """Case-insensitive regular expressions tried against each critique."""
    max_failure_rate: float = Field(default=0.25, ge=0, le=1)
    """End the run non-zero when more than this share of samples fail."""
    principle_sampling: Literal["tags", "weights"] = "tags"
    """`tags`: critique principles whose tags match the prompt's tags are drawn first (by weight), any principle
    when none matches; `weights`: any principle, by weight alone. The rule used is recorded per round."""
    drop_degenerate: bool = False
    """Leave revisions that are empty, copy a few-shot example, repeat themselves or restate the request out of
    the SFT export (they are always flagged and counted)."""

    @field_validator("early_stop_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"early_stop_patterns: {pattern!r} is not a regular expression ({e})") from None
        return patterns


Strategy = Literal["revision-vs-initial", "revisions", "sampled", "file"]


class JudgeConfig(RunSettings):
    """Settings of `cai judge` (the RL-CAI feedback stage)."""

    source: str
    """A generate run folder, a pairs file (strategy `file`) or a prompt set (strategy `sampled`)."""
    strategy: Strategy = "revision-vs-initial"
    """How pairs are made: final revision vs initial response, successive revisions, K samples per prompt from a
    policy, or a file of pairs."""
    principles_per_pair: int = Field(default=4, ge=1)
    """M: preference principles sampled for each pair; the label averages over them."""
    min_valid_principles: int = Field(default=1, ge=1)
    """A pair becomes a label only when at least this many of its principles were judged validly in both orders
    (a principle with one valid order is left out: one order alone carries the judge's position bias)."""
    judge_few_shot: int = Field(default=0, ge=0)
    """How many of the constitution's judge examples to prepend."""
    cot: bool = False
    """Chain-of-thought: the judge reasons first; its answer letter is scored and clamped into `cot_band`."""
    cot_max_tokens: int = Field(default=256, ge=8)
    """Most tokens of chain-of-thought reasoning."""
    cot_band: tuple[float, float] = (0.4, 0.6)
    """Chain-of-thought probabilities are clamped into [LOW, HIGH] (the CAI paper used 0.4-0.6)."""
    judge_format: Literal["pairwise", "pointwise", "hybrid"] = "hybrid"
    """`pairwise`: every principle compares the two responses, in both orders; `pointwise`: every principle is a
    yes/no question about each response alone, in both answer orders; `hybrid`: each principle in its own format
    (the constitution's `format`), combined by a fitted rule (see the README for what each measures)."""
    contrast: bool = True
    """Hybrid: add the constitution's `contrast` score where it has one (needs an engine that returns prompt
    log-probabilities: vLLM in process or `vllm serve`); `--no-contrast` asks its questions only."""
    calibration: str | None = None
    """A calibration file from `cai eval judge PAIRS --fit FILE`: the combination, calibration and abstention band
    to label with (refused unless it was fitted for this judge and these settings). Unset: the fit on the judge
    check's pairs, or the fixed rule without a check."""
    abstain_band: float | None = Field(default=None, ge=0, lt=0.5)
    """Labels whose presentation orders disagree, or whose less sure order alone is within this of 0.5
    (|p_order - 0.5|, calibrated), are exported with `abstain: true`, left out of training unless
    `--keep-abstained`, and queued first for review. Unset: the band chosen
    from the check's cross-validated selective-accuracy curve (or the calibration file's)."""
    pointwise_question: str = Field(default="Is the assistant's response harmful, unethical or dangerous?",
                                    min_length=1)
    """The yes/no question of `pointwise` judging."""
    min_option_mass: float = Field(default=0.2, ge=0, le=1)
    """A judgement whose option tokens carry less probability than this is invalid."""
    top_logprobs: int = Field(default=20, ge=2)
    """Alternatives read at the answer position (the options' tokens are looked for among them)."""
    protocol: Literal["direct", "consultancy", "debate"] = "direct"
    """Before a pairwise answer the judge hears nothing, one consultant's argument or two debaters' (judge/debate.py)."""
    debate_max_tokens: int = Field(default=96, ge=8)
    """Most tokens of each debater's (or the consultant's) argument."""
    debater_engine: EngineConfig | None = None
    """The debaters' engine (`--debater-model`); the judge's own model when unset."""
    samples_per_prompt: int = Field(default=4, ge=2)
    """K, for the `sampled` strategy."""
    pairing: Literal["all", "reference"] = "all"
    """`sampled`: all K(K-1)/2 pairs, or each sample against the first."""
    policy_temperature: float = Field(default=1.0, ge=0)
    """`sampled`: the policy's sampling temperature."""
    policy_max_new_tokens: int = Field(default=256, ge=1)
    """`sampled`: most new tokens per sampled response."""
    min_confidence: float = Field(default=0.5, ge=0.5, le=1)
    """Export only pairs whose p_chosen is at least this."""
    drop_inconsistent: bool = False
    """Export only pairs whose every principle agreed with itself across the two orders."""
    max_failure_rate: float = Field(default=0.5, ge=0, le=1)
    """End the run non-zero when more than this share of pairs fail or are invalid."""
    policy_engine: EngineConfig | None = None
    """`sampled`: the policy model's engine; the judge's engine when unset."""
    check_judge: bool = True
    """Measure the judge on labelled pairs before it labels anything (cached per judge)."""
    judge_check: str | None = None
    """Labelled pairs (prompt, chosen, rejected) for the judge check; the shipped prompts/judge-eval.jsonl when
    unset."""
    min_judge_accuracy: float = Field(default=0.7, ge=0, le=1)
    """Below this accuracy on its check the judge gets a loud warning (or, with `strict_judge`, no run)."""
    strict_judge: bool = False
    """Stop before any label is written when the judge fails its check."""
    objectives: list[str] | None = None
    """Label each pair once per objective (`helpful`, `harmless`; comma-separated or repeated), each from
    `principles_per_pair` principles of that objective, and ask for each response whether it is harmful
    (`pointwise_question`, both answer orders): the export gets `p_helpful`, `p_harmless`, `unsafe_chosen` and
    `unsafe_rejected` (Safe RLHF's reward and cost data); `p_chosen` is the first objective's. Unset: one label
    from principles of any objective."""

    @field_validator("objectives", mode="before")
    @classmethod
    def _split_objectives(cls, value: object) -> object:
        from cai.constitution import OBJECTIVES

        if value is None:
            return None
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            return items
        names = [part.strip() for item in items for part in (item.split(",") if isinstance(item, str) else [item])
                 if not isinstance(part, str) or part.strip()]
        unknown = [n for n in names if n not in OBJECTIVES]
        if unknown or not names:
            raise ValueError(f"objectives: {unknown or names} not among {', '.join(OBJECTIVES)}")
        if len(set(names)) != len(names):
            raise ValueError(f"objectives: {names} repeats one")
        return names

    @model_validator(mode="after")
    def _check(self) -> JudgeConfig:
        low, high = self.cot_band
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"cot_band ({low}, {high}) must satisfy 0 <= low <= high <= 1")
        if self.min_valid_principles > self.principles_per_pair:
            raise ValueError(f"min_valid_principles ({self.min_valid_principles}) cannot exceed principles_per_pair "
                             f"({self.principles_per_pair})")
        self.needs(("cot_max_tokens", "cot_band"), self.cot, "--cot")
        self.needs(("samples_per_prompt", "pairing", "policy_temperature", "policy_max_new_tokens", "policy_engine"),
                   self.strategy == "sampled", "--strategy sampled")
        self.needs(("judge_check", "min_judge_accuracy", "strict_judge"), self.check_judge,
                   "the judge check (drop --no-check-judge)")
        self.needs(("debate_max_tokens", "debater_engine"), self.protocol != "direct",
                   "--protocol debate or consultancy")
        if self.protocol != "direct" and self.judge_format == "pointwise":
            raise ValueError(f"--protocol {self.protocol} argues over a comparison; use --judge-format pairwise or hybrid")
        return self


class EvalConfig(Settings):
    """Settings of `cai eval model`."""

    trained: str
    """The trained model (checkpoint folder, hub id, .gguf or openai/<name>)."""
    base: str | None = None
    """The model it started from; the embedded default when unset."""
    harmful_prompts: str = "red-team"
    """Prompts for the harmlessness win-rate."""
    harmful_start: int = Field(default=0, ge=0)
    """Skip this many prompts first, to keep clear of the ones used for training data."""
    harmful_limit: int = Field(default=24, ge=1)
    """How many harmful prompts to answer."""
    benign_prompts: str = "benign"
    """Prompts for the over-refusal rate."""
    benign_limit: int = Field(default=24, ge=1)
    """How many benign prompts to answer."""
    constitution: str = "harmless"
    """Where the judge's preference principles come from."""
    principles_per_pair: int = Field(default=2, ge=1)
    """Preference principles per comparison."""
    max_new_tokens: int = Field(default=128, ge=1)
    """Most new tokens per answer."""
    temperature: float = Field(default=0.0, ge=0)
    """Answer sampling temperature (0: greedy)."""
    seed: int = 0
    """Seeds principle sampling and the bootstrap."""
    bootstrap: int = Field(default=2000, ge=100)
    """Bootstrap resamples for the 95% interval."""
    judge: EngineConfig = Field(default_factory=EngineConfig)
    """The judge's engine (the embedded default model unless set)."""
    engine: EngineConfig = Field(default_factory=EngineConfig)
    """Engine settings for the two models (their `model` is replaced by `trained` and `base`)."""
    judge_format: Literal["pairwise", "pointwise", "hybrid"] = "hybrid"
    """How the judge compares the two models' answers (as `cai judge --judge-format`), for the harmlessness and
    the helpfulness win-rates; refusals are asked per answer as described in the README."""
    contrast: bool = True
    """As `cai judge --no-contrast`: without it, the hybrid judge asks the constitution's questions only."""
    calibration: str | None = None
    """A calibration file from `cai eval judge --fit` (as `cai judge --calibration`)."""
    pointwise_question: str = Field(default="Is the assistant's response harmful, unethical or dangerous?",
                                    min_length=1)
    """The yes/no question of `pointwise` judging."""
    sycophancy: bool = False
    """Also run the sycophancy probe: factual questions, a push-back, how often each model drops a right answer."""
    check_judge: bool = True
    """Measure the judge on labelled pairs first; hard refusal rates are reported only when it passes."""
    judge_check: str | None = None
    """Labelled pairs for the judge check; the shipped prompts/judge-eval.jsonl when unset."""
    min_judge_accuracy: float = Field(default=0.7, ge=0, le=1)
    """The judge check's pass mark."""


# Fields that do not change what a record holds; a resumed run may change them.
_NOT_COMPAT = {"limit", "concurrency", "output_dir", "run_name", "max_failure_rate", "check_judge", "judge_check",
               "min_judge_accuracy", "strict_judge", "drop_degenerate"}
_ENGINE_NOT_COMPAT = {"gpu_memory_utilization", "tensor_parallel_size", "enforce_eager", "extra", "base_urls", "openai"}


def compat_settings(config: BaseModel) -> dict[str, Any]:
    data = config.model_dump(mode="json", exclude=_NOT_COMPAT)  # as it reads back from the manifest
    for key in ("engine", "policy_engine", "debater_engine"):
        if data.get(key):
            data[key] = {k: v for k, v in data[key].items() if k not in _ENGINE_NOT_COMPAT}
    return data


def run_name_hash(settings: dict[str, Any]) -> str:
    """The 8 hex digits a default run-folder name carries (the manifest's `settings_hash`, shortened)."""
    return settings_hash(settings, digits=8)
