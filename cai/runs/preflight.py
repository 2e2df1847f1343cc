"""Checks of what a run will read, made before any engine or model starts: every path a config names exists and is
of the right kind, and every model string can be resolved without loading it.

    problems = check_config(config, produced={"outputs/run/sft"})   # [] when all is well
    cai run recipes/quickstart.yaml --dry-run                         # the whole recipe, then the plan

A value is looked at by its field name: `constitution` (bundled name or file), `prompts`/`harmful_prompts`/...
(bundled set, file, datasets folder, or a hub id, which is noted, not refused), `templates` (a folder), models
(`model`, `reward_model`, ...: the embedded default, a checkpoint folder with config.json, a .gguf file,
`openai/<name>`, or a hub id), and data files. Paths that an earlier stage of the same recipe writes (`produced`)
are accepted before they exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

MODEL_FIELDS = ("model", "reward_model", "cost_model", "reference_model", "trained", "base", "policy_model")
PROMPT_FIELDS = ("prompts", "harmful_prompts", "benign_prompts")
DATA_FIELDS = ("data", "eval_data", "source", "judge_check")
PROMPT_FIELDS_BY_CONFIG = {"OnlineDPOConfig": ("data",), "PPOConfig": ("data",)}
"""Configs whose `data` is a prompt set (bundled names allowed), not preference data."""


def _looks_local(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or value.endswith((".gguf", ".jsonl", ".json", ".csv",
                                                                          ".parquet", ".yaml", ".yml"))


def _under(path: Path, produced: Iterable[Path]) -> bool:
    resolved = path.expanduser().resolve()
    return any(resolved == p or p in resolved.parents for p in produced)


def check_model(value: str | None, field: str, produced: Iterable[Path] = ()) -> str | None:
    """A problem with a model string, or None (hub ids pass: whether the hub answers is known only later)."""
    if value is None or value in ("default",) or value.startswith("openai/"):
        return None
    path = Path(value).expanduser()
    if _under(path, produced):
        return None
    if path.suffix == ".gguf":
        return None if path.is_file() else f"{field}: GGUF file {value} not found"
    if path.exists():
        if not path.is_dir():
            return f"{field}: {value} is a file, not a checkpoint folder"
        if not (path / "config.json").is_file():
            return f"{field}: {value} is not a checkpoint folder (no config.json)"
        return None
    if _looks_local(value) or value.count("/") > 1:
        return f"{field}: {value} does not exist (and is not a hub id)"
    return None


def check_source(value: str | None, field: str, bundled: str | None, produced: Iterable[Path] = ()) -> str | None:
    """A problem with a prompt set, data file or folder, or None."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if _under(path, produced):
        return None
    if path.exists():
        from cai.runs.files import regular_or_folder

        return regular_or_folder(path, field)
    if bundled is not None:
        from cai.resources import resolve_bundled

        try:
            resolve_bundled(value, bundled, (".jsonl", ".json", ".csv", ".parquet"))
            return None
        except FileNotFoundError:
            pass
    if _looks_local(value) or value.count("/") > 1:
        return f"{field}: {value} does not exist"
    return None  # a hub dataset id


def check_config(config: BaseModel, produced: Iterable[Path] = (), where: str = "") -> list[str]:
    """Every problem with the paths and models `config` names (nested engine configs included)."""
    produced = [Path(p).expanduser().resolve() for p in produced]
    prefix = f"{where}." if where else ""
    problems: list[str] = []
    prompt_like = PROMPT_FIELDS + PROMPT_FIELDS_BY_CONFIG.get(type(config).__name__, ())
    for name in type(config).model_fields:
        value = getattr(config, name)
        field = prefix + name
        if isinstance(value, BaseModel):
            problems += check_config(value, produced, field)
        elif name == "constitution" and isinstance(value, str):
            problems += _constitution_problem(value, field)
        elif name in MODEL_FIELDS and (value is None or isinstance(value, str)):
            problems.append(check_model(value, field, produced))
        elif name in MODEL_FIELDS and isinstance(value, list):  # several (GRPO's reward models)
            problems += [check_model(v, f"{field}[{i}]", produced) for i, v in enumerate(value)]
        elif name in prompt_like and isinstance(value, str):
            problems.append(check_source(value, field, "prompts", produced))
        elif name in DATA_FIELDS and isinstance(value, str):
            problems.append(check_source(value, field, "prompts" if name == "judge_check" else None, produced))
    return [p for p in problems if p]


def _constitution_problem(value: str, field: str) -> list[str]:
    from cai.constitution import load_constitution
    from cai.errors import CaiError

    try:
        load_constitution(value)
    except CaiError as e:
        return [f"{field}: {e}"]
    return []


def check_scorer(value: str | None, flag: str) -> str | None:
    """A reward or cost model must be a sequence classifier with one output (a `cai train rm|cost` folder, an
    ensemble of them, or any such checkpoint): a causal LM would be scored through a freshly initialised head."""
    import json

    if value is None or value.startswith("openai/"):
        return None if value is None else f"{flag}: {value} is a served model; a reward model must be a local folder"
    folder = Path(value).expanduser()
    if (folder / "ensemble.json").is_file():
        try:
            members = json.loads((folder / "ensemble.json").read_text())["members"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"{flag}: {value}/ensemble.json is not a cai ensemble manifest"
        return next((p for m in members if (p := check_scorer(str(folder / m), flag))), None)
    if not (folder / "config.json").is_file():
        return f"{flag}: {value} is not a model folder (no config.json)"
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        return f"{flag}: {value}/config.json cannot be read ({e})"
    architectures = config.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return (f"{flag}: {value} is a {', '.join(map(str, architectures)) or 'model of unknown kind'}, not a reward "
                "model (a sequence classifier with a trained one-output head); train one with `cai train rm` "
                "(or `cai train cost`)")
    labels = config.get("num_labels") or len(config.get("id2label") or {}) or 1
    if labels != 1:
        return f"{flag}: {value} has {labels} outputs; a reward or cost model has one"
    return None


def check_training(config: BaseModel, produced: Iterable[Path] = ()) -> list[str]:
    """`check_config` plus what a trainer needs of its reward and cost models."""
    problems = check_config(config, produced)
    for name, flag in (("reward_model", "--reward-model"), ("cost_model", "--cost-model")):
        value = getattr(config, name, None)
        for one in value if isinstance(value, list) else [value]:
            if one is not None and not _under(Path(one), [Path(p).expanduser().resolve() for p in produced]):
                problems.append(check_scorer(one, flag))
    judge = getattr(config, "judge", None)
    if isinstance(judge, dict) and "constitution" in judge:  # online DPO's judge settings
        problems += _constitution_problem(str(judge["constitution"]), "judge.constitution")
    return [p for p in problems if p]


def describe_model(value: Any) -> str:
    return "the embedded default" if value in (None, "default") else str(value)
