"""Content fingerprints of a run's inputs, so a resumed run never mixes outputs of old and new inputs.

    input_fingerprints(constitution=c, templates=None, prompts="red-team", model=None)
    # {"constitution": "3f1c...", "templates": "9a0e...", "prompts": "c2d4...", "model": "default"}

A run stores these beside its settings in the manifest; resuming with any of them changed is refused, naming
what changed. Files are hashed whole up to 64 MB; a model's weight files are fingerprinted by size and the
SHA-256 of their first and last MiB (hashing 14 GB of 7B weights on every resume would cost half a minute, and
an edit of the weights that keeps size, head and tail is not a thing that happens by accident).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

WHOLE_FILE_LIMIT = 64 * 2**20
SAMPLE = 2**20


def settings_hash(settings: dict[str, Any], digits: int = 16) -> str:
    """A stable digest of a settings dict (key order does not matter): run manifests record 16 hex digits, default
    run-folder names carry the first 8."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:digits]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= WHOLE_FILE_LIMIT:
            digest.update(f.read())
        else:
            digest.update(str(size).encode())
            digest.update(f.read(SAMPLE))
            f.seek(size - SAMPLE)
            digest.update(f.read(SAMPLE))
    return digest.hexdigest()[:16]


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{path.relative_to(folder)}:{file_digest(path)}\n".encode())
    return digest.hexdigest()[:16]


def path_digest(value: str | Path | None) -> str | None:
    """The fingerprint of a local file or folder; None when `value` names no local path (a hub id, a bundled
    name resolved elsewhere)."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_file():
        return file_digest(path)
    if path.is_dir():
        return folder_digest(path)
    return None


def model_fingerprint(model: str | None) -> str:
    """`default` for the embedded model, the content fingerprint of a local checkpoint or .gguf, else the id."""
    if model in (None, "default"):
        return "default"
    return path_digest(model) or str(model)


def prompts_fingerprint(source: str) -> str:
    from cai.resources import resolve_bundled

    try:
        return path_digest(resolve_bundled(source, "prompts", (".jsonl", ".json", ".csv", ".parquet"))) or source
    except FileNotFoundError:
        return source  # a hub id: its name is all there is to compare


def input_fingerprints(constitution: Any, templates: str | None, prompts: str | None, model: str | None,
                       ) -> dict[str, str]:
    from cai.templating import default_template_dir

    found = {"constitution": constitution.sha256[:16],
             "templates": folder_digest(Path(templates) if templates else default_template_dir()),
             "model": model_fingerprint(model)}
    if prompts is not None:
        found["prompts"] = prompts_fingerprint(prompts)
    return found
