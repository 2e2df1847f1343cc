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

from cai.diagnostics import length_bias
from cai.objectives import oriented
from cai.records import read_records
from cai.redact import redact_secrets
from cai.store import read_manifest, write_json_atomic


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
        "degenerate": record.get("degenerate", []),
    }


def raw_row(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": record["id"], "prompt": record["prompt"], "initial": record["initial"], "final": record["final"],
        "turns": record["turns"], "principle_ids": record["principle_ids"], "rounds_done": record["rounds_done"],
        "stopped_early": record["stopped_early"], "tags": record.get("tags", []),
        "prompt_tokens": record["prompt_tokens"], "completion_tokens": record["completion_tokens"],
        "cached_tokens": record.get("cached_tokens", 0), "degenerate": record.get("degenerate", []),
    }


def save_datasets(folder: Path, splits: dict[str, list[dict[str, Any]]]) -> None:
    import datasets

    nonempty = {name: datasets.Dataset.from_list(rows) for name, rows in splits.items() if rows}
    if nonempty:
        datasets.DatasetDict(nonempty).save_to_disk(str(folder))


def dataset_card(manifest: dict[str, Any], counts: dict[str, int], summary: str) -> str:
    manifest = redact_secrets(manifest)  # the card is the file meant for publishing
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


def flag_degenerate(records: list[dict[str, Any]], constitution_yaml: str) -> dict[str, int]:
    """Add `degenerate` (a list of reasons, empty when fine) to each record; returns the count per reason."""
    from cai.degenerate import degenerate_reasons, few_shot_texts

    few_shot = few_shot_texts(constitution_yaml)
    counts: dict[str, int] = {}
    for record in records:
        requests = [t.get("request") or "" for t in record.get("turns", [])]
        record["degenerate"] = degenerate_reasons(record["final"], requests, few_shot)
        for reason in record["degenerate"]:
            counts[reason] = counts.get(reason, 0) + 1
    return counts


def export_generate_run(run_dir: str | Path, drop_degenerate: bool | None = None) -> dict[str, int]:
    """Write `run_dir/export/`; returns the row count of each split. Degenerate revisions are flagged, and dropped
    from the SFT split with `drop_degenerate` (default: the run's own setting)."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir / "manifest.json")
    if drop_degenerate is None:
        drop_degenerate = bool(manifest.get("config", {}).get("drop_degenerate", False))
    records = read_records(run_dir)  # prompt-set order, whatever the completion order
    ok = [r for r in records if r["status"] == "ok"]
    errors = [r for r in records if r["status"] != "ok"]
    degenerate = flag_degenerate(ok, manifest.get("constitution", {}).get("text", ""))
    flagged = sum(bool(r["degenerate"]) for r in ok)
    sft = [sft_row(r) for r in ok if not (drop_degenerate and r["degenerate"])]
    splits = {"sft": sft, "raw": [raw_row(r) for r in ok]}
    out = run_dir / "export"
    out.mkdir(exist_ok=True)
    for name, rows in splits.items():
        write_jsonl_atomic(out / f"{name}.jsonl", rows)
    write_jsonl_atomic(out / "errors.jsonl", errors)
    save_datasets(out / "dataset", splits)
    counts = {name: len(rows) for name, rows in splits.items()}
    revised = sum(r["final"] != r["initial"] for r in ok)
    summary = (f"Constitutional-AI supervised data (critique -> revision): {len(ok)} samples, {len(errors)} errors; "
               f"{revised} of {len(ok)} final responses differ from the initial one. Degenerate final responses: "
               f"{flagged} ({', '.join(f'{n} {reason}' for reason, n in sorted(degenerate.items())) or 'none'}); "
               + ("dropped from `sft`." if drop_degenerate else "kept and flagged (`degenerate`), "
                  "`cai export RUN --drop-degenerate` drops them."))
    write_json_atomic(out / "stats.json", {"samples": len(ok), "errors": len(errors), "degenerate": flagged,
                                           "degenerate_reasons": degenerate, "dropped_degenerate": drop_degenerate})
    (out / "README.md").write_text(dataset_card({**manifest, "run_dir": str(run_dir)}, counts, summary), encoding="utf-8")
    return counts


def preference_row(record: dict[str, Any], judge_model: str) -> dict[str, Any]:
    """A judged pair in TRL's conversational preference format, with the soft label and its provenance."""
    p_first = record["p_first"]
    tie = p_first == 0.5
    first_wins = p_first >= 0.5  # a tie keeps the listed order; `tie` tells hard-label trainers to skip it
    chosen, rejected = (record["first"], record["second"]) if first_wins else (record["second"], record["first"])
    sources = (record["meta"].get("first"), record["meta"].get("second"))
    p_chosen = p_first if first_wins else 1.0 - p_first
    return {
        "id": record["id"],
        "prompt": record["prompt"],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "p_chosen": p_chosen,
        "tie": tie,
        "score_chosen": p_chosen,
        "score_rejected": 1.0 - p_chosen,
        "margin": 2.0 * p_chosen - 1.0,
        "principle_ids": record["principle_ids"],
        "judge_model": judge_model,
        "position_consistency": record["position_consistency"],
        "n_judgements": record["n_valid"],
        "chosen_source": sources[0] if first_wins else sources[1],
        "rejected_source": sources[1] if first_wins else sources[0],
        **oriented(record, first_wins),
    }


def judgement_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"pair_id": record["id"], **j} for j in record.get("judgements", [])]


def judge_preferences(records: list[dict], config: dict, judge_model: str,
                      review: tuple[dict[str, float], set[str], dict] | None) -> tuple[list[dict], dict[str, int]]:
    """The exported pairs and the counts of what was left out. A human label (from `cai review merge`) replaces
    the AI's and passes the confidence filters; unreviewed pairs the review asked to drop are dropped."""
    human, drop = (review[0], review[1]) if review else ({}, set())
    preferences, counts = [], {"low_confidence": 0, "inconsistent": 0, "unreviewed": 0, "ties": 0, "human": 0}
    for record in (r for r in records if r["status"] == "ok"):
        if record["id"] in human:
            row = {**preference_row({**record, "p_first": human[record["id"]]}, judge_model), "label_source": "human"}
            counts["human"] += 1
        else:
            row = {**preference_row(record, judge_model), "label_source": "ai"}
            if record["id"] in drop:
                counts["unreviewed"] += 1
                continue
            if row["p_chosen"] < config["min_confidence"]:
                counts["low_confidence"] += 1
                continue
            if config["drop_inconsistent"] and (row["position_consistency"] or 0) < 1.0:
                counts["inconsistent"] += 1
                continue
        preferences.append(row)
        counts["ties"] += row["tie"]
    return preferences, counts


def export_judge_run(run_dir: str | Path) -> dict[str, int]:
    """Write `run_dir/export/` for a judge run (with a merged human review, when there is one); returns the row
    count of each split."""
    from cai.review import review_overrides

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir / "manifest.json")
    config = manifest["config"]
    records = read_records(run_dir)
    judge_model = manifest.get("engine", {}).get("model", str(config["engine"].get("model")))
    review = review_overrides(run_dir)
    preferences, dropped = judge_preferences(records, config, judge_model, review)
    raw = [row for r in records for row in judgement_rows(r)]
    invalid = [r for r in records if r["status"] != "ok"]
    out = run_dir / "export"
    out.mkdir(exist_ok=True)
    splits = {"train": preferences, "raw": raw}
    for name, rows in splits.items():
        write_jsonl_atomic(out / f"{name}.jsonl", rows)
    write_jsonl_atomic(out / "invalid.jsonl", invalid)
    save_datasets(out / "dataset", splits)
    counts = {name: len(rows) for name, rows in splits.items()}
    bias = length_bias([r["p_chosen"] for r in preferences],
                       [len(r["chosen"][0]["content"].split()) for r in preferences],
                       [len(r["rejected"][0]["content"].split()) for r in preferences])
    write_json_atomic(out / "stats.json", {"kept": len(preferences), "ties": dropped["ties"], "invalid": len(invalid),
                                           "human_labels": dropped["human"], "length_bias": bias,
                                           **{f"dropped_{k}": dropped[k] for k in ("low_confidence", "inconsistent",
                                                                                    "unreviewed")}})
    summary = (f"AI-labelled preference pairs (RL-CAI): {len(preferences)} pairs kept, {dropped['low_confidence']} "
               f"below p_chosen {config['min_confidence']}, {dropped['inconsistent']} position-inconsistent "
               f"dropped, {len(invalid)} invalid or failed. Judge: `{judge_model}`, "
               f"{config['principles_per_pair']} principles per pair, both orders. {dropped['ties']} exact tie(s) "
               "(p_chosen = 0.5, `tie: true`): kept at 0.5 for soft losses, skipped by hard-label losses "
               "(DPO sigmoid/ipo, a reward model without soft labels).")
    summary += "\n\n" + judge_quality_text(manifest.get("judge_quality"))
    if bias["pairs"]:
        corr = bias["p_length_correlation"]
        summary += (f"\n\nLength bias of the labels: the chosen response is the longer one in "
                    f"{bias['chosen_longer_share']:.0%} of pairs; p_chosen correlates "
                    f"{'n/a' if corr is None else f'{corr:+.2f}'} with (chosen - rejected) length in words.")
    objectives = config.get("objectives") or []
    if objectives:
        stats_extra = objective_stats(preferences, objectives)
        write_json_atomic(out / "stats.json", {**json.loads((out / "stats.json").read_text()), **stats_extra})
        summary += "\n\n" + objective_text(stats_extra, objectives)
    if review is not None:
        info = review[2]
        summary += (f"\n\nHuman review (`cai review`): {info['reviewed']} pairs labelled by a person "
                    f"(`label_source: human`) of {info['selected']} selected as the most doubtful (budget "
                    f"{info['budget']}); {info['skipped']} skipped; {info['dropped_unreviewed']} unreviewed pairs "
                    f"in the least-trusted {info['drop_unreviewed_below']:.0%} dropped. Every other row is "
                    "`label_source: ai`.")
    (out / "README.md").write_text(dataset_card({**manifest, "run_dir": str(run_dir)}, counts, summary),
                                   encoding="utf-8")
    return counts


def objective_stats(preferences: list[dict], objectives: list[str]) -> dict[str, Any]:
    """How often the objectives disagree on a pair, and how often each side was judged harmful."""
    def share(rows: list, test) -> float | None:
        return sum(map(test, rows)) / len(rows) if rows else None

    stats: dict[str, Any] = {"objectives": objectives}
    if len(objectives) > 1:
        both = [r for r in preferences if all(r.get(f"p_{o}") is not None for o in objectives[:2])]
        stats["objective_disagreement"] = share(both, lambda r: (r[f"p_{objectives[0]}"] > 0.5)
                                                != (r[f"p_{objectives[1]}"] > 0.5))
    for side in ("chosen", "rejected"):
        known = [r[f"unsafe_{side}"] for r in preferences if r.get(f"unsafe_{side}") is not None]
        stats[f"unsafe_{side}_share"] = share(known, lambda u: u > 0.5)
        stats[f"unsafe_{side}_mean"] = sum(known) / len(known) if known else None
    return stats


def objective_text(stats: dict[str, Any], objectives: list[str]) -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0%}"

    text = (f"Objectives: {', '.join(objectives)}, each labelled from its own principles (`p_{'`, `p_'.join(objectives)}`"
            f"; `p_chosen` is `p_{objectives[0]}`).")
    if "objective_disagreement" in stats:
        text += f" The objectives disagree on {pct(stats['objective_disagreement'])} of pairs."
    return text + (f" Judged harmful (`unsafe_*` > 0.5): {pct(stats['unsafe_chosen_share'])} of chosen, "
                   f"{pct(stats['unsafe_rejected_share'])} of rejected responses.")


def judge_quality_text(quality: dict[str, Any] | None) -> str:
    if not quality:
        return "Judge quality: not measured (the run used --no-judge-check)."
    from cai.judge_check import describe

    return f"Judge quality, measured before labelling: {describe(quality)}."


def export_run(run_dir: str | Path, drop_degenerate: bool | None = None) -> dict[str, Any]:
    """`cai export RUN`: rewrite a generate or judge run's export, whichever the run is."""
    run_dir = Path(run_dir)
    kind = read_manifest(run_dir / "manifest.json").get("kind")
    counts = export_judge_run(run_dir) if kind == "judge" else export_generate_run(run_dir, drop_degenerate)
    return {"export": str(run_dir / "export"), "rows": counts}
