"""A generate run's export (`cai export RUN`, and at the end of every run), in `RUN/export/`:
    sft.jsonl     {"messages": prompt + final revision}            (TRL's conversational SFT format)
    raw.jsonl     every turn of every sample, principle ids, token counts
    errors.jsonl  samples that failed, with the reason
    dataset/      a `datasets.DatasetDict` (splits `sft`, `raw`) for `datasets.load_from_disk`
    README.md     the dataset card: how it was made, the constitution, the models
Revisions that are empty, copy a few-shot example, repeat themselves or restate the request are flagged
(`degenerate`) and counted; `drop_degenerate` leaves them out of `sft.jsonl`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.generate.record import GenerateRecord, GenerateStats
from cai.runs.files import make_folder, write_text
from cai.runs.records import read_typed
from cai.runs.store import read_manifest, write_json_atomic
from cai.runs.writers import dataset_card, save_datasets, write_jsonl_atomic


def sft_row(record: GenerateRecord) -> dict[str, Any]:
    return {"id": record.id, "messages": record.prompt + [{"role": "assistant", "content": record.final}],
            "principle_ids": record.principle_ids, "tags": record.tags, "degenerate": record.degenerate}


def raw_row(record: GenerateRecord) -> dict[str, Any]:
    return {"id": record.id, "prompt": record.prompt, "initial": record.initial, "final": record.final,
            "turns": [t.model_dump() for t in record.turns], "principle_ids": record.principle_ids,
            "rounds_done": record.rounds_done, "stopped_early": record.stopped_early, "tags": record.tags,
            "prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
            "cached_tokens": record.cached_tokens or 0, "degenerate": record.degenerate}


def flag_degenerate(records: list[GenerateRecord], constitution_yaml: str) -> dict[str, int]:
    """Set `degenerate` (a list of reasons, empty when fine) on each record; returns the count per reason."""
    from cai.generate.degenerate import degenerate_reasons, few_shot_texts

    few_shot = few_shot_texts(constitution_yaml)
    counts: dict[str, int] = {}
    for record in records:
        record.degenerate = degenerate_reasons(record.final, [t.request or "" for t in record.turns], few_shot)
        for reason in record.degenerate:
            counts[reason] = counts.get(reason, 0) + 1
    return counts


def export_generate_run(run_dir: str | Path, drop_degenerate: bool | None = None) -> dict[str, int]:
    """Write `run_dir/export/`; returns the row count of each split. Degenerate revisions are flagged, and dropped
    from the SFT split with `drop_degenerate` (default: the run's own setting)."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir / "manifest.json")
    if drop_degenerate is None:
        drop_degenerate = bool(manifest.get("config", {}).get("drop_degenerate", False))
    records = read_typed(run_dir, GenerateRecord)  # prompt-set order, whatever the completion order
    ok = [r for r in records if r.status == "ok"]
    errors = [r.dump() for r in records if r.status != "ok"]
    degenerate = flag_degenerate(ok, manifest.get("constitution", {}).get("text", ""))
    flagged = sum(bool(r.degenerate) for r in ok)
    sft = [sft_row(r) for r in ok if not (drop_degenerate and r.degenerate)]
    splits = {"sft": sft, "raw": [raw_row(r) for r in ok]}
    out = run_dir / "export"
    make_folder(out)
    for name, rows in splits.items():
        write_jsonl_atomic(out / f"{name}.jsonl", rows)
    write_jsonl_atomic(out / "errors.jsonl", errors)
    save_datasets(out / "dataset", splits)
    counts = {name: len(rows) for name, rows in splits.items()}
    revised = sum(r.final != r.initial for r in ok)
    summary = (f"Constitutional-AI supervised data (critique -> revision): {len(ok)} samples, {len(errors)} errors; "
               f"{revised} of {len(ok)} final responses differ from the initial one. Degenerate final responses: "
               f"{flagged} ({', '.join(f'{n} {reason}' for reason, n in sorted(degenerate.items())) or 'none'}); "
               + ("dropped from `sft`." if drop_degenerate else "kept and flagged (`degenerate`), "
                  "`cai export RUN --drop-degenerate` drops them."))
    stats = GenerateStats(samples=len(ok), errors=len(errors), degenerate=flagged, degenerate_reasons=degenerate,
                          dropped_degenerate=drop_degenerate)
    write_json_atomic(out / "stats.json", stats.model_dump(mode="json"))
    write_text(out / "README.md", dataset_card({**manifest, "run_dir": str(run_dir)}, counts, summary))
    return counts
