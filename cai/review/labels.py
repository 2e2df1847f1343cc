"""A person's labels: what one records, the file that holds them, and what `cai review merge` accepts.

A label means "a person saw these exact responses, shown this way round, and chose this one", so it carries:

    {"pair_id", "run_id"        the run it belongs to (from the judge run's manifest),
     "content_sha"              the pair as it was queued (prompt, first, second),
     "shown_sha"                what the page showed (prompt, response A, response B, order),
     "order", "choice"          "AB" | "BA"; "A" | "B" | "tie" | "skip",
     "objectives"               with --objectives runs: {"harmless": "A"|"B"|"tie", "helpful": ...},
     "unsafe"                   optional: {"A": true|false, "B": ...} (is that response harmful?),
     "client", "time"}          and an undo is {"pair_id", "run_id", "undo": true, ...}

`classify` keeps a label only when its pair is queued in this run, its run id is this run's, its values are
valid and the pair's content today still has the digest the person saw; every other label is counted by why it
was left out (stale, not queued, other run, bad values, malformed). `labels.jsonl` is written like a run's
records: a torn last line is cut before the next append, every label is fsynced before the page moves on.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from cai.judge.record import JudgeRecord
from cai.runs.records import read_typed
from cai.runs.store import JsonlLog, read_jsonl, read_manifest

CHOICES = ("A", "B", "tie", "skip")
ORDERS = ("AB", "BA")
OBJECTIVE_CHOICES = ("A", "B", "tie")
PROBLEMS = ("stale", "not_queued", "other_run", "bad_values", "malformed")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:24]


def pair_digest(prompt: Any, first: str, second: str) -> str:
    return _digest(["pair", prompt, first, second])


def shown_digest(prompt: Any, response_a: str, response_b: str, order: str) -> str:
    return _digest(["shown", prompt, response_a, response_b, order])


def shown_from(prompt: Any, first: str, second: str, order: str) -> tuple[str, str]:
    return (first, second) if order == "AB" else (second, first)


def run_id(run: Path) -> str:
    """This judge run's identity: its manifest's creation time (a label copied from another run differs)."""
    from cai.runs.store import read_manifest

    manifest = read_manifest(Path(run) / "manifest.json")
    return _digest(["run", manifest.get("created"), manifest.get("kind")])[:16]


def labels_path(run: Path) -> Path:
    return Path(run) / "review" / "labels.jsonl"


def open_label_log(run: Path) -> tuple[JsonlLog, list[dict]]:
    """The labels file opened for appending (torn tail cut, each label fsynced) and the labels already in it."""
    from cai.runs.files import no_symlink

    path = labels_path(run)
    no_symlink(path)
    if path.exists() and not path.is_file():
        from cai.errors import UsageError

        raise UsageError(f"{path} is not a regular file")
    log = JsonlLog(path, fsync_every=1)
    return log, log.open()


def read_labels(run: Path) -> list[Any]:
    """Every line of labels.jsonl as parsed (a line that is not JSON, or is cut, comes back as None for
    `classify` to count as malformed; a torn last line is ignored); refuses a FIFO or device in its place."""
    from cai.runs.files import TooLong, jsonl_lines

    path = labels_path(run)
    if not path.exists():
        return []
    out: list[Any] = []
    lines = list(jsonl_lines(path, "review labels"))
    for i, (_, line) in enumerate(lines):
        if isinstance(line, TooLong):
            out.append(None)
            continue
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except (ValueError, RecursionError):
            if i == len(lines) - 1 and not line.endswith(b"\n"):
                break  # a torn tail: cut before the next label is written
            out.append(None)
    return out


def latest(labels: list[dict]) -> dict[str, dict]:
    """The latest label per pair (an undo removes it); rows without a text `pair_id` are ignored here."""
    out: dict[str, dict] = {}
    for row in labels:
        pair_id = row.get("pair_id")
        if not isinstance(pair_id, str):
            continue
        if row.get("undo") is True:
            out.pop(pair_id, None)
        else:
            out[pair_id] = row
    return out


def _values_ok(label: dict, objectives: list[str]) -> bool:
    if label.get("choice") not in CHOICES or label.get("order") not in ORDERS:
        return False
    given = label.get("objectives")
    if given is not None:
        if not isinstance(given, dict) or set(given) - set(objectives):
            return False
        if any(v not in OBJECTIVE_CHOICES for v in given.values()):
            return False
    unsafe = label.get("unsafe")
    if unsafe is not None:
        if not isinstance(unsafe, dict) or set(unsafe) - {"A", "B"} or \
                any(v is not None and not isinstance(v, bool) for v in unsafe.values()):
            return False
    return True


def classify(labels: list[dict], queue: dict[str, dict], records: dict[str, JudgeRecord], this_run: str,
             objectives: list[str] | None = None) -> tuple[dict[str, dict], Counter]:
    """The labels merge may apply (by pair id), and how many were left out for each reason in `PROBLEMS`."""
    problems: Counter = Counter({name: 0 for name in PROBLEMS})
    kept: dict[str, dict] = {}
    for row in labels:
        if not isinstance(row, dict) or not isinstance(row.get("pair_id"), str):
            problems["malformed"] += 1
            continue
        if row.get("run_id") != this_run:
            problems["other_run"] += 1
            continue
        pair_id = row["pair_id"]
        if pair_id not in queue or pair_id not in records:
            problems["not_queued"] += 1
            continue
        if row.get("undo") is True:
            kept.pop(pair_id, None)
            continue
        needed = ("choice", "order", "content_sha", "shown_sha")
        if any(not isinstance(row.get(k), str) for k in needed):
            problems["malformed"] += 1
            continue
        if not _values_ok(row, objectives or []):
            problems["bad_values"] += 1
            continue
        record = records[pair_id]
        a, b = shown_from(record.prompt, record.first, record.second, row["order"])
        if row["content_sha"] != pair_digest(record.prompt, record.first, record.second) or \
                row["shown_sha"] != shown_digest(record.prompt, a, b, row["order"]):
            problems["stale"] += 1
            kept.pop(pair_id, None)
            continue
        kept[pair_id] = row
    return kept, problems


def answer_p_first(answer: str, order: str) -> float | None:
    """An A/B/tie answer as p(first response is better), given how the pair was shown; None for a skip."""
    if answer == "tie":
        return 0.5
    if answer not in ("A", "B"):
        return None
    return 1.0 if (answer == "A") == (order == "AB") else 0.0


def human_values(label: dict, objectives: list[str]) -> dict[str, Any] | None:
    """What a kept label says, in the first response's terms: p_first, each objective's p_first (the person's
    answer to that objective's question; the main choice where the page asked one question), and unsafe_first /
    unsafe_second where the person said. None for a skip."""
    order = label["order"]
    if objectives and label.get("objectives"):
        per = {o: answer_p_first(label["objectives"][o], order) for o in objectives if o in label["objectives"]}
        p_first = per.get(objectives[0])
    else:
        p_first = answer_p_first(label["choice"], order)
        per = {o: p_first for o in objectives}
    if p_first is None:
        return None
    unsafe = label.get("unsafe") or {}
    shown_first = "A" if order == "AB" else "B"
    shown_second = "B" if order == "AB" else "A"
    to_float = lambda v: None if v is None else float(v)  # noqa: E731
    return {"p_first": p_first, "objectives": per, "unsafe_first": to_float(unsafe.get(shown_first)),
            "unsafe_second": to_float(unsafe.get(shown_second))}


def review_overrides(run: Path) -> tuple[dict[str, dict], set[str], dict[str, Any]] | None:
    """For the export: what each kept human label says (`review_labels.human_values`, by pair), the unreviewed
    pairs to drop, and the card's summary with the labels left out by reason; None when no merge was asked for."""
    if not (run / "review" / "merge.json").exists():
        return None
    settings = json.loads((run / "review" / "merge.json").read_text())
    selection = json.loads((run / "review" / "selection.json").read_text())
    queue = {row["pair_id"]: row for row in read_jsonl(run / "review" / "queue.jsonl")}
    records = {r.id: r for r in read_typed(run, JudgeRecord) if r.status == "ok"}
    objectives = list(read_manifest(run / "manifest.json").get("config", {}).get("objectives") or [])
    kept, problems = classify(read_labels(run), queue, records, run_id(run), objectives)
    human = {pid: values for pid, label in kept.items() if (values := human_values(label, objectives)) is not None}
    ranking = selection["ranking"]
    least_trusted = ranking[: math.floor(settings["drop_unreviewed_below"] * len(ranking) + 0.5)]
    drop = {pid for pid in least_trusted if pid not in human}
    summary = {"reviewed": len(human), "skipped": len(kept) - len(human), "budget": selection["budget"],
               "selected": selection["selected"], **settings, "dropped_unreviewed": len(drop),
               "left_out": dict(problems)}
    return human, drop, summary
