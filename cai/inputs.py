"""Prompt sets: JSONL, JSON, CSV, Parquet, a `datasets` folder, a hub id or a bundled set by name.

    from cai.inputs import load_prompts
    items = load_prompts("red-team")                    # prompts/red-team.jsonl
    items = load_prompts("hh.jsonl", column="chosen")   # Anthropic HH transcripts become chat messages

Each row becomes a `PromptItem` with chat messages ending in a user turn, or an `InputProblem` (bad line, empty
prompt, undecodable bytes) that the run records as an error while every other row goes on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.errors import UsageError
from cai.resources import resolve_bundled

PROMPT_COLUMNS = ("messages", "prompt", "text", "question", "instruction", "transcript", "chosen")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


class InputError(UsageError):
    """The prompt source as a whole cannot be read (missing file or column, unknown format)."""


@dataclass
class PromptItem:
    id: str
    messages: list[dict[str, str]]
    tags: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    row: dict[str, Any] = field(default_factory=dict, repr=False)
    """The whole source row, for readers that need other columns (e.g. pairs files)."""


@dataclass
class InputProblem:
    id: str
    reason: str
    raw: str = ""


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
    """`\\n\\nHuman: ... \\n\\nAssistant: ...` into chat messages (the speaker markers must start a paragraph)."""
    text = text if text.startswith("\n\n") else "\n\n" + text
    parts = _HH_TURN.split(text)
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return messages


def to_messages(value: Any) -> list[dict[str, str]]:
    """A prompt value (string, HH transcript or message list) as messages that end with a user turn."""
    if isinstance(value, str):
        is_transcript = value.lstrip().startswith("Human:") or "\n\nHuman:" in value
        messages = parse_hh_transcript(value.lstrip()) if is_transcript else [{"role": "user", "content": value}]
    elif isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    else:
        raise ValueError(f"expected a string or a list of {{role, content}} messages, got {type(value).__name__}")
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()  # a transcript's last answer is what we regenerate
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("no user turn to answer")
    if not messages[-1]["content"].strip():
        raise ValueError("the prompt is empty or whitespace")
    return messages


def content_id(messages: list[dict[str, str]]) -> str:
    return hashlib.sha1(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]


def _jsonl_rows(path: Path, source: str) -> Iterable[tuple[str, dict | InputProblem]]:
    from cai.runs.files import TooLong, jsonl_lines, max_line_bytes

    for number, raw_line in jsonl_lines(path, "prompts"):
        where = f"{source}:{number}"
        if isinstance(raw_line, TooLong):
            yield where, InputProblem(where, raw_line.reason(max_line_bytes()), raw_line.head[:200].decode("utf-8", "replace"))
            continue
        if not raw_line.strip():
            continue
        try:
            row = json.loads(raw_line.decode("utf-8"))
        except UnicodeDecodeError as e:
            yield where, InputProblem(where, f"invalid UTF-8 ({e.reason} at byte {e.start})", repr(raw_line[:200]))
            continue
        except json.JSONDecodeError as e:
            yield where, InputProblem(where, f"invalid JSON: {e.msg}", raw_line[:200].decode("utf-8", "replace"))
            continue
        except RecursionError:
            yield where, InputProblem(where, "JSON nested too deeply", raw_line[:200].decode("utf-8", "replace"))
            continue
        yield where, row if isinstance(row, dict) else {"prompt": row}


def datasets_folder_rows(path: Path, split: str) -> list[dict]:
    """The rows of a `datasets.save_to_disk` folder (a `DatasetDict` gives its `split`)."""
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise InputError(f"{path}: no split {split!r} (has {', '.join(loaded)})")
        loaded = loaded[split]
    return loaded.to_list()


def _table_rows(path: Path, split: str) -> list[dict]:
    from cai.runs.files import regular_file

    suffix = path.suffix.lower()
    if not path.is_dir():
        regular_file(path, "prompts")
    if suffix == ".csv":
        try:
            text = path.read_text(encoding="utf-8")  # a regular file (checked above)
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        return list(csv.DictReader(io.StringIO(text)))
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON list of rows")
        return [r if isinstance(r, dict) else {"prompt": r} for r in data]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.is_dir():
        return datasets_folder_rows(path, split)
    raise InputError(f"{path}: unknown prompt format (use .jsonl, .json, .csv, .parquet or a datasets folder)")


def _hub_rows(name: str, split: str) -> list[dict]:
    try:
        import datasets

        return datasets.load_dataset(name, split=split).to_list()
    except Exception as e:
        raise InputError(f"{name!r} is not a file, a bundled prompt set, or a reachable hub dataset ({e})") from None


def load_prompts(source: str | Path, column: str | None = None, split: str = "train",
                 limit: int | None = None) -> list[PromptItem | InputProblem]:
    """Read a prompt set; see the module docstring for the accepted sources."""
    try:
        path = resolve_bundled(source, "prompts", (".jsonl",))
    except FileNotFoundError:
        path = None
    if path is not None and path.suffix.lower() == ".jsonl":
        rows = list(_jsonl_rows(path, str(path)))
    elif path is not None:
        rows = [(f"{path}:{i + 1}", r) for i, r in enumerate(_table_rows(path, split))]
    else:
        rows = [(f"{source}:{i + 1}", r) for i, r in enumerate(_hub_rows(str(source), split))]
    dict_rows = [r for _, r in rows if isinstance(r, dict)]
    if not rows:
        raise InputError(f"{source}: the prompt set is empty")
    if column is None and dict_rows:
        column = next((c for c in PROMPT_COLUMNS if c in dict_rows[0]), None)
        if column is None:
            raise InputError(f"{source}: no prompt column found (looked for {', '.join(PROMPT_COLUMNS)}; "
                             f"columns: {', '.join(dict_rows[0])}); pass --prompt-column")
    elif dict_rows and all(column not in r for r in dict_rows):
        raise InputError(f"{source}: column {column!r} not found (columns: {', '.join(dict_rows[0])})")

    items: list[PromptItem | InputProblem] = []
    seen: Counter[str] = Counter()
    for where, row in rows:
        if isinstance(row, InputProblem):
            items.append(row)
            continue
        try:
            messages = to_messages(row.get(column))
        except ValueError as e:
            items.append(InputProblem(where, f"column {column!r}: {e}", str(row.get(column))[:200]))
            continue
        item_id = str(row["id"]) if row.get("id") not in (None, "") else content_id(messages)
        seen[item_id] += 1
        if seen[item_id] > 1:
            item_id = f"{item_id}~{seen[item_id]}"  # duplicates stay distinct and stable
        tags = row.get("tags") or ([row["category"]] if row.get("category") else [])
        if isinstance(tags, str):
            tags = [t.strip() for t in tags.split(",") if t.strip()]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            items.append(InputProblem(where, f"`tags` must be a list of strings or a comma-separated string, "
                                             f"got {str(tags)[:80]}", str(row)[:200]))
            continue
        meta = {k: v for k, v in row.items() if k not in (column, "id", "tags") and isinstance(v, str | int | float | bool)}
        items.append(PromptItem(item_id, messages, list(tags), meta, row))
    return items[:limit] if limit is not None else items
