"""One resume rule for every kind of run: a run records its settings and the fingerprints of what it reads; a
resume compares them and refuses any change outside its kind's short list of settings that may change, naming
what changed. generate and judge keep this in `manifest.json`, the trainers in `train_manifest.json`, online DPO in
`online_manifest.json`, ensembles in `ensemble.json`; all carry the same fields:

    {"kind": "dpo", "settings": {...}, "inputs": {"data": "3f1c...", "model": "default"}, "settings_hash": "..."}

    fields = resume_fields("dpo", settings, inputs)
    check_resume(stored, fields, "--out outputs/dpo")   # RunConflictError naming e.g. `settings.beta`
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.errors import CaiError
from cai.runs.fingerprint import settings_hash


class RunConflictError(CaiError, RuntimeError):
    """The run folder holds a run made with other settings."""


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ (one level into nested settings such as `inputs`)."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict) and not prefix:
                changed += _differences(a, b, f"{key}.")
            else:
                changed.append(prefix + key)
    return changed


MAY_CHANGE = ("max_steps", "epochs", "save_steps", "save_total_limit", "eval_steps", "logging_steps", "report_to",
              "progress", "resume", "overwrite", "out")
"""Trainer settings a resume may change: how long to go on, how often to save, evaluate and log, where progress
shows. Everything else (data, models, losses, learning rates, seeds, limits, λ settings...) must match."""


def resume_fields(kind: str, settings: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "settings": settings, "inputs": inputs,
            "settings_hash": settings_hash({"kind": kind, "settings": settings, "inputs": inputs})}


def check_resume(stored: dict[str, Any], fields: dict[str, Any], where: str, hint: str = "") -> None:
    """Refuse to continue a run whose recorded kind, settings or inputs differ from `fields`."""
    if "settings" not in stored or "inputs" not in stored:
        raise RunConflictError(f"{where} holds a run recorded without its settings (an older cai): it cannot be "
                               f"checked for a safe resume; {hint or 'use another output folder, or --overwrite'}")
    if stored.get("kind") not in (None, fields["kind"]):
        raise RunConflictError(f"{where} holds a `{stored.get('kind')}` run, not a `{fields['kind']}` run")
    old = {"settings": stored["settings"], "inputs": stored["inputs"]}
    new = {"settings": fields["settings"], "inputs": fields["inputs"]}
    if old != new:
        changed = _nested_differences(old, new)
        raise RunConflictError(f"{where} holds a run made with other settings or inputs (changed: "
                               f"{', '.join(changed)}); resuming would mix the two. {hint}".strip())


def _nested_differences(old: dict, new: dict) -> list[str]:
    return [f"{top}.{name}" for top in ("settings", "inputs")
            for name in _differences(old[top] or {}, new[top] or {})]


def data_fingerprint(value: str | None) -> str | None:
    """A data source by content: a run folder by its export, a local file or folder, a bundled prompt set; else
    the name (a hub id)."""
    from cai.runs.fingerprint import path_digest

    if value is None:
        return None
    path = Path(value).expanduser()
    for export in ("export/train.jsonl", "export/sft.jsonl"):
        if (path / "manifest.json").is_file() and (path / export).is_file():
            return path_digest(path / export)
    digest = path_digest(path)
    if digest is not None:
        return digest
    from cai.resources import resolve_bundled

    try:
        return path_digest(resolve_bundled(value, "prompts", (".jsonl",))) or value
    except FileNotFoundError:
        return value
