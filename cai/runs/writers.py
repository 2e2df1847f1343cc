"""The writer every stage's export shares: whole JSONL files (written aside, then renamed), a `datasets` folder and
the dataset card. It knows no stage: each stage's export (cai/generate/export.py, cai/judge/export.py) builds its
rows and summary and writes them with these.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from cai.runs.files import no_symlink, open_new
from cai.runs.redact import redact_secrets
from cai.yaml_safe import load_yaml


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open_new(tmp) as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half file left beside the export
        raise


def save_datasets(folder: Path, splits: dict[str, list[dict[str, Any]]]) -> None:
    import datasets

    no_symlink(folder)
    nonempty = {name: datasets.Dataset.from_list(rows) for name, rows in splits.items() if rows}
    if nonempty:
        datasets.DatasetDict(nonempty).save_to_disk(str(folder))


def dataset_card(manifest: dict[str, Any], counts: dict[str, int], summary: str) -> str:
    manifest = redact_secrets(manifest)  # the card is the file meant for publishing
    constitution = manifest.get("constitution", {})
    engine = manifest.get("engine", {})
    written = load_yaml(constitution.get("text", ""), "the run's constitution") or {}
    header = {
        "license": written.get("license", "apache-2.0"),
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
