"""Run configuration: pydantic models loaded from a `--config` YAML file, with CLI values overriding it.

    cai generate --config my-run.yaml --rounds 2 --temperature 0.5

Every field has a default; unknown keys are errors. `compat_settings` picks the fields that shape the outputs, so
a rerun into the same run folder resumes only when they match.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cai.engines import EngineConfig
from cai.yaml_safe import YAMLInputError, load_yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used."""


class StageTokens(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
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


class GenerateConfig(BaseModel):
    """Settings of `cai generate` (the SL-CAI critique -> revision stage)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    constitution: str = "harmless"
    """Bundled constitution name or path to a YAML file."""
    prompts: str = "red-team"
    """Bundled prompt set, a file (.jsonl/.json/.csv/.parquet), a datasets folder or a hub id."""
    prompt_column: str | None = None
    """Column holding the prompt; found automatically when unset."""
    split: str = "train"
    """Split to read from a datasets folder or hub dataset."""
    limit: int | None = Field(default=None, ge=1)
    """Use only the first N prompts."""
    rounds: int = Field(default=1, ge=0)
    """Critique -> revision rounds per prompt."""
    few_shot: int | None = Field(default=None, ge=0)
    """How many of the constitution's few-shot examples to prepend (all when unset)."""
    seed: int = 0
    """Seeds principle sampling (per prompt) and the engine."""
    temperature: float = Field(default=0.7, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_new_tokens: StageTokens = Field(default_factory=StageTokens)
    early_stop: bool = False
    """Stop a chain when its critique says there is nothing to fix (matched by `early_stop_patterns`)."""
    early_stop_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_EARLY_STOP))
    """Case-insensitive regular expressions tried against each critique."""
    max_failure_rate: float = Field(default=0.25, ge=0, le=1)
    """End the run non-zero when more than this share of samples fail."""
    concurrency: int = Field(default=256, ge=1)
    """Chains in flight at once; the engine batches across them."""
    output_dir: str = "outputs"
    run_name: str | None = None
    """Run folder name; by default derived from the constitution, model and a hash of the settings."""
    templates: str | None = None
    """Folder of stage templates replacing the bundled `prompts/templates`."""
    engine: EngineConfig = Field(default_factory=EngineConfig)

    @field_validator("early_stop_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"early_stop_patterns: {pattern!r} is not a regular expression ({e})") from None
        return patterns

    @field_validator("templates")
    @classmethod
    def _templates_exist(cls, folder: str | None) -> str | None:
        return check_template_folder(folder)


def check_template_folder(folder: str | None) -> str | None:
    """A custom template folder must exist and be a folder (checked before any engine starts)."""
    if folder is not None and not Path(folder).expanduser().is_dir():
        raise ValueError(f"templates: {folder} is not a folder (it should hold the .j2 files replacing "
                         "prompts/templates)")
    return folder


# Fields that do not change what a sample's record holds; a resumed run may change them.
_NOT_COMPAT = {"limit", "concurrency", "output_dir", "run_name", "max_failure_rate"}
_ENGINE_NOT_COMPAT = {"gpu_memory_utilization", "tensor_parallel_size", "enforce_eager", "extra", "base_urls", "openai"}


def compat_settings(config: BaseModel) -> dict[str, Any]:
    data = config.model_dump(mode="json", exclude=_NOT_COMPAT)  # as it reads back from the manifest
    for key in ("engine", "policy_engine"):
        if data.get(key):
            data[key] = {k: v for k, v in data[key].items() if k not in _ENGINE_NOT_COMPAT}
    return data


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _set_dotted(target: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        target = target.setdefault(key, {})
    target[leaf] = value


def load_config(model: type[BaseModel], path: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> Any:
    """`model` from a YAML file (optional) with dotted-key overrides (e.g. `engine.dtype`) applied on top."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = load_yaml(Path(path).read_text(encoding="utf-8"), str(path))
        except YAMLInputError as e:
            raise ConfigError(str(e)) from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data = loaded or {}
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, key, value)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        where = f"{path}" if path else "options"
        lines = [f"  {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{where}: invalid settings\n" + "\n".join(lines)) from None
