"""Command-line options derived from the config models: each pydantic field becomes a flag whose help is the
field's docstring and default, so `--help`, config files and the code never disagree.

    add_settings(parser, GenerateConfig, skip={"engine"}, flags={"max_new_tokens": None})
    config = load_config(GenerateConfig, args.config, overrides(args))
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from pydantic import BaseModel

CLI_ONLY = {"command", "action", "config", "no_progress", "max_new_tokens_all", "file", "report_out", "fit_out"}
"""Namespace entries that are not config fields."""


def _help(field: Any) -> str:
    text = (field.description or "").replace("%", "%%").strip()
    if not field.is_required():
        default = field.get_default(call_default_factory=True)
        if not isinstance(default, BaseModel):
            text += f" (default: {default})"
    return text.strip()


def _scalar(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return next((a for a in args if a in (int, float, str)), str)


def add_settings(parser: argparse.ArgumentParser, model: type[BaseModel], *, skip: set[str] = frozenset(),
                 flags: dict[str, str | None] | None = None, prefix: str = "") -> None:
    """A flag for each field of `model` (nested models are left to the caller); `flags` renames a field's flag,
    or with None leaves it out."""
    flags = flags or {}
    for name, field in model.model_fields.items():
        if name in skip or flags.get(name, "") is None:
            continue
        kind = field.annotation
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        optional_model = origin in (typing.Union, types.UnionType) and any(
            isinstance(a, type) and issubclass(a, BaseModel) for a in args)
        if (isinstance(kind, type) and issubclass(kind, BaseModel)) or optional_model or origin is dict:
            continue
        flag = flags.get(name) or "--" + name.replace("_", "-")
        options: dict[str, Any] = {"dest": prefix + name, "help": _help(field) or name.replace("_", " ")}
        if kind is bool or (origin in (typing.Union, types.UnionType) and set(args) == {bool, type(None)}):
            options.update(action=argparse.BooleanOptionalAction, default=None)
        elif origin is list:
            inner = typing.get_args(args[0]) if typing.get_origin(args[0]) is typing.Literal else None
            options.update(nargs="+", choices=inner or None)
        elif origin is tuple:
            options.update(nargs=len(args), type=args[0], metavar=("LOW", "HIGH") if len(args) == 2 else None)
        elif origin is typing.Literal:
            options.update(choices=list(args))
        else:
            options.update(type=_scalar(kind))
        parser.add_argument(flag, **options)


def engine_options(parser: argparse.ArgumentParser, prefix: str = "engine", title: str = "engine") -> None:
    """The engine's flags (`--model`, `--dtype`, `--base-url` ...), filled into `<prefix>.<field>`."""
    from cai.engines import EngineConfig, OpenAISettings

    group = parser.add_argument_group(title)
    add_settings(group, EngineConfig, prefix=f"{prefix}.",
                 flags={"extra": None, "backend": "--engine", "base_urls": None, "seed": None})
    fields = EngineConfig.model_fields
    group.add_argument("--engine-arg", dest=f"{prefix}.extra", action="append", metavar="KEY=VALUE",
                       help=f"{fields['extra'].description} Repeatable; the value is read as YAML.")
    group.add_argument("--base-url", dest=f"{prefix}.base_urls", action="append", metavar="URL",
                       help=f"{fields['base_urls'].description} Repeat for several servers.")
    add_settings(group, OpenAISettings, prefix=f"{prefix}.openai.",
                 flags={k: None for k in OpenAISettings.model_fields
                        if k not in ("api_key_env", "api_key_file", "max_concurrency_per_server")})


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line as dotted config keys (`engine.model`, `max_new_tokens.initial`)."""
    from cai.errors import UsageError
    from cai.yaml_safe import load_yaml

    out = {k: v for k, v in vars(args).items() if k not in CLI_ONLY and not k.startswith("_") and v is not None}
    if getattr(args, "max_new_tokens_all", None) is not None:
        for stage in ("initial", "critique", "revision"):
            out.setdefault(f"max_new_tokens.{stage}", args.max_new_tokens_all)
    for key in [k for k in out if k.endswith(".extra")]:
        extra = {}
        for item in out[key]:
            name, sep, value = item.partition("=")
            if not sep:
                raise UsageError(f"--engine-arg expects KEY=VALUE, got {item!r}")
            extra[name.strip()] = load_yaml(value, f"--engine-arg {name.strip()}")
        out[key] = extra
    return out


def config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of settings; options given here override it")


def finish(parser: argparse.ArgumentParser, run: Any, engine: bool = True) -> None:
    """The tail every run command shares: `--no-progress`, the engine's flags and the function to call."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    if engine:
        engine_options(parser)
    parser.set_defaults(_run=run)
