"""`cai run RECIPE.yaml`: generate -> judge -> train (SFT, DPO) -> eval -> report in one run folder.

    cai run recipes/quickstart.yaml

A recipe names the stages and holds each stage's settings (the same fields as the stage's own command). Every
stage writes into `<output_dir>/<name>/<stage>/`; a stage whose settings are unchanged since it last finished is
skipped, and the generate and judge stages resume their own records, so rerunning a recipe continues it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cai.config import ConfigError, GenerateConfig, settings_hash
from cai.engines import Engine, is_embedded_default
from cai.judge_run import JudgeConfig
from cai.model_eval import EvalConfig
from cai.redact import redact_secrets
from cai.store import check_run_name, write_json_atomic
from cai.yaml_safe import YAMLInputError, load_yaml

Stage = Literal["generate", "judge", "sft", "dpo", "eval", "report"]
DEPENDS: dict[str, tuple[str, ...]] = {"generate": (), "judge": ("generate",), "sft": ("generate",),
                                       "dpo": ("judge", "sft"), "eval": ("sft", "dpo"),
                                       "report": ("generate", "judge", "sft", "dpo", "eval")}
"""The stages whose outputs each stage reads (within a recipe)."""


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str
    """Run folder name under `output_dir`."""
    output_dir: str = "outputs"
    stages: list[Stage] = Field(default_factory=lambda: ["generate", "judge", "sft", "dpo", "eval", "report"],
                                min_length=1)
    """The stages to run, in pipeline order (at least one)."""
    generate: dict[str, Any] = Field(default_factory=dict)
    """`cai generate` settings (output_dir and run_name are set by the recipe)."""
    judge: dict[str, Any] = Field(default_factory=dict)
    """`cai judge` settings (source, output_dir and run_name are set by the recipe)."""
    sft: dict[str, Any] = Field(default_factory=dict)
    """`cai train sft` settings (data and out are set by the recipe)."""
    dpo: dict[str, Any] = Field(default_factory=dict)
    """`cai train dpo` settings (data, out and, after SFT, model are set by the recipe)."""
    eval: dict[str, Any] = Field(default_factory=dict)
    """`cai eval model` settings (trained and base are set by the recipe)."""


class Pipeline:
    """The stage configs of a recipe, fully built and validated before anything runs."""

    def __init__(self, recipe: Recipe):
        from cai.train.config import DPOConfig, TrainConfig

        self.recipe = recipe
        self.run = Path(recipe.output_dir) / check_run_name(recipe.name)
        run = str(self.run)
        base_model = recipe.generate.get("engine", {}).get("model")
        self.configs: dict[str, BaseModel] = {}
        try:
            if "generate" in recipe.stages:
                self.configs["generate"] = GenerateConfig(**{**recipe.generate, "output_dir": run,
                                                             "run_name": "generate"})
            if "judge" in recipe.stages:
                self.configs["judge"] = JudgeConfig(**{**recipe.judge, "source": str(self.run / "generate"),
                                                       "output_dir": run, "run_name": "judge"})
            trained = base_model
            if "sft" in recipe.stages:
                self.configs["sft"] = TrainConfig(**{"model": base_model, **recipe.sft,
                                                     "data": str(self.run / "generate"), "out": str(self.run / "sft")})
                trained = str(self.run / "sft")
            if "dpo" in recipe.stages:
                self.configs["dpo"] = DPOConfig(**{"model": trained, **recipe.dpo,
                                                     "data": str(self.run / "judge"), "out": str(self.run / "dpo")})
                trained = str(self.run / "dpo")
            if "eval" in recipe.stages:
                self.configs["eval"] = EvalConfig(**{**recipe.eval, "trained": trained, "base": base_model})
        except ValidationError as e:
            lines = [f"  {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
            raise ConfigError(f"recipe {recipe.name!r}: invalid stage settings\n" + "\n".join(lines)) from None

    def _status_path(self) -> Path:
        return self.run / "stages.json"

    def _status(self) -> dict[str, Any]:
        path = self._status_path()
        return json.loads(path.read_text()) if path.exists() else {}

    def _fingerprint(self, stage: str) -> str:
        """The stage's settings, the content of what it reads from outside the run (constitution, templates,
        prompts, models) and the fingerprints of the stages it reads from: a change anywhere upstream makes it
        stale."""
        config = self.configs.get(stage)
        upstream = {d: self._fingerprint(d) for d in DEPENDS[stage] if d in self.configs}
        return settings_hash({"settings": config.model_dump(mode="json") if config is not None else stage,
                              "inputs": self._inputs(stage), "upstream": upstream})

    def _inputs(self, stage: str) -> dict[str, str]:
        from cai.constitution import load_constitution
        from cai.fingerprint import input_fingerprints, model_fingerprint

        config = self.configs.get(stage)
        if stage == "generate":
            return input_fingerprints(load_constitution(config.constitution), config.templates, config.prompts,
                                      config.engine.model)
        if stage == "judge":
            return input_fingerprints(load_constitution(config.constitution), config.templates, None,
                                      config.engine.model)
        base = self.recipe.generate.get("engine", {}).get("model")
        return {"base_model": model_fingerprint(base)} if stage in ("sft", "eval") else {}

    def _set_aside_stale(self, stage: str) -> None:
        """A stage that finished before with other inputs reruns from scratch: its old folder (the pipeline's
        own) becomes `<stage>.previous`, replacing an older one, so nothing of it mixes into the new outputs."""
        finished = self._status().get(stage)
        folder = self.run / stage
        if finished is None or not folder.exists() or stage == "report":
            return
        previous = self.run / f"{stage}.previous"
        shutil.rmtree(previous, ignore_errors=True)
        folder.rename(previous)
        print(f"cai run: {stage} is stale (its settings or inputs changed); the old outputs are in {previous}")

    def is_done(self, stage: str) -> bool:
        return self._status().get(stage, {}).get("fingerprint") == self._fingerprint(stage)

    def _mark(self, stage: str, seconds: float) -> None:
        status = self._status()
        status[stage] = {"fingerprint": self._fingerprint(stage), "seconds": round(seconds, 1),
                         "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json_atomic(self._status_path(), status)

    async def run_stage(self, stage: str, engine: Engine | None, progress: bool) -> None:
        if stage == "generate":
            from cai.generate import generate

            await generate(self.configs[stage], engine=_share(engine, self.configs[stage].engine), progress=progress)
        elif stage == "judge":
            from cai.judge_run import judge_run

            await judge_run(self.configs[stage], engine=_share(engine, self.configs[stage].engine), progress=progress)
        elif stage in ("sft", "dpo"):
            from cai.train import run_training

            # the stage folder is the pipeline's own: a stage that reruns (its settings changed) replaces it
            run_training(stage, self.configs[stage].model_copy(update={"progress": progress, "overwrite": True}))
        elif stage == "eval":
            from cai.model_eval import evaluate_models

            await evaluate_models(self.configs[stage], self.run / "eval", shared=engine)
        elif stage == "report":
            from cai.report import write_report

            write_report(self.run)

    async def execute(self, engine: Engine | None = None, progress: bool = True) -> dict[str, str]:
        """Run every stage not yet done; returns what happened to each.

        Stages that use the embedded default model on vLLM share one engine (`engine`, or one started here), so
        the pipeline pays the engine's start-up once.
        """
        self.run.mkdir(parents=True, exist_ok=True)
        recipe = redact_secrets(self.recipe.model_dump(mode="json"))
        (self.run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        pending = [s for s in self.recipe.stages if s == "report" or not self.is_done(s)]
        owned = None
        if engine is None and any(s in pending for s in ("generate", "judge", "eval")):
            from cai.engines import EngineConfig, create_engine

            settings = EngineConfig(**self.recipe.generate.get("engine", {}))
            if is_embedded_default(settings):
                engine = owned = create_engine(settings)
        outcome = {s: "skipped (done)" for s in self.recipe.stages if s not in pending}
        try:
            for stage in pending:
                print(f"cai run: {stage} ...", flush=True)
                start = time.monotonic()
                self._set_aside_stale(stage)
                await self.run_stage(stage, engine, progress)
                self._mark(stage, time.monotonic() - start)
                outcome[stage] = f"done in {time.monotonic() - start:.0f} s"
        finally:
            if owned is not None:
                await owned.close()
        return outcome


def _share(engine: Engine | None, config) -> Engine | None:
    """Use the caller's engine for a stage that asks for the embedded default on vLLM."""
    return engine if is_embedded_default(config) else None


def load_recipe(path: str | Path) -> Recipe:
    from cai.resources import resolve_bundled

    try:
        resolved = resolve_bundled(path, "recipes", (".yaml", ".yml"))
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    try:
        data = load_yaml(Path(resolved).read_text(encoding="utf-8"), str(resolved))
    except YAMLInputError as e:
        raise ConfigError(str(e)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{resolved}: cannot read recipe: {e}") from None
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        lines = [f"  {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{resolved}: invalid recipe\n" + "\n".join(lines)) from None
