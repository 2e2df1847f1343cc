"""The stage table behind `cai run`: for each stage, what it reads, how its config is built from a recipe and how
it runs. A new stage is one entry here (and its own module), nothing else.

    generate -> judge -> sft -> dpo -> rm -> cost -> ppo -> online -> eval -> report

Every stage writes into `<run>/<stage>/`. The policy a stage trains from is the last one trained before it in
the recipe (`sft`, then `dpo`, `ppo`, `online`), or the base model.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from cai.engines import Engine, is_embedded_default


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]
    """Stages whose outputs this one reads (when the recipe has them): a change there makes it stale."""
    build: Callable[[Any, dict[str, Any]], BaseModel | None]
    """(pipeline, the recipe's settings for the stage) -> the stage's validated config."""
    run: Callable[[Any, Any, Engine | None, bool], Awaitable[None]]
    """(pipeline, config, shared engine or None, progress) -> runs it."""
    trains_policy: bool = False
    """Its output is the policy the next stages start from."""


def _share(engine: Engine | None, config: Any) -> Engine | None:
    """The caller's engine for a stage that asks for the embedded default on vLLM."""
    return engine if is_embedded_default(config) else None


def _generate(p, settings):
    from cai.config import GenerateConfig

    return GenerateConfig(**{**settings, "output_dir": str(p.run), "run_name": "generate"})


async def _run_generate(p, config, engine, progress):
    from cai.generate import generate

    await generate(config, engine=_share(engine, config.engine), progress=progress)


def _judge(p, settings):
    from cai.config import JudgeConfig

    return JudgeConfig(**{**settings, "source": str(p.run / "generate"), "output_dir": str(p.run),
                          "run_name": "judge"})


async def _run_judge(p, config, engine, progress):
    from cai.judge_run import judge_run

    await judge_run(config, engine=_share(engine, config.engine), progress=progress)


def _trainer(task: str, data: str | None, **fixed: Callable[[Any], Any]):
    """A `cai train <task>` stage on `<run>/<data>` (or the recipe's own `data`), starting from the policy
    trained so far; `fixed` values the pipeline sets (`...`: left to the recipe)."""
    def build(p, settings):
        from cai.train.config import CONFIGS

        pinned = {k: v for k, f in fixed.items() if (v := f(p)) is not ...}
        stage = "online" if task == "online-dpo" else task
        values = {"model": p.policy_before(stage), **settings, **pinned, "out": str(p.run / stage)}
        if data is not None:
            values["data"] = str(p.run / data)
        return CONFIGS[task](**values)
    return build


async def _run_training(task: str, p, config, engine, progress):
    from cai.train import run_training

    if task == "online-dpo":  # resumable: a rerun after a kill continues its rounds; it judges on `engine`
        from cai.train.online import online_dpo

        await online_dpo(config.model_copy(update={"progress": progress}),
                         judge=_share(engine, config.judge_engine))
        return
    # the stage folder is the pipeline's own: a stage that reruns (its settings changed) replaces it
    run_training(task, config.model_copy(update={"progress": progress, "overwrite": True}))


def _eval(p, settings):
    from cai.config import EvalConfig

    return EvalConfig(**{**settings, "trained": p.policy_before("eval"), "base": p.base_model})


async def _run_eval(p, config, engine, progress):
    from cai.model_eval import evaluate_models

    await evaluate_models(config, p.run / "eval", shared=engine)


async def _run_report(p, config, engine, progress):
    from cai.report import write_report

    write_report(p.run)


def _stage_output(stage: str) -> Callable[[Any], Any]:
    """The folder of `stage` when the recipe runs it, else `...` (the recipe's own setting stands)."""
    return lambda p: str(p.run / stage) if stage in p.recipe.stages else ...


def _training(task: str):
    async def run(p, config, engine, progress):
        await _run_training(task, p, config, engine, progress)
    return run


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("generate", (), _generate, _run_generate),
    Stage("judge", ("generate",), _judge, _run_judge),
    Stage("sft", ("generate",), _trainer("sft", "generate"), _training("sft"), trains_policy=True),
    Stage("dpo", ("judge", "sft"), _trainer("dpo", "judge"), _training("dpo"), trains_policy=True),
    Stage("rm", ("judge",), _trainer("rm", "judge", model=lambda p: p.base_model), _training("rm")),
    Stage("cost", ("judge",), _trainer("cost", "judge", model=lambda p: p.base_model), _training("cost")),
    Stage("ppo", ("sft", "dpo", "rm", "cost"), _trainer("ppo", None, reward_model=lambda p: str(p.run / "rm"),
                                                        cost_model=_stage_output("cost")),
          _training("ppo"), trains_policy=True),
    Stage("online", ("sft", "dpo", "ppo"), _trainer("online-dpo", None), _training("online-dpo"),
          trains_policy=True),
    Stage("eval", ("sft", "dpo", "ppo", "online"), _eval, _run_eval),
    Stage("report", ("generate", "judge", "sft", "dpo", "rm", "cost", "ppo", "online", "eval"), lambda p, s: None,
          _run_report),
)}
"""Every stage, in pipeline order."""

