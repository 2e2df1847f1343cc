"""The one registry of cai's stages: everything the pipeline, the recipe schema, the command line and the report
know of a stage. A new stage is its own module and one entry in `STAGES`; nothing else lists stage names.

    STAGES["dpo"].config_class()     # DPOConfig
    TASKS                            # the stages `cai train` runs (the ones with `prepare`)
    canonical("online")              # "online-dpo": one name per unit, the command line's; old spellings kept

Each entry names its code by "module:attribute" so that `cai --help` imports no heavy library.
Order is pipeline order: generate -> judge -> sft -> dpo -> rm -> cost -> ppo -> grpo -> online-dpo -> eval -> report.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def load(path: str) -> Any:
    """The object a "module:attribute" path names."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Stage:
    name: str
    """The stage's one name: recipe key, stage folder, `cai train <name>` task."""
    help: str
    """One line for `cai train --help` and `cai run --help`."""
    config: str | None
    """"module:Class" of its settings (None: no settings, as the report)."""
    build: str | None
    """"module:function" (pipeline, recipe settings) -> the stage's config, with what the pipeline sets."""
    run: str
    """"module:function" async (pipeline, config, shared engine or None, progress) -> None."""
    reads: tuple[str, ...] = ()
    """Stages whose outputs it reads (when the recipe has them): a change there makes it stale."""
    trains_policy: bool = False
    """Its output is the policy later stages start from."""
    uses_engine: bool = False
    """It runs the embedded default model on vLLM: stages that do share one engine in a pipeline."""
    prepare: str | None = None
    """`cai train` tasks: "module:function" config -> a trainer with `train()` (or the run's metrics)."""
    curves: tuple[str, ...] = ()
    """Metrics the report plots from its metrics.jsonl, in this order (those present)."""
    aliases: tuple[str, ...] = ()
    """Older spellings still accepted in recipes and on the command line."""
    extra: dict[str, Any] = field(default_factory=dict)

    def config_class(self) -> Any:
        return load(self.config) if self.config else None


TRAIN_CURVES = ("loss", "rewards/margins", "rewards/accuracies", "objective/scores", "objective/kl")

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("generate", "critique -> revision chains (the supervised stage's data)", "cai.config:GenerateConfig",
          "cai.stages:build_generate", "cai.stages:run_generate", uses_engine=True),
    Stage("judge", "AI-judged preference pairs (the RL-from-AI-feedback stage's data)", "cai.config:JudgeConfig",
          "cai.stages:build_judge", "cai.stages:run_judge", reads=("generate",), uses_engine=True),
    Stage("sft", "supervised fine-tuning on `messages`", "cai.train.config:TrainConfig",
          "cai.stages:build_sft", "cai.stages:run_trainer", reads=("generate",), trains_policy=True,
          prepare="cai.train.sft:prepare_sft", curves=TRAIN_CURVES),
    Stage("dpo", "preference optimisation (sigmoid, ipo or soft labels)", "cai.train.config:DPOConfig",
          "cai.stages:build_dpo", "cai.stages:run_trainer", reads=("judge", "sft"), trains_policy=True,
          prepare="cai.train.dpo:prepare_dpo", curves=TRAIN_CURVES),
    Stage("rm", "a reward model on preference pairs (Bradley-Terry, soft labels)", "cai.train.config:RewardConfig",
          "cai.stages:build_rm", "cai.stages:run_trainer", reads=("judge",), prepare="cai.train.reward:prepare_reward"),
    Stage("cost", "a cost model (Safe RLHF): harmlessness pairs plus a safe/unsafe term",
          "cai.train.config:CostConfig", "cai.stages:build_cost", "cai.stages:run_trainer", reads=("judge",),
          prepare="cai.train.cost:prepare_cost"),
    Stage("ppo", "PPO of a policy against a reward model, KL-penalised to a reference", "cai.train.rl_config:PPOConfig",
          "cai.stages:build_ppo", "cai.stages:run_trainer", reads=("sft", "dpo", "rm", "cost"), trains_policy=True,
          prepare="cai.train.ppo:prepare_ppo", curves=TRAIN_CURVES),
    Stage("grpo", "critic-free RL (GRPO, RLOO, REINFORCE++) with the constitution as the reward",
          "cai.train.rl_config:GRPOConfig", "cai.stages:build_grpo", "cai.stages:run_trainer",
          reads=("sft", "dpo", "rm"), trains_policy=True, prepare="cai.train.grpo:prepare_grpo",
          curves=("reward/mean", "groups/zero_variance_share", "completions/clipped_share", "objective/kl",
                  "eval/reward", "eval/judge_win_rate")),
    Stage("online-dpo", "online iterative DPO: sample (vLLM) -> AI judge -> DPO, round after round",
          "cai.train.rl_config:OnlineDPOConfig", "cai.stages:build_online", "cai.stages:run_online",
          reads=("sft", "dpo", "ppo", "grpo"), trains_policy=True, uses_engine=True,
          prepare="cai.train.online:run_online",
          aliases=("online",)),
    Stage("eval", "harmlessness and helpfulness win-rates, over-refusal, lengths", "cai.config:EvalConfig",
          "cai.stages:build_eval", "cai.stages:run_eval", reads=("sft", "dpo", "ppo", "grpo", "online-dpo"),
          uses_engine=True),
    Stage("report", "the HTML report with its verdict", None, None, "cai.stages:run_report",
          reads=("generate", "judge", "sft", "dpo", "rm", "cost", "ppo", "grpo", "online-dpo", "eval")),
)}
"""Every stage, in pipeline order."""

TASKS: dict[str, Stage] = {name: s for name, s in STAGES.items() if s.prepare}
"""The stages `cai train` runs."""

ALIASES: dict[str, str] = {alias: s.name for s in STAGES.values() for alias in s.aliases}


def canonical(name: str) -> str:
    """A stage's one name for any spelling it has had."""
    return ALIASES.get(name, name)


def register(stage: Stage) -> Callable[[], None]:
    """Add a stage (tests and plugins); returns a function that removes it again."""
    STAGES[stage.name] = stage
    if stage.prepare:
        TASKS[stage.name] = stage
    for alias in stage.aliases:
        ALIASES[alias] = stage.name

    def remove() -> None:
        STAGES.pop(stage.name, None)
        TASKS.pop(stage.name, None)
        for alias in stage.aliases:
            ALIASES.pop(alias, None)
    return remove
