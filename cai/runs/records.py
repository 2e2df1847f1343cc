"""Typed run records: what every line of a run's `records.jsonl` is, with one error shape, and one reader.

    records = read_records(run_dir)              # the latest record of each id, in prompt-set order
    save(Record.error(item_id, index, "input", "the prompt is empty"))

A record is `{"id", "index", "status", ...}`: `ok` (the stage's payload beside these fields), `invalid` (judged,
but no label: `reason` says why) or `error` with `error: {"kind": "input" | "sample", "message"}`. Input errors
are final; sample errors are retried on the next run. Judge runs written before this shape stored errors as
`error_kind` and `reason`; they read as the same `RecordError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from cai.runs.store import latest_by_id, read_jsonl

ErrorKind = Literal["input", "sample"]
R = TypeVar("R", bound="Record")


class RecordError(BaseModel):
    kind: ErrorKind
    """`input`: the row itself is unusable (final); `sample`: this attempt failed (retried on the next run)."""
    message: str


class Record(BaseModel):
    """One line of `records.jsonl`; stage payload fields ride along as extras."""

    model_config = ConfigDict(extra="allow")

    id: str
    index: int = 0
    """Position in the stage's input order (exports follow it, whatever the completion order)."""
    status: Literal["ok", "invalid", "error"]
    error: RecordError | None = None

    @classmethod
    def error_record(cls, item_id: str, index: int, kind: ErrorKind, message: str, **extra: Any) -> Record:
        return cls(id=item_id, index=index, status="error", error=RecordError(kind=kind, message=message), **extra)

    @classmethod
    def parse(cls: type[R], data: dict[str, Any]) -> R:
        """A stored record, including the judge's older error shape (`error_kind`, `reason`)."""
        if data.get("status") == "error" and "error" not in data and "error_kind" in data:
            data = {**data, "error": {"kind": data["error_kind"], "message": data.get("reason") or ""}}
            data.pop("error_kind"), data.pop("reason", None)
        return cls.model_validate(data)

    @property
    def done(self) -> bool:
        """Final: completed, judged invalid, or an input error; sample errors are retried."""
        return self.status != "error" or (self.error is not None and self.error.kind == "input")

    def dump(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        if data["error"] is None:
            del data["error"]
        return data


def read_typed(run_dir: str | Path, record: type[R]) -> list[R]:
    """The latest record of each id of a run as `record` objects (a stage's record class), in input order."""
    path = Path(run_dir) / "records.jsonl"
    latest = latest_by_id(list(read_jsonl(path, ("id", "status"))))
    parsed = [record.parse(r) for r in latest.values()]
    return sorted(parsed, key=lambda r: (r.index, r.id))


def read_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """The latest record of each id of a run, in input order, as plain dicts (one shape for errors)."""
    path = Path(run_dir) / "records.jsonl"
    latest = latest_by_id(list(read_jsonl(path, ("id", "status"))))
    records = [Record.parse(r).dump() for r in latest.values()]
    return sorted(records, key=lambda r: (r.get("index", 0), r["id"]))
