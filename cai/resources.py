"""Where the bundled data lives: `constitutions/` and `prompts/`, in a source checkout or an installed wheel.

A wheel carries them under `cai/_data/`; a source checkout (editable install) has them at the repository root.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """The bundled folder `name` (`constitutions` or `prompts`)."""
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"bundled folder {name!r} not found next to the cai package ({_PACKAGE_DIR})")


def resolve_bundled(name_or_path: str | Path, folder: str, suffixes: tuple[str, ...]) -> Path:
    """A path as given when it exists, else a bundled file `folder/<name><suffix>`."""
    path = Path(name_or_path)
    if path.exists():
        return path
    bundled = data_dir(folder)
    for suffix in ("", *suffixes):
        candidate = bundled / f"{name_or_path}{suffix}"
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in bundled.iterdir() if p.suffix in suffixes)
    raise FileNotFoundError(f"{name_or_path!r} is neither a file nor a bundled {folder} entry (bundled: {', '.join(known)})")
