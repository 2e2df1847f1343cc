"""The report's sections on the data: the critique/revision chains (generate) and the AI judge's labels, with the
judge check's selective-accuracy curve."""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path

from cai.generate.record import GenerateRecord, GenerateStats
from cai.judge.record import JudgeRecord
from cai.report.plots import plt as _plt
from cai.report.plots import records as _records
from cai.report.plots import save as _save
from cai.report.plots import section as _section


def generate_section(run: Path, folder: Path) -> tuple[str, list[str]]:
    records = [r for r in _records(run / "generate" / "records.jsonl", GenerateRecord) if r.status == "ok"]
    if not records:
        return "", []
    plt = _plt()
    images = []
    usage = Counter(p for r in records for p in r.principle_ids)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.28 * len(usage))))
    names = [n for n, _ in usage.most_common()][::-1]
    ax.barh(names, [usage[n] for n in names], color="#4c72b0")
    ax.set_xlabel("critiques using the principle")
    ax.set_title("Principle usage")
    images.append(_save(fig, folder, "principle_usage.png"))

    initial = [len(r.initial.split()) for r in records]
    final = [len(r.final.split()) for r in records]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.hist([initial, final], bins=15, label=["initial", "final revision"], color=["#dd8452", "#55a868"])
    ax.set_xlabel("words")
    ax.set_ylabel("samples")
    ax.set_title("Response length before and after revision")
    ax.legend()
    images.append(_save(fig, folder, "revision_lengths.png"))
    changed = sum(r.final.strip() != r.initial.strip() for r in records)
    chains = "".join(_chain_html(r) for r in records[:3])
    on_topic, critiques = on_topic_critiques(run, records)
    stats_path = run / "generate" / "export" / "stats.json"
    stats = GenerateStats.model_validate_json(stats_path.read_text()) if stats_path.exists() else None
    degenerate = ", ".join(f"{n} {reason}" for reason, n in sorted((stats.degenerate_reasons if stats else {}).items()))
    body = (f"<p>{len(records)} samples; the final revision differs from the initial response in {changed} "
            f"({changed / len(records):.0%}). Mean length {sum(initial) / len(initial):.1f} words before, "
            f"{sum(final) / len(final):.1f} after. On-topic critiques (the principle's tags match the prompt's): "
            f"{on_topic} of {critiques}. Degenerate final responses: {stats.degenerate if stats else 'n/a'}"
            f"{f' ({html.escape(degenerate)})' if degenerate else ''}.</p>"
            + "".join(f'<img src="{i}" alt="{i}">' for i in images)
            + f"<h3>Example chains</h3>{chains}")
    return _section("Critique and revision", body), images


def on_topic_critiques(run: Path, records: list[GenerateRecord]) -> tuple[int, int]:
    """Critiques whose principle shares a tag with its prompt, of all critiques (tagged prompts only count)."""
    from cai.runs.store import read_manifest
    from cai.yaml_safe import load_yaml

    text = read_manifest(run / "generate" / "manifest.json").get("constitution", {}).get("text", "")
    principles = (load_yaml(text, "the run's constitution") or {}).get("principles", []) if text else []
    tags = {p["id"]: set(p.get("tags", [])) for p in principles}
    pairs = [(set(r.tags), pid) for r in records if r.tags for pid in r.principle_ids]
    return sum(bool(prompt & tags.get(pid, set())) for prompt, pid in pairs), len(pairs)


def _chain_html(record: GenerateRecord) -> str:
    parts = [f"<p><b>Prompt</b> ({html.escape(', '.join(record.tags))}): "
             f"{html.escape(record.prompt[-1]['content'])}</p>"]
    for turn in record.turns:
        label = turn.stage if turn.stage == "initial" else f"{turn.stage} (principle {turn.principle_id})"
        if turn.request:
            parts.append(f"<p class='req'><b>{html.escape(turn.stage)} request</b>: {html.escape(turn.request)}</p>")
        parts.append(f"<p><b>{html.escape(label)}</b>: {html.escape(turn.text)}</p>")
    return f"<div class='chain'>{''.join(parts)}</div>"


def judge_section(run: Path, folder: Path) -> tuple[str, list[str]]:
    records = _records(run / "judge" / "records.jsonl", JudgeRecord)
    if not records:
        return "", []
    plt = _plt()
    valid = [r for r in records if r.status == "ok"]
    invalid = len(records) - len(valid)
    images = []
    fig, ax = plt.subplots(figsize=(7, 3))
    p_chosen = [max(r.p_first, 1 - r.p_first) for r in valid]
    ax.hist(p_chosen, bins=10, range=(0.5, 1.0), color="#8172b3")
    ax.set_xlabel("p_chosen (soft label)")
    ax.set_ylabel("pairs")
    ax.set_title("Judge confidence")
    images.append(_save(fig, folder, "judge_p_chosen.png"))
    fig, ax = plt.subplots(figsize=(7, 3))
    chosen_len = [len((r.first if r.p_first >= 0.5 else r.second).split()) for r in valid]
    rejected_len = [len((r.second if r.p_first >= 0.5 else r.first).split()) for r in valid]
    ax.hist([chosen_len, rejected_len], bins=15, label=["chosen", "rejected"], color=["#55a868", "#c44e52"])
    ax.set_xlabel("words")
    ax.set_title("Chosen vs rejected length")
    ax.legend()
    images.append(_save(fig, folder, "chosen_rejected_lengths.png"))
    quality = _manifest(run / "judge").get("judge_quality") or {}
    curve = selective_plot(quality, folder)
    if curve:
        images.append(curve)
    consistency = [r.position_consistency for r in valid if r.position_consistency is not None]
    mean_consistency = sum(consistency) / len(consistency) if consistency else float("nan")
    revision_wins = sum((r.p_first >= 0.5) == (r.meta.get("first") == "final") for r in valid)
    abstained = sum(r.abstain for r in valid)
    body = (f"<p>{len(records)} pairs judged: {len(valid)} labelled, {invalid} invalid "
            f"({invalid / len(records):.0%}), {abstained} of the labels abstained on (kept out of training). "
            f"Mean position consistency {mean_consistency:.2f}. "
            f"The revision was preferred in {revision_wins} of {len(valid)} pairs.</p>"
            + "".join(f'<img src="{i}" alt="{i}">' for i in images))
    return _section("AI judge", body), images


def _manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def selective_plot(quality: dict, folder: Path) -> str | None:
    """The judge check's cross-validated selective-accuracy curve: accuracy of the labels kept against the share
    kept, with the abstention band the run uses marked."""
    curve = [row for row in quality.get("selective") or [] if row.get("accuracy") is not None]
    if not curve:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot([row["kept"] for row in curve], [row["accuracy"] for row in curve], marker="o", color="#4c72b0")
    for row in curve:
        ax.annotate(f"{row['band']:.2f}", (row["kept"], row["accuracy"]), fontsize=7, textcoords="offset points",
                    xytext=(2, 4))
    band = quality.get("abstain_band")
    chosen = next((row for row in curve if band is not None and abs(row["band"] - band) < 1e-9), None)
    if chosen:
        ax.scatter([chosen["kept"]], [chosen["accuracy"]], s=90, facecolors="none", edgecolors="#c44e52",
                   label=f"band used: {band:.2f}")
        ax.legend()
    ax.set_xlabel("share of labels kept")
    ax.set_ylabel("accuracy of kept labels")
    ax.set_title("Judge check: selective accuracy (cross-validated; points labelled by band)")
    return _save(fig, folder, "judge_selective_accuracy.png")
