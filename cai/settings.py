"""The base of every cai config model: unknown keys and infinite or NaN numbers are errors, options that act only
beside another are refused without it, and each field's docstring becomes its `--help` text (`cai/cli/options.py`);
and `load_config`, which reads one from a `--config` YAML file with the command line's values on top.

    config = load_config(GenerateConfig, "my-run.yaml", {"engine.dtype": "float32"})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from cai.errors import UsageError
from cai.yaml_safe import YAMLInputError, load_yaml


class ConfigError(UsageError):
    """A config file or override that cannot be used."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)

    def needs(self, options: tuple[str, ...], condition: bool, requirement: str) -> None:
        """Refuse `options` given (in a file or on the command line) while `condition` does not hold: an option
        that would be silently ignored is a mistake the user should hear about."""
        given = [name for name in options if name in self.model_fields_set]
        if given and not condition:
            raise ValueError(f"{', '.join(given)} only act{'s' if len(given) == 1 else ''} with {requirement}")


def error_lines(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem: `  field.path: message` (a check across fields has no path)."""
    lines = []
    for err in error.errors():
        where = prefix + ".".join(map(str, err["loc"]))
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}" if where else f"  {message}")
    return lines


def _set_dotted(target: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        target = target.setdefault(key, {})
    target[leaf] = value


def read_yaml_file(path: str | Path, what: str) -> Any:
    """A YAML file cai reads (a config, a recipe), any problem a `ConfigError` naming the file."""
    from cai.runs.files import InputFileError, read_text

    try:
        return load_yaml(read_text(path, what), str(path))
    except (YAMLInputError, InputFileError) as e:
        raise ConfigError(str(e)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read {what}: {e}") from None


def load_config(model: type[BaseModel], path: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> Any:
    """`model` from a YAML file (optional) with dotted-key overrides (e.g. `engine.dtype`) applied on top."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml_file(path, "config")
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
        lines = error_lines(e)
        raise ConfigError(f"{where}: invalid settings\n" + "\n".join(lines)) from None
