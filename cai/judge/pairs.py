"""Pairs for the AI judge: two responses to the same prompt, built by one of several strategies.

- `revision-vs-initial`: a generate run's final revision against its initial response (public CAI recipes);
- `revisions`: every revision of a generate run against the response before it;
- `file`: an external file of (prompt, response_a, response_b), or labelled (prompt, chosen, rejected);
- `sampled`: K responses per prompt sampled from a policy model, compared pairwise (built in `cai.judge.run`,
  which generates the responses first).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.generate.record import GenerateRecord
from cai.inputs import InputError, InputProblem, load_prompts


@dataclass
class Pair:
    id: str
    prompt: list[dict[str, str]]
    first: str
    second: str
    meta: dict[str, Any] = field(default_factory=dict)
    """Where the two responses came from (e.g. {"first": "final", "second": "initial", "source_id": ...})."""

    @property
    def digest(self) -> str:
        """What is judged (the conversation and both responses): a resumed run re-judges a pair whose id is
        unchanged but whose content was edited."""
        content = json.dumps([self.prompt, self.first, self.second], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(content.encode()).hexdigest()[:16]


def _generate_records(run_dir: Path) -> list[GenerateRecord]:
    records_path = run_dir / "records.jsonl"
    if not records_path.exists():
        raise InputError(f"{run_dir} is not a `cai generate` run folder (no records.jsonl)")
    from cai.runs.records import read_typed

    return [r for r in read_typed(run_dir, GenerateRecord) if r.status == "ok"]


def revision_vs_initial(run_dir: Path) -> tuple[list[Pair], int]:
    """One pair per sample whose final text differs from its initial one; also returns how many were identical."""
    pairs, identical = [], 0
    for r in _generate_records(run_dir):
        if r.final.strip() == r.initial.strip():
            identical += 1
            continue
        pairs.append(Pair(f"{r.id}/final-vs-initial", r.prompt, r.final, r.initial,
                          {"first": "final", "second": "initial", "source_id": r.id,
                           "principle_ids": r.principle_ids, "tags": r.tags,
                           "critiques": [t.text for t in r.turns if t.stage == "critique"]}))
    return pairs, identical


def successive_revisions(run_dir: Path) -> tuple[list[Pair], int]:
    """Each revision against the response it revised."""
    pairs, identical = [], 0
    for r in _generate_records(run_dir):
        previous, previous_name, critique = r.initial, "initial", None
        for turn in r.turns:
            if turn.stage == "critique":
                critique = turn.text
            if turn.stage != "revision":
                continue
            name = f"revision{turn.round}"
            if turn.text.strip() == previous.strip():
                identical += 1
            else:
                pairs.append(Pair(f"{r.id}/{name}-vs-{previous_name}", r.prompt, turn.text, previous,
                                  {"first": name, "second": previous_name, "source_id": r.id,
                                   "principle_id": turn.principle_id, "tags": r.tags,
                                   "critiques": [critique] if critique else []}))
            previous, previous_name = turn.text, name
    return pairs, identical


def _response_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and "content" in value[-1]:
        return str(value[-1]["content"])
    raise ValueError(f"expected a response string or a list of messages, got {type(value).__name__}")


def pairs_from_file(path: str | Path, limit: int | None = None) -> tuple[list[Pair], list[InputProblem]]:
    """(prompt, response_a, response_b) rows, or labelled (prompt, chosen, rejected) rows with chosen first."""
    items = load_prompts(path, column="prompt")
    pairs: list[Pair] = []
    problems: list[InputProblem] = []
    for item in items:
        if isinstance(item, InputProblem):
            problems.append(item)
            continue
        row = item.row
        try:
            if "chosen" in row and "rejected" in row:
                first, second, meta = _response_text(row["chosen"]), _response_text(row["rejected"]), {
                    "first": "chosen", "second": "rejected", "label": "first"}
            elif "response_a" in row and "response_b" in row:
                first, second, meta = _response_text(row["response_a"]), _response_text(row["response_b"]), {
                    "first": "response_a", "second": "response_b"}
            else:
                raise ValueError("needs response_a and response_b (or chosen and rejected) columns")
            if not first.strip() or not second.strip():
                raise ValueError("a response is empty")
            if first.strip() == second.strip():
                raise ValueError("the two responses are identical")
        except ValueError as e:
            problems.append(InputProblem(item.id, str(e)))
            continue
        pairs.append(Pair(item.id, item.messages, first, second, {**meta, **item.meta, "tags": item.tags}))
    return (pairs[:limit] if limit else pairs), problems


def sampled_pairs(prompt_id: str, prompt: list[dict[str, str]], responses: list[str], pairing: str) -> list[Pair]:
    """Pairs among K sampled responses: `all` pairs, or each against the first (`reference`)."""
    if pairing == "all":
        combos = list(itertools.combinations(range(len(responses)), 2))
    elif pairing == "reference":
        combos = [(0, j) for j in range(1, len(responses))]
    else:
        raise ValueError(f"unknown pairing {pairing!r} (all, reference)")
    return [Pair(f"{prompt_id}/s{i}-vs-s{j}", prompt, responses[i], responses[j],
                 {"first": f"sample{i}", "second": f"sample{j}", "source_id": prompt_id})
            for i, j in combos if responses[i].strip() != responses[j].strip()]
