"""What one line of a generate run's records.jsonl holds: the schema the export, the report and the judge's pair
strategies read by attribute.

    records = read_typed(run, GenerateRecord)     # cai.runs.records
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cai.runs.records import Record


class Turn(BaseModel):
    """One generation of a chain: the initial response, a critique or a revision."""

    model_config = ConfigDict(extra="allow")

    stage: str
    """`initial`, `critique` or `revision`."""
    round: int = 0
    principle_id: str | None = None
    request: str | None = None
    """The critique or revision request (None for the initial response)."""
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = 0
    principle_rule: str | None = None
    """How a critique's principle was drawn: `tags` (matched the prompt's tags) or `weights`."""


class GenerateRecord(Record):
    """A chain: the prompt, the initial response, each critique and revision, the final revision."""

    prompt: list[dict[str, str]] = Field(default_factory=list)
    initial: str = ""
    final: str = ""
    turns: list[Turn] = Field(default_factory=list)
    principle_ids: list[str] = Field(default_factory=list)
    rounds_done: int = 0
    stopped_early: bool = False
    tags: list[str] = Field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    degenerate: list[str] = Field(default_factory=list)
    """Why the final revision is flagged (empty, copies a few-shot example, repeats itself, restates the request)."""
    raw: Any = None


class GenerateStats(BaseModel):
    """`export/stats.json` of a generate run (written by the export, read by the report)."""

    model_config = ConfigDict(extra="allow")

    samples: int
    errors: int
    degenerate: int
    degenerate_reasons: dict[str, int] = Field(default_factory=dict)
    dropped_degenerate: bool = False
