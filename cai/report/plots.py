"""What every report section shares: matplotlib without a display, saving a figure, a run's records."""

from __future__ import annotations

import html
from pathlib import Path

from cai.runs.records import R, read_typed


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, folder: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(folder / name, dpi=110)
    plt().close(fig)
    return name


def records(path: Path, record: type[R]) -> list[R]:
    """A stage's records (its record class), or none when the stage did not run."""
    return read_typed(path.parent, record) if path.exists() else []


def fmt(value: object) -> str:
    """A number as the report prints it (two decimals), "n/a" for none, text as it is."""
    return value if isinstance(value, str) else "n/a" if value is None else f"{value:.2f}"


def section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"
