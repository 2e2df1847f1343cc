"""The pipeline glue of each stage the registry (cai/registry.py) names: how `cai run` builds a stage's config from
the recipe and what the pipeline sets (its input folders, the policy trained so far), and how it runs it.

    build(pipeline, recipe_settings) -> config          run(pipeline, config, shared_engine, progress)

Every stage writes into `<run>/<stage>/`. The policy a stage trains from is the last one trained before it in the
recipe, or the base model.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from cai.engines import Engine, is_embedded_default


def _share(engine: Engine | None, config: Any) -> Engine | None:
    """The caller's engine for a stage that asks for the embedded default on vLLM."""
    return engine if is_embedded_default(config) else None


def _stage_output(p: Any, stage: str) -> str | None:
    """The folder of `stage` when the recipe runs it, else None (the recipe's own setting stands)."""
    return str(p.run / stage) if stage in p.recipe.stages else None


# --- generate and judge ------------------------------------------------------------------------------------------
def build_generate(p: Any, settings: dict[str, Any]) -> Any:
    from cai.config import GenerateConfig

    return GenerateConfig(**{**settings, "output_dir": str(p.run), "run_name": "generate"})


async def run_generate(p: Any, config: Any, engine: Engine | None, progress: bool) -> None:
    from cai.generate.run import generate

    await generate(config, engine=_share(engine, config.engine), progress=progress)


def build_judge(p: Any, settings: dict[str, Any]) -> Any:
    from cai.config import JudgeConfig

    return JudgeConfig(**{**settings, "source": str(p.run / "generate"), "output_dir": str(p.run),
                          "run_name": "judge"})


async def run_judge(p: Any, config: Any, engine: Engine | None, progress: bool) -> None:
    from cai.judge.run import judge_run

    await judge_run(config, engine=_share(engine, config.engine), progress=progress)


# --- training stages -------------------------------------------------------------------------------------------
def _train_config(p: Any, stage: str, settings: dict[str, Any], data: str | None = None,
                  **pinned: Any) -> Any:
    """A `cai train <stage>` config on `<run>/<data>` (or the recipe's own `data`), starting from the policy trained
    so far; `pinned` are values the pipeline sets (None: left to the recipe)."""
    from cai.registry import STAGES

    values = {"model": p.policy_before(stage), **settings,
              **{k: v for k, v in pinned.items() if v is not None}, "out": str(p.run / stage)}
    if data is not None:
        values["data"] = str(p.run / data)
    return STAGES[stage].config_class()(**values)


def build_sft(p: Any, settings: dict[str, Any]) -> Any:
    return _train_config(p, "sft", settings, "generate")


def build_dpo(p: Any, settings: dict[str, Any]) -> Any:
    return _train_config(p, "dpo", settings, "judge")


def build_rm(p: Any, settings: dict[str, Any]) -> Any:
    return _train_config(p, "rm", settings, "judge", model=p.base_model)


def build_cost(p: Any, settings: dict[str, Any]) -> Any:
    return _train_config(p, "cost", settings, "judge", model=p.base_model)


def build_ppo(p: Any, settings: dict[str, Any]) -> Any:
    return _train_config(p, "ppo", settings, reward_model=str(p.run / "rm"), cost_model=_stage_output(p, "cost"))


def build_grpo(p: Any, settings: dict[str, Any]) -> Any:
    reward_models = settings.get("reward_model") or ([str(p.run / "rm")] if "rm" in p.recipe.stages else None)
    return _train_config(p, "grpo", settings, reward_model=reward_models)


def build_online(p: Any, settings: dict[str, Any]) -> Any:
    return _train_config(p, "online-dpo", settings)


async def run_trainer(p: Any, config: Any, engine: Engine | None, progress: bool) -> None:
    from cai.train.outputs import task_of
    from cai.train.run import run_training

    # the stage folder is the pipeline's own: a stage that reruns (its settings changed) replaces it
    await in_daemon_thread(run_training, task_of(config),
                           config.model_copy(update={"progress": progress, "overwrite": True}))


async def in_daemon_thread(function: Any, *args: Any) -> Any:
    """`function(*args)` on a thread of its own, awaited. Trainers drive their own event loops (grpo's reward judge,
    ppo's evaluation judge, vLLM rollouts), which cannot start inside the pipeline's running one. A daemon thread,
    not `asyncio.to_thread`: on Ctrl-C the command exits at once instead of waiting for training to finish (what
    was checkpointed is kept, and the same command resumes)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def settle(setter: Any, value: Any) -> None:
        if not done.done():
            setter(value)

    def target() -> None:
        try:
            result = function(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine, which re-raises it
            outcome = (done.set_exception, e)
        else:
            outcome = (done.set_result, result)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop closed meanwhile (the command is exiting): nobody is waiting
            pass

    threading.Thread(target=target, name="cai-train", daemon=True).start()
    return await done


async def run_online(p: Any, config: Any, engine: Engine | None, progress: bool) -> None:
    from cai.train.online import online_dpo

    # resumable: a rerun after a kill continues its rounds; it judges on the shared engine
    await online_dpo(config.model_copy(update={"progress": progress}), judge=_share(engine, config.judge_engine))


# --- evaluation and report -------------------------------------------------------------------------------------
def build_eval(p: Any, settings: dict[str, Any]) -> Any:
    from cai.config import EvalConfig

    return EvalConfig(**{**settings, "trained": p.policy_before("eval"), "base": p.base_model})


async def run_eval(p: Any, config: Any, engine: Engine | None, progress: bool) -> None:
    from cai.evaluate.model import evaluate_models

    await evaluate_models(config, p.run / "eval", shared=engine)


async def run_report(p: Any, config: Any, engine: Engine | None, progress: bool) -> None:
    from cai.report.page import write_report

    write_report(p.run)
