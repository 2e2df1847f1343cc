"""A judge run's export (`cai export RUN`, and at the end of every run), in `RUN/export/`: `train.jsonl` in TRL's
conversational preference format with `p_chosen` and the label's provenance, `abstained.jsonl` (labels the judge
abstained on, kept out of training unless asked), `raw.jsonl` (every judgement), `invalid.jsonl`, `stats.json`, a
`datasets` folder and the dataset card. A merged human review (`cai review merge`) replaces the AI's labels of the
pairs a person labelled (cai/review/labels.py says which labels it may apply).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.evaluate.diagnostics import length_bias
from cai.judge.objectives import oriented
from cai.judge.record import JudgeRecord, JudgeStats
from cai.runs.files import make_folder, write_text
from cai.runs.records import read_typed
from cai.runs.store import read_manifest, write_json_atomic
from cai.runs.writers import dataset_card, save_datasets, write_jsonl_atomic


def preference_row(record: JudgeRecord, judge_model: str) -> dict[str, Any]:
    """A judged pair in TRL's conversational preference format, with the soft label and its provenance."""
    p_first = record.p_first
    tie = p_first == 0.5
    first_wins = p_first >= 0.5  # a tie keeps the listed order; `tie` tells hard-label trainers to skip it
    chosen, rejected = (record.first, record.second) if first_wins else (record.second, record.first)
    sources = (record.meta.get("first"), record.meta.get("second"))  # the pair's own, free-form columns
    p_chosen = p_first if first_wins else 1.0 - p_first
    return {
        "id": record.id,
        "prompt": record.prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "p_chosen": p_chosen,
        "tie": tie,
        "score_chosen": p_chosen,
        "score_rejected": 1.0 - p_chosen,
        "margin": 2.0 * p_chosen - 1.0,
        "principle_ids": record.principle_ids,
        "judge_model": judge_model,
        "position_consistency": record.position_consistency,
        "abstain": record.abstain,
        "n_judgements": record.n_valid,
        "chosen_source": sources[0] if first_wins else sources[1],
        "rejected_source": sources[1] if first_wins else sources[0],
        **oriented(record, first_wins),
    }


def judgement_rows(record: JudgeRecord) -> list[dict[str, Any]]:
    return [{"pair_id": record.id, **j} for j in record.judgements]


def with_human_label(record: JudgeRecord, human: dict[str, Any]) -> JudgeRecord:
    """The record with every AI label replaced by the person's: p_first, each objective's p_first (so `train rm
    --objective` and `train cost` learn from the person too) and, where the person answered, unsafe_*."""
    update: dict[str, Any] = {"p_first": human["p_first"], "abstain": False}
    if record.objectives is not None:
        update["objectives"] = {o: {**label, "p_first": human["objectives"].get(o, human["p_first"]), "valid": True}
                                for o, label in record.objectives.items()}
    for side in ("unsafe_first", "unsafe_second"):
        if human.get(side) is not None:
            update[side] = human[side]
    return record.model_copy(update=update)


def judge_preferences(records: list[JudgeRecord], config: dict, judge_model: str,
                      review: tuple[dict[str, dict], set[str], dict] | None) -> tuple[list[dict], dict[str, int]]:
    """The exported pairs and the counts of what was left out. A human label (from `cai review merge`) replaces
    the AI's and passes the confidence filters; unreviewed pairs the review asked to drop are dropped."""
    human, drop = (review[0], review[1]) if review else ({}, set())
    preferences, counts = [], {"low_confidence": 0, "inconsistent": 0, "unreviewed": 0, "ties": 0, "human": 0,
                                "abstained": 0}
    for record in (r for r in records if r.status == "ok"):
        if record.id in human:
            row = {**preference_row(with_human_label(record, human[record.id]), judge_model),
                   "label_source": "human"}
            counts["human"] += 1
        else:
            row = {**preference_row(record, judge_model), "label_source": "ai"}
            if record.id in drop:
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
        counts["abstained"] += row["abstain"]
    return preferences, counts


def export_judge_run(run_dir: str | Path) -> dict[str, int]:
    """Write `run_dir/export/` for a judge run (with a merged human review, when there is one); returns the row
    count of each split."""
    from cai.review.labels import review_overrides

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir / "manifest.json")
    config = manifest["config"]
    records = read_typed(run_dir, JudgeRecord)
    judge_model = manifest.get("engine", {}).get("model", str(config["engine"].get("model")))
    review = review_overrides(run_dir)
    preferences, dropped = judge_preferences(records, config, judge_model, review)
    invalid = [r.dump() for r in records if r.status != "ok"]
    out = make_folder(run_dir / "export")
    kept = [row for row in preferences if not row["abstain"]]
    splits = {"train": kept, "abstained": [row for row in preferences if row["abstain"]],
              "raw": [row for r in records for row in judgement_rows(r)]}
    for name, rows in splits.items():
        write_jsonl_atomic(out / f"{name}.jsonl", rows)
    write_jsonl_atomic(out / "invalid.jsonl", invalid)
    save_datasets(out / "dataset", splits)
    bias = length_bias([r["p_chosen"] for r in kept], [len(r["chosen"][0]["content"].split()) for r in kept],
                       [len(r["rejected"][0]["content"].split()) for r in kept])
    stats = {"kept": len(kept), "ties": dropped["ties"], "invalid": len(invalid), "abstained": dropped["abstained"],
             "human_labels": dropped["human"], "length_bias": bias,
             "review_left_out": review[2]["left_out"] if review else None,
             **{f"dropped_{k}": dropped[k] for k in ("low_confidence", "inconsistent", "unreviewed")}}
    objectives = config.get("objectives") or []
    if objectives:
        stats.update(objective_stats(preferences, objectives))
    write_json_atomic(out / "stats.json", JudgeStats.model_validate(stats).model_dump(mode="json", exclude_unset=True))
    summary = card_summary(manifest, judge_model, stats, dropped, review[2] if review else None)
    counts = {name: len(rows) for name, rows in splits.items()}
    write_text(out / "README.md", dataset_card({**manifest, "run_dir": str(run_dir)}, counts, summary))
    return counts


def card_summary(manifest: dict[str, Any], judge_model: str, stats: dict[str, Any], dropped: dict[str, int],
                 review: dict[str, Any] | None) -> str:
    """The dataset card's account of the labels: what was kept and why the rest was not, the judge and its quality,
    the labels' length bias, the objectives and the human review."""
    config = manifest["config"]
    summary = (f"AI-labelled preference pairs (RL-CAI): {stats['kept']} pairs kept, {dropped['low_confidence']} "
               f"below p_chosen {config['min_confidence']}, {dropped['inconsistent']} position-inconsistent "
               f"dropped, {stats['invalid']} invalid or failed. Judge: `{judge_model}`, "
               f"{config['principles_per_pair']} principles per pair, both orders. {dropped['ties']} exact tie(s) "
               "(p_chosen = 0.5, `tie: true`): kept at 0.5 for soft losses, skipped by hard-label losses "
               "(DPO sigmoid/ipo, a reward model without soft labels). "
               f"{stats['abstained']} pair(s) the judge abstained on (its label is within its abstention band of 0.5 "
               "or its presentation orders disagree) are in `abstained.jsonl` (`abstain: true`), not in "
               "`train.jsonl`: `cai train` reads them only with `--keep-abstained`, and `cai review select` queues "
               "them first.")
    summary += f"\n\nJudge format: {config.get('judge_format', 'pairwise')}; labels combined and calibrated by: " + \
        str(manifest.get("calibration", "the plain mean of the judgements"))
    summary += "\n\n" + judge_quality_text(manifest.get("judge_quality"))
    bias = stats["length_bias"]
    if bias["pairs"]:
        corr = bias["p_length_correlation"]
        summary += (f"\n\nLength bias of the labels: the chosen response is the longer one in "
                    f"{bias['chosen_longer_share']:.0%} of pairs; p_chosen correlates "
                    f"{'n/a' if corr is None else f'{corr:+.2f}'} with (chosen - rejected) length in words.")
    if config.get("objectives"):
        summary += "\n\n" + objective_text(stats, config["objectives"])
    if review is not None:
        left_out = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in review["left_out"].items() if n) or "none"
        summary += (f"\n\nHuman review (`cai review`): {review['reviewed']} pairs labelled by a person "
                    f"(`label_source: human`; every AI label of those pairs, objectives included, replaced) of "
                    f"{review['selected']} selected as the most doubtful (budget {review['budget']}); "
                    f"{review['skipped']} skipped; {review['dropped_unreviewed']} unreviewed pairs in the "
                    f"least-trusted {review['drop_unreviewed_below']:.0%} dropped. Labels left out of the merge: "
                    f"{left_out} (stale: the pair changed since the person saw it). Every other row is "
                    "`label_source: ai`.")
    return summary


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
    from cai.judge.check import describe

    return f"Judge quality, measured before labelling: {describe(quality)}."
