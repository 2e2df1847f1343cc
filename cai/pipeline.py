"""`cai run RECIPE.yaml`: the stages of `cai/stages.py` (generate -> judge -> sft -> dpo -> rm -> cost -> ppo ->
online -> eval -> report), those a recipe lists, in one run folder.

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
from pydantic import BaseModel, Field, ValidationError, field_validator

from cai.config import ConfigError, read_yaml_file, settings_hash
from cai.engines import Engine, is_embedded_default
from cai.redact import redact_secrets
from cai.settings import Settings
from cai.stages import STAGES
from cai.store import check_run_name, write_json_atomic

Stage = Literal["generate", "judge", "sft", "dpo", "rm", "cost", "ppo", "online", "eval", "report"]


class Recipe(Settings):
    """A `cai run` recipe: the stages to run and each stage's settings."""

    name: str
    """Run folder name under `output_dir`."""
    output_dir: str = "outputs"
    """Folder that holds the run folder."""
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
    rm: dict[str, Any] = Field(default_factory=dict)
    """`cai train rm` settings (data is the judge stage's pairs; out is set by the recipe)."""
    cost: dict[str, Any] = Field(default_factory=dict)
    """`cai train cost` settings (data is the judge stage's pairs, judged with `objectives`; out is set)."""
    ppo: dict[str, Any] = Field(default_factory=dict)
    """`cai train ppo` settings (model, reward_model, with a cost stage cost_model, and out are set by the
    recipe)."""
    online: dict[str, Any] = Field(default_factory=dict)
    """`cai train online-dpo` settings (model, after earlier training stages, and out are set by the recipe)."""
    eval: dict[str, Any] = Field(default_factory=dict)
    """`cai eval model` settings (trained and base are set by the recipe)."""

    @field_validator("stages")
    @classmethod
    def _in_order(cls, stages: list[str]) -> list[str]:
        order = list(STAGES)
        if stages != sorted(set(stages), key=order.index):
            raise ValueError(f"stages must be distinct and in pipeline order ({' -> '.join(order)})")
        return stages


class Pipeline:
    """The stage configs of a recipe, fully built and validated before anything runs."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.run = Path(recipe.output_dir) / check_run_name(recipe.name)
        self.base_model = recipe.generate.get("engine", {}).get("model") or next(
            (getattr(recipe, s).get("model") for s in recipe.stages
             if STAGES[s].trains_policy and getattr(recipe, s).get("model")), None)
        """The model the recipe starts from: generate's, else the first training stage's own `model`."""
        self.configs: dict[str, BaseModel] = {}
        try:
            for name in recipe.stages:
                config = STAGES[name].build(self, getattr(recipe, name, {}))
                if config is not None:
                    self.configs[name] = config
        except ValidationError as e:
            lines = [f"  {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
            raise ConfigError(f"recipe {recipe.name!r}: invalid stage settings\n" + "\n".join(lines)) from None

    def policy_before(self, stage: str) -> str | None:
        """The policy a stage starts from: the last policy trained earlier in the recipe, else the base model."""
        earlier = list(STAGES)[: list(STAGES).index(stage)]
        trained = [s for s in self.recipe.stages if s in earlier and STAGES[s].trains_policy]
        return str(self.run / trained[-1]) if trained else self.base_model

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
        upstream = {d: self._fingerprint(d) for d in STAGES[stage].reads if d in self.recipe.stages}
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
        return {"base_model": model_fingerprint(self.base_model)}

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
        await STAGES[stage].run(self, self.configs.get(stage), engine, progress)

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
        if engine is None and any(s in pending for s in ("generate", "judge", "online", "eval")):  # engine users
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

    def outcome_text(self, outcome: dict[str, str]) -> str:
        """What `cai run` prints: each stage's outcome, the evaluation's headline and where the report is."""
        lines = [f"{stage}: {what}" for stage, what in outcome.items()]
        results = self.run / "eval" / "results.json"
        if results.exists():
            lines.append(_summary_line(json.loads(results.read_text())))
        if (self.run / "report" / "index.html").exists():
            lines.append(f"report: {self.run / 'report' / 'index.html'}")
        return "\n".join(lines)


def _summary_line(results: dict[str, Any]) -> str:
    harm, refusal = results["harmlessness"], results["over_refusal"]
    return (f"harmlessness win-rate: {harm['win_rate']} (95% CI {harm['ci95']}); over-refusal base "
            f"{refusal['base']['refusal_rate']}, trained {refusal['trained']['refusal_rate']}")




def load_recipe(path: str | Path) -> Recipe:
    from cai.resources import resolve_bundled

    try:
        resolved = resolve_bundled(path, "recipes", (".yaml", ".yml"))
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    data = read_yaml_file(resolved, "recipe")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        lines = [f"  {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{resolved}: invalid recipe\n" + "\n".join(lines)) from None
