"""`cai run RECIPE.yaml`: the stages of the registry (cai/registry.py: generate -> judge -> sft -> dpo -> rm -> cost
-> ppo -> online-dpo -> eval -> report), those a recipe lists, in one run folder.

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
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_serializer, model_validator

from cai.config import ConfigError, error_lines, read_yaml_file, run_name_hash
from cai.engines import Engine, is_embedded_default
from cai.registry import STAGES, load
from cai.runs.redact import redact_secrets
from cai.runs.store import check_run_name, write_json_atomic
from cai.settings import Settings

DEFAULT_STAGES = ["generate", "judge", "sft", "dpo", "eval", "report"]


class Recipe(Settings):
    """A `cai run` recipe: the stages to run and each stage's settings, one block per stage of the registry
    (cai/registry.py), named as the stage is (`dpo:`, `online-dpo:`; an older spelling such as `online:` is read as
    its stage). Each block holds the same fields as the stage's own command; what the pipeline sets (input and
    output folders, the policy trained so far) is filled in."""

    name: str
    """Run folder name under `output_dir`."""
    output_dir: str = "outputs"
    """Folder that holds the run folder."""
    stages: list[str] = Field(default_factory=lambda: list(DEFAULT_STAGES), min_length=1)
    """The stages to run, in pipeline order (at least one)."""
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Each stage's settings block, by stage name (in a recipe file, written as a top-level key per stage)."""

    @model_validator(mode="before")
    @classmethod
    def _stage_blocks(cls, data: Any) -> Any:
        """Top-level stage blocks (`dpo: {...}`) gathered into `settings`; an unknown key stays and is refused."""
        from cai.registry import STAGES, canonical

        if not isinstance(data, dict):
            return data
        data = dict(data)
        blocks = dict(data.pop("settings", None) or {})
        for key in [k for k in data if k not in cls.model_fields]:
            stage = canonical(str(key))
            if stage in STAGES:
                block = data.pop(key)
                if block is not None and not isinstance(block, dict):
                    raise ValueError(f"{key}: a stage's settings are a mapping of its fields")
                blocks[stage] = block or {}
        data["settings"] = blocks
        return data

    @field_validator("stages")
    @classmethod
    def _in_order(cls, stages: list[str]) -> list[str]:
        from cai.registry import STAGES, canonical

        stages = [canonical(s) for s in stages]
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {', '.join(unknown)} (known: {', '.join(STAGES)})")
        order = list(STAGES)
        if stages != sorted(set(stages), key=order.index):
            raise ValueError(f"stages must be distinct and in pipeline order ({' -> '.join(order)})")
        return stages

    def block(self, stage: str) -> dict[str, Any]:
        return self.settings.get(stage, {})

    @model_serializer(mode="wrap")
    def _as_written(self, handler: Any) -> dict[str, Any]:
        """Dumped as a recipe file is written: a top-level block per stage."""
        data = handler(self)
        return {**{k: v for k, v in data.items() if k != "settings"}, **data.get("settings", {})}


class Pipeline:
    """The stage configs of a recipe, fully built and validated before anything runs."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.run = Path(recipe.output_dir) / check_run_name(recipe.name)
        self.base_model = recipe.block("generate").get("engine", {}).get("model") or next(
            (recipe.block(s).get("model") for s in recipe.stages
             if STAGES[s].trains_policy and recipe.block(s).get("model")), None)
        """The model the recipe starts from: generate's, else the first training stage's own `model`."""
        self.configs: dict[str, BaseModel] = {}
        try:
            for name in recipe.stages:
                build = STAGES[name].build
                if build is not None:
                    self.configs[name] = load(build)(self, recipe.block(name))
        except ValidationError as e:
            lines = error_lines(e)
            raise ConfigError(f"recipe {recipe.name!r}: invalid stage settings\n" + "\n".join(lines)) from None

    def problems(self) -> list[str]:
        """Every path and model the recipe's stages name that cannot be used (cai/preflight.py): checked before
        anything runs; outputs of the recipe's own earlier stages count as present."""
        from cai.runs.preflight import check_config, check_training
        from cai.train.config import TrainConfig

        produced = [self.run / stage for stage in self.recipe.stages]
        problems = []
        for stage, config in self.configs.items():
            found = check_training(config, produced) if isinstance(config, TrainConfig) else check_config(config, produced)
            problems += [f"{stage}.{p}" for p in found]
        return problems

    def check(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(f"recipe {self.recipe.name!r}: cannot run\n" + "\n".join(f"  {p}" for p in problems))

    def plan_text(self) -> str:
        """What `cai run --dry-run` prints: each stage, whether it would run, what it reads and where it writes."""
        from cai.runs.preflight import describe_model

        status = self._status()
        lines = [f"recipe {self.recipe.name!r} -> {self.run}"]
        for stage in self.recipe.stages:
            config = self.configs.get(stage)
            if stage == "report":
                state = "runs"
            elif self.is_done(stage):
                state = "done (skipped)"
            else:
                state = "stale (reruns; old outputs kept as .previous)" if stage in status else "runs"
            reads = [r for r in STAGES[stage].reads if r in self.recipe.stages]
            model = next((getattr(config, f) for f in ("trained", "model") if getattr(config, f, None)), None)
            model = model or getattr(getattr(config, "engine", None), "model", None)
            used = f"; model {describe_model(model)}" if config is not None else ""
            lines.append(f"  {stage:<11} {state}; reads {', '.join(reads) or 'nothing of the run'}{used}; writes "
                         f"{self.run / stage}")
        lines.append("settings and paths: valid (nothing was loaded)")
        return "\n".join(lines)

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
        return run_name_hash({"settings": config.model_dump(mode="json") if config is not None else stage,
                              "inputs": self._inputs(stage), "upstream": upstream})

    def _inputs(self, stage: str) -> dict[str, str]:
        from cai.constitution import load_constitution
        from cai.runs.fingerprint import input_fingerprints, model_fingerprint

        config = self.configs.get(stage)
        if config is not None and hasattr(config, "constitution") and hasattr(config, "engine"):
            return input_fingerprints(load_constitution(config.constitution), getattr(config, "templates", None),
                                      getattr(config, "prompts", None), config.engine.model)
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
        await load(STAGES[stage].run)(self, self.configs.get(stage), engine, progress)

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
        if engine is None and any(STAGES[s].uses_engine for s in pending):
            from cai.engines import EngineConfig, create_engine

            settings = EngineConfig(**self.recipe.block("generate").get("engine", {}))
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
            lines.append(_summary_line(results))
        if (self.run / "report" / "index.html").exists():
            lines.append(f"report: {self.run / 'report' / 'index.html'}")
        return "\n".join(lines)


def _summary_line(path: Path) -> str:
    from cai.evaluate.results import EvalResults

    results = EvalResults.read(path)
    harm, refusal = results.harmlessness, results.over_refusal
    return (f"harmlessness win-rate: {harm.win_rate} (95% CI {harm.ci95}); over-refusal base "
            f"{refusal.base.refusal_rate}, trained {refusal.trained.refusal_rate}")




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
        lines = error_lines(e)
        raise ConfigError(f"{resolved}: invalid recipe\n" + "\n".join(lines)) from None
