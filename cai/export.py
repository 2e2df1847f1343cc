"""Export a run folder's records as Hugging Face datasets, JSONL files and a dataset card.

    cai export outputs/<run>

For a generate run, `export/` gets:
    sft.jsonl     {"messages": prompt + final revision}            (TRL's conversational SFT format)
    raw.jsonl     every turn of every sample, principle ids, token counts
    errors.jsonl  samples that failed, with the reason
    dataset/      a `datasets.DatasetDict` (splits `sft`, `raw`) for `datasets.load_from_disk`
    README.md     the dataset card: how it was made, the constitution, the models
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from cai.store import latest_by_id, read_jsonl


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sft_row(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": record["id"],
        "messages": record["prompt"] + [{"role": "assistant", "content": record["final"]}],
        "principle_ids": record["principle_ids"],
        "tags": record.get("tags", []),
    }


def raw_row(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": record["id"], "prompt": record["prompt"], "initial": record["initial"], "final": record["final"],
        "turns": record["turns"], "principle_ids": record["principle_ids"], "rounds_done": record["rounds_done"],
        "stopped_early": record["stopped_early"], "tags": record.get("tags", []),
        "prompt_tokens": record["prompt_tokens"], "completion_tokens": record["completion_tokens"],
        "cached_tokens": record.get("cached_tokens", 0),
    }


def save_datasets(folder: Path, splits: dict[str, list[dict[str, Any]]]) -> None:
    import datasets

    nonempty = {name: datasets.Dataset.from_list(rows) for name, rows in splits.items() if rows}
    if nonempty:
        datasets.DatasetDict(nonempty).save_to_disk(str(folder))


def dataset_card(manifest: dict[str, Any], counts: dict[str, int], summary: str) -> str:
    constitution = manifest.get("constitution", {})
    engine = manifest.get("engine", {})
    header = {
        "license": (yaml.safe_load(constitution.get("text", "")) or {}).get("license", "apache-2.0"),
        "tags": ["constitutional-ai", "cai", "synthetic", "harmlessness"],
        "task_categories": ["text-generation"],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": name, "path": f"{name}.jsonl"} for name in counts]}],
    }
    config = manifest.get("config", {})
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
        f"# {Path(manifest.get('run_dir', 'run')).name}", "",
        summary, "",
        "## How it was made", "",
        f"- Tool: `cai` ({manifest.get('kind')} stage), versions: `{json.dumps(manifest.get('versions', {}))}`",
        f"- Model: `{engine.get('model', config.get('engine', {}).get('model'))}`",
        f"- Constitution: `{constitution.get('name')}` version {constitution.get('version')} "
        f"(sha256 `{constitution.get('sha256', '')[:16]}`)",
        f"- Prompts: `{manifest.get('prompts', {}).get('source')}` ({manifest.get('prompts', {}).get('count')} rows)",
        f"- Seed: {manifest.get('seed')}", "",
        "## Splits", "",
        *[f"- `{name}`: {n} rows" for name, n in counts.items()], "",
        "## Settings", "", "```yaml", yaml.safe_dump(config, sort_keys=False).strip(), "```", "",
        "## Constitution", "", "```yaml", constitution.get("text", "").strip(), "```", "",
    ]
    return "\n".join(lines)


def export_generate_run(run_dir: str | Path) -> dict[str, int]:
    """Write `run_dir/export/`; returns the row count of each split."""
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    records = sorted(latest_by_id(list(read_jsonl(run_dir / "records.jsonl"))).values(),
                     key=lambda r: (r.get("index", 0), r["id"]))  # prompt-set order, whatever the completion order
    ok = [r for r in records if r["status"] == "ok"]
    errors = [r for r in records if r["status"] != "ok"]
    splits = {"sft": [sft_row(r) for r in ok], "raw": [raw_row(r) for r in ok]}
    out = run_dir / "export"
    out.mkdir(exist_ok=True)
    for name, rows in splits.items():
        write_jsonl_atomic(out / f"{name}.jsonl", rows)
    write_jsonl_atomic(out / "errors.jsonl", errors)
    save_datasets(out / "dataset", splits)
    counts = {name: len(rows) for name, rows in splits.items()}
    revised = sum(r["final"] != r["initial"] for r in ok)
    summary = (f"Constitutional-AI supervised data (critique -> revision): {len(ok)} samples, {len(errors)} errors; "
               f"{revised} of {len(ok)} final responses differ from the initial one.")
    (out / "README.md").write_text(dataset_card({**manifest, "run_dir": str(run_dir)}, counts, summary), encoding="utf-8")
    return counts
