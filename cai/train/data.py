"""Training data: find the rows, check their columns, tokenize them with the chat template, mask and truncate.

- SFT rows: `messages` (conversational); the loss covers assistant tokens only.
- Preference rows: `prompt`, `chosen`, `rejected`, in TRL's conversational form (message lists) or its standard
  form (strings); an optional `p_chosen` carries the judge's soft label.
`--data` may be a `cai` run folder (its export is used), a .jsonl/.json/.parquet file, a `datasets` folder or a
hub id. Every problem is reported before any training starts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai.errors import UsageError

IGNORE = -100


class DataError(UsageError):
    """Training data that cannot be used, with a reason a person can act on."""


def load_rows(data: str, split: str = "train", kind: str = "sft") -> list[dict[str, Any]]:
    path = Path(data)
    if (path / "manifest.json").is_file():
        from cai.runs.store import read_manifest

        run_kind = read_manifest(path / "manifest.json").get("kind")
        name = {"generate": "sft.jsonl", "judge": "train.jsonl"}.get(run_kind)
        if name is None or not (path / "export" / name).is_file():
            raise DataError(f"{path}: a `cai {run_kind}` run without an export; run `cai export {path}` first")
        if kind != "score" and (kind == "sft") != (run_kind == "generate"):
            raise DataError(f"{path} is a `cai {run_kind}` run; `cai train {kind}` needs "
                            f"{'a generate run (SFT data)' if kind == 'sft' else 'a judge run (preference pairs)'}")
        path = path / "export" / name
    if path.exists() and not path.is_dir():  # a FIFO or device named like a file must not be read
        from cai.runs.files import InputFileError, regular_file

        try:
            regular_file(path, "training data")
        except InputFileError as e:
            raise DataError(str(e)) from None
    if path.is_file() and path.suffix == ".jsonl":
        return _nonempty(_jsonl_rows(path), data)
    try:
        import datasets

        if path.is_dir():
            from cai.inputs import InputError, datasets_folder_rows

            try:
                return _nonempty(datasets_folder_rows(path, split), data)
            except InputError as e:
                raise DataError(str(e)) from None
        elif path.is_file():
            suffix = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(path.suffix)
            if suffix is None:
                raise DataError(f"{path}: unknown data format (use .jsonl, .json, .parquet, .csv or a datasets folder)")
            loaded = datasets.load_dataset(suffix, data_files=str(path), split="train")
        else:
            loaded = datasets.load_dataset(data, split=split)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot read training data {data!r}: {e}") from None
    return _nonempty(loaded.to_list(), data)


def _nonempty(rows: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    if not rows:
        raise DataError(f"{source}: the dataset is empty")
    return rows


def _jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """JSON Lines read directly (no `datasets` cache); a bad or oversized line is an error naming its number."""
    from cai.runs.files import InputFileError, TooLong, jsonl_lines, max_line_bytes, regular_file

    try:
        regular_file(path, "training data")
    except InputFileError as e:
        raise DataError(str(e)) from None
    rows = []
    for number, line in jsonl_lines(path, "training data"):
        if isinstance(line, TooLong):
            raise DataError(f"{path}:{number}: {line.reason(max_line_bytes())}")
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{number}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise DataError(f"{path}:{number}: JSON nested too deeply") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _as_messages(value: Any, role: str, column: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                 and isinstance(m.get("content"), str) for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(f"column {column!r}: expected a string or a list of {{role, content}} messages with text "
                    f"content, got {str(value)[:80]}")


def check_columns(rows: list[dict], required: tuple[str, ...], source: str) -> None:
    """Every row, not only the first, has the required columns."""
    for index, row in enumerate(rows):
        missing = [c for c in required if c not in row]
        if missing:
            raise DataError(f"{source}: row {index} is missing column(s) {', '.join(missing)} "
                            f"(has {', '.join(row)})")


@dataclass
class Truncation:
    max_length: int = 512
    max_prompt_length: int = 256


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt,
                                              return_dict=False))


def fit_prompt(tokenizer: Any, messages: list[dict[str, str]], max_tokens: int,
               ) -> tuple[list[dict[str, str]], list[int]]:
    """The conversation cut to fit `max_tokens` rendered (with the generation prompt), and its ids.

    The oldest words go first, taken from the earliest non-system turn that still has any; the template's own
    head (BOS, the system prompt) and every turn's markers stay, so the model still sees a well-formed chat. Since
    the result is a conversation, not a slice of ids, a reward model with another template can render exactly
    what the policy saw. Only when nothing is left to cut (a system prompt alone too long) are the ids cut on
    the left as a last resort.
    """
    ids = _render(tokenizer, messages, True)
    messages = [dict(m) for m in messages]
    while len(ids) > max_tokens:
        turn = next((m for m in messages if m["role"] != "system" and m["content"]), None)
        if turn is None:
            return messages, ids[-max_tokens:]
        words = tokenizer.encode(turn["content"], add_special_tokens=False)
        turn["content"] = tokenizer.decode(words[max(1, len(ids) - max_tokens):]).lstrip()
        ids = _render(tokenizer, messages, True)
    return messages, ids


def preference_rows(source: str, split: str, kind: str, keep_abstained: bool = False) -> list[dict[str, Any]]:
    """Preference rows for `cai train dpo|rm|cost`, without the pairs the judge abstained on unless kept: a judge
    run keeps those in `export/abstained.jsonl` (read with `keep_abstained`); in any other file they are the rows
    marked `abstain: true`."""
    folder = Path(source)
    abstained_file = folder / "export" / "abstained.jsonl"
    if (folder / "manifest.json").is_file() and abstained_file.is_file():
        set_aside = _jsonl_rows(abstained_file)
        train = folder / "export" / "train.jsonl"
        rows = _jsonl_rows(train) if train.is_file() else []
        if keep_abstained:
            rows += set_aside
        elif set_aside:
            print(f"cai: {len(set_aside)} pairs the judge abstained on are left out (--keep-abstained trains on "
                  "them too)")
        if not rows:
            raise DataError(f"{source}: no pairs to train on"
                            + (f" (the judge abstained on all {len(set_aside)}; add --keep-abstained, or label them "
                               "with `cai review`)" if set_aside and not keep_abstained else ""))
        return rows
    rows = load_rows(source, split, kind)
    if keep_abstained:
        return rows
    kept = [row for row in rows if row.get("abstain") is not True]
    if len(kept) < len(rows):
        print(f"cai: {len(rows) - len(kept)} of {len(rows)} pairs left out: the judge abstained on them "
              "(--keep-abstained trains on them too)")
    if not kept:
        raise DataError(f"{source}: the judge abstained on all {len(rows)} pairs; add --keep-abstained to train on "
                        "them anyway, or label them (`cai review`)")
    return kept


def is_tie(row: dict[str, Any]) -> bool:
    """A pair the judge could not separate (p_chosen exactly 0.5): a soft target, never a hard label."""
    return row.get("tie") is True or row.get("p_chosen") == 0.5


def tokenize_sft(rows: list[dict], tokenizer: Any, limits: Truncation) -> tuple[list[dict], int]:
    """input_ids and labels (assistant tokens only); returns the examples and how many were dropped."""
    check_columns(rows, ("messages",), "SFT data")
    examples, dropped = [], 0
    for row in rows:
        messages = _as_messages(row["messages"], "user", "messages")
        ids: list[int] = []
        labels: list[int] = []
        for i, message in enumerate(messages):
            full = _render(tokenizer, messages[: i + 1], False)
            if full[: len(ids)] != ids:
                raise DataError("the chat template does not render a conversation as a prefix of its extension; "
                                "assistant-only masking needs that")
            if message["role"] == "assistant":
                start = _render(tokenizer, messages[:i], True) if i else []
                if full[: len(start)] != start:
                    start = ids
                labels += [IGNORE] * (len(start) - len(ids)) + full[len(start):]
            else:
                labels += [IGNORE] * (len(full) - len(ids))
            ids = full
        ids, labels = ids[: limits.max_length], labels[: limits.max_length]
        if all(label == IGNORE for label in labels):
            dropped += 1
            continue
        examples.append({"input_ids": ids, "labels": labels})
    return examples, dropped


def tokenize_preferences(rows: list[dict], tokenizer: Any, limits: Truncation, need_p: bool = False,
                         hard_labels: bool = False) -> tuple[list[dict], int]:
    """Prompt ids (cut to max_prompt_length by `fit_prompt`) and chosen/rejected response ids (cut to fit
    max_length); returns the examples and how many rows were dropped. With `hard_labels` (a loss that reads
    chosen as simply better) exact ties are dropped too: a coin flip must not train at full strength."""
    check_columns(rows, ("prompt", "chosen", "rejected"), "preference data")
    if need_p:
        check_columns(rows, ("p_chosen",), "preference data for the soft loss")
    examples, dropped = [], 0
    for index, row in enumerate(rows):
        prompt = _as_messages(row["prompt"], "user", "prompt")
        prompt_ids = _render(tokenizer, prompt, True)
        responses = []
        for column in ("chosen", "rejected"):
            response = _as_messages(row[column], "assistant", column)
            full = _render(tokenizer, prompt + response, False)
            if full[: len(prompt_ids)] != prompt_ids:
                raise DataError("the chat template does not render the prompt as a prefix of prompt + response")
            responses.append(full[len(prompt_ids):])
        if responses[0] == responses[1]:
            raise DataError(f"preference row {index}: chosen and rejected are identical")
        p = row.get("p_chosen", 1.0)
        if p is None or isinstance(p, bool) or not isinstance(p, int | float) or math.isnan(p) or not 0.0 <= p <= 1.0:
            raise DataError(f"preference row {index}: p_chosen must be a number in [0, 1], got {p!r}")
        if hard_labels and is_tie(row):
            dropped += 1
            continue
        prompt_ids = fit_prompt(tokenizer, prompt, limits.max_prompt_length)[1]
        room = limits.max_length - len(prompt_ids)
        chosen, rejected = (r[:room] for r in responses) if room > 0 else ([], [])
        if not chosen or not rejected or chosen == rejected:  # nothing left to prefer
            dropped += 1
            continue
        examples.append({"prompt_ids": prompt_ids, "chosen_ids": chosen, "rejected_ids": rejected,
                         "p_chosen": float(p), "index": index})
    return examples, dropped


def objective_rows(rows: list[dict], objective: str) -> list[dict]:
    """Preference rows relabelled by one objective's label (`p_<objective>`, from `cai judge --objectives`):
    each pair turned so `chosen` is the response that objective prefers, with `p_chosen` its probability and the
    per-response columns (`unsafe_*`) turned with it."""
    column = f"p_{objective}"
    out = []
    for index, row in enumerate(rows):
        p = row.get(column)
        if column not in row:
            raise DataError(f"preference row {index} has no {column!r}: label the pairs with `cai judge ... "
                            f"--objectives helpful,harmless` to train on one objective")
        if p is None or isinstance(p, bool) or not isinstance(p, int | float) or math.isnan(p) or not 0.0 <= p <= 1.0:
            raise DataError(f"preference row {index}: {column} must be a number in [0, 1], got {p!r}")
        row = dict(row)
        if p < 0.5:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
            row["unsafe_chosen"], row["unsafe_rejected"] = row.get("unsafe_rejected"), row.get("unsafe_chosen")
            p = 1.0 - p
        # every column derived from the label follows the objective's label, not the export's first objective
        row.update(p_chosen=float(p), tie=p == 0.5, margin=2.0 * p - 1.0, score_chosen=float(p), score_rejected=1.0 - p)
        out.append(row)
    return out
