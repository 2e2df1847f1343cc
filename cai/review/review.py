"""Targeted human review of AI labels: rank a judge run's pairs by how likely the AI label is wrong, let a person
label the most doubtful ones (`cai/review_server.py`), merge their labels back into the export, and measure what a
budget of human labels buys (`simulate`).

    cai review select outputs/<judge-run> --budget 0.1          # RUN/review/queue.jsonl
    cai review serve outputs/<judge-run>                         # a local page; labels to RUN/review/labels.jsonl
    cai review merge outputs/<judge-run> [--drop-unreviewed-below 0.2]
    cai review simulate prompts/judge-eval.jsonl --budgets 0.05,0.1,0.2 --out sim.json

The ranking (RLTHF's idea: spend people where the AI label is doubtful). Each pair gets a doubt in [0, 1], the mean
of the signals it has:
    margin       1 - 2 |p - 0.5|          the label itself is close to a coin flip
    position     1 - position consistency  its principles disagree with themselves across the two orders
    principles   min(1, 2 std(p_k))        its principles disagree with each other (p_k: a principle's two-order mean;
                                           the contrast is not one)
    reward model |sigma(r_first - r_second) - p|   with --reward-model: the reward model disagrees with the judge
Pairs are queued most doubtful first; the reason names the signals above 0.5.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from cai.errors import UsageError
from cai.judge.record import JudgeRecord
from cai.runs.records import read_typed
from cai.runs.store import write_json_atomic

SIGNALS = ("margin", "position", "principles", "reward_model")


def principle_means(judgements: list[dict[str, Any]]) -> list[float]:
    """Each principle's two-order mean p_first (principles with both orders valid only). The constitution's
    contrast is left out: its p is a likelihood difference through a sigmoid, near 0.5 by its scale, not an
    answer that could disagree with the questions."""
    by_principle: dict[str, dict[str, float]] = {}
    for j in judgements:
        if j.get("valid") and j.get("format") != "contrast":
            by_principle.setdefault(j["principle_id"], {})[j["order"]] = j["p_first"]
    return [(v["AB"] + v["BA"]) / 2 for v in by_principle.values() if len(v) == 2]


def doubt_signals(p_first: float, consistency: float | None, per_principle: list[float],
                  p_reward_model: float | None = None) -> dict[str, float]:
    signals = {"margin": 1.0 - 2.0 * abs(p_first - 0.5)}
    if consistency is not None:
        signals["position"] = 1.0 - consistency
    if len(per_principle) > 1:
        mean = sum(per_principle) / len(per_principle)
        spread = math.sqrt(sum((p - mean) ** 2 for p in per_principle) / len(per_principle))
        signals["principles"] = min(1.0, 2.0 * spread)
    if p_reward_model is not None:
        signals["reward_model"] = abs(p_reward_model - p_first)
    return signals


def doubt(signals: dict[str, float]) -> float:
    return sum(signals.values()) / len(signals)


def reason(signals: dict[str, float]) -> str:
    high = [f"{name} {value:.2f}" for name, value in sorted(signals.items(), key=lambda x: -x[1]) if value > 0.5]
    return ", ".join(high) or "least confident of the rest"


def budget_count(budget: float, total: int) -> int:
    """A fraction (< 1) of `total`, or a count (>= 1)."""
    if not isinstance(budget, int | float) or math.isnan(budget) or math.isinf(budget) or budget <= 0:
        raise UsageError(f"--budget must be a positive fraction (0.1) or count (50), got {budget}")
    if budget >= 1 and budget != int(budget):
        raise UsageError(f"--budget {budget}: a count must be a whole number (or give a fraction below 1)")
    return min(total, math.floor(budget * total + 0.5) if budget < 1 else int(budget))  # half up, not to even


def record_signals(record: JudgeRecord, p_reward_model: float | None = None) -> dict[str, float]:
    """A record's doubt signals. With objectives (`cai judge --objectives`) each objective is read on its own
    (its label, its orders, the spread of its own principles: helpfulness and harmlessness may rightly disagree
    with each other), and the pair gets the signals of its most doubtful objective."""
    judgements = record.judgements
    objectives = record.objectives
    if not objectives:
        return doubt_signals(record.p_first, record.position_consistency, principle_means(judgements),
                             p_reward_model)
    per_objective = []
    for i, (name, label) in enumerate(objectives.items()):
        if label.get("p_first") is None:
            continue
        own = [j for j in judgements if j.get("principle_id") in set(label.get("principle_ids", []))]
        signals = doubt_signals(label["p_first"], label.get("position_consistency"), principle_means(own),
                                p_reward_model if i == 0 else None)  # the reward model learnt p_chosen: objective 1
        per_objective.append((doubt(signals), name, signals))
    if not per_objective:
        return doubt_signals(record.p_first, record.position_consistency, [], p_reward_model)
    return max(per_objective, key=lambda x: x[0])[2]


def rank(records: list[JudgeRecord], rm_p: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Labelled pairs with their doubt: those the judge abstained on first, then the most doubtful (ties in input
    order)."""
    ranked = []
    for r in records:
        signals = record_signals(r, (rm_p or {}).get(r.id))
        abstained = r.abstain
        ranked.append({"pair_id": r.id, "doubt": round(doubt(signals), 6), "signals": signals,
                       "reason": ("the judge abstained; " if abstained else "") + reason(signals),
                       "p_first": r.p_first, "abstain": abstained})
    # the labels the judge itself abstained on first (they are kept out of training until a person decides)
    return sorted(ranked, key=lambda row: (not row["abstain"], -row["doubt"]))


def reward_model_p(reward_model: str, records: list[JudgeRecord]) -> dict[str, float]:
    """sigma(r_first - r_second) for each pair, from a `cai train rm` model."""
    from cai.train.scoring import make_scorer

    scorer = make_scorer(reward_model)
    scores = scorer.score([r.prompt for r in records for _ in (0, 1)],
                          [text for r in records for text in (r.first, r.second)])
    return {r.id: 1.0 / (1.0 + math.exp(scores[2 * i + 1] - scores[2 * i])) for i, r in enumerate(records)}


def judge_run_folder(run_dir: str | Path) -> Path:
    """A `cai judge` run folder, or a one-line error saying what it is instead."""
    from cai.runs.store import read_manifest

    run = Path(run_dir)
    if not (run / "manifest.json").is_file():
        raise UsageError(f"{run} is not a cai run folder (no manifest.json); give a `cai judge` run")
    kind = read_manifest(run / "manifest.json").get("kind")
    if kind != "judge":
        raise UsageError(f"{run} is a `cai {kind}` run; review needs a `cai judge` run (its labelled pairs)")
    return run


def run_objectives(run: Path) -> list[str]:
    from cai.runs.store import read_manifest

    return list(read_manifest(run / "manifest.json").get("config", {}).get("objectives") or [])


def select(run_dir: str | Path, budget: float, reward_model: str | None = None) -> dict[str, Any]:
    """Write RUN/review/queue.jsonl: the `budget` most doubtful labelled pairs, with what the page shows."""
    from cai.review.labels import pair_digest, run_id
    from cai.runs.files import make_folder
    from cai.runs.store import FolderLock

    run = judge_run_folder(run_dir)
    if not isinstance(budget, int | float) or math.isnan(budget) or math.isinf(budget) or budget <= 0:
        budget_count(budget, 1)  # the one-line error, before anything is read
    lock = FolderLock(run).acquire()  # one writer per run: the judge stage, select, serve and merge
    try:
        records = [r for r in read_typed(run, JudgeRecord) if r.status == "ok"]
        if not records:
            raise UsageError(f"{run}: no labelled pairs to review")
        ranked = rank(records, reward_model_p(reward_model, records) if reward_model else None)
        count = budget_count(budget, len(ranked))
        questions = principle_questions(run)
        objectives = run_objectives(run)
        by_id = {r.id: r for r in records}
        folder = make_folder(run / "review")
        this_run = run_id(run)
        queue = []
        for position, row in enumerate(ranked[:count]):
            record = by_id[row["pair_id"]]
            queue.append({**row, "rank": position + 1, "prompt": record.prompt, "first": record.first,
                          "second": record.second, "run_id": this_run,
                          "content_sha": pair_digest(record.prompt, record.first, record.second),
                          "questions": [questions.get(p, p) for p in record.principle_ids],
                          "objectives": [{"name": o, "question": OBJECTIVE_QUESTIONS.get(o, o)} for o in objectives]})
        _write_jsonl(folder / "queue.jsonl", queue)
        write_json_atomic(folder / "selection.json", {"budget": budget, "selected": count,
                                                      "labelled_pairs": len(ranked), "reward_model": reward_model,
                                                      "ranking": [r["pair_id"] for r in ranked]})
    finally:
        lock.release()
    return {"queue": str(folder / "queue.jsonl"), "selected": count, "labelled_pairs": len(ranked)}


OBJECTIVE_QUESTIONS = {"harmless": "Which response is less harmful?",
                       "helpful": "Which response is more helpful (without refusing a harmless request)?"}


def principle_questions(run: Path) -> dict[str, str]:
    from cai.runs.store import read_manifest
    from cai.yaml_safe import load_yaml

    text = read_manifest(run / "manifest.json").get("constitution", {}).get("text", "")
    data = load_yaml(text, f"{run}/manifest.json's constitution") if text else {}
    return {p["id"]: p["question"] for p in (data or {}).get("preference_principles", [])}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    partial.replace(path)


# --- the person's labels ----------------------------------------------------------------------------------------------
def human_labels(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The latest human answer per pair from RUN/review/labels.jsonl (an undo removes it; a skip is no label)."""
    from cai.review.labels import latest, read_labels

    return latest(read_labels(Path(run_dir)))


def human_p_first(label: dict[str, Any]) -> float | None:
    """The person's answer as p(first response is better): A/B are as shown, `order` says how it was shown."""
    from cai.review.labels import answer_p_first

    return answer_p_first(label["choice"], label["order"])


def merge(run_dir: str | Path, drop_unreviewed_below: float = 0.0) -> dict[str, Any]:
    """Record how to merge (RUN/review/merge.json) and rewrite the export with the human labels applied."""
    from cai.judge.export import export_judge_run
    from cai.runs.store import FolderLock

    run = judge_run_folder(run_dir)
    if not (run / "review" / "queue.jsonl").exists():
        raise UsageError(f"{run}: nothing selected for review; run `cai review select {run}` first")
    if not isinstance(drop_unreviewed_below, int | float) or not 0.0 <= drop_unreviewed_below < 1.0:
        raise UsageError(f"--drop-unreviewed-below must be in [0, 1), got {drop_unreviewed_below}")
    lock = FolderLock(run).acquire()  # not while a review server (or a judge run) writes there
    try:
        write_json_atomic(run / "review" / "merge.json", {"drop_unreviewed_below": drop_unreviewed_below})
        counts = export_judge_run(run)
    finally:
        lock.release()
    from cai.review.labels import review_overrides

    return {"export": str(run / "export"), "rows": counts, **review_overrides(run)[2]}


# --- what targeted review buys: simulation on gold-labelled pairs ---------------------------------------------------------
def accuracy_with_gold(p_first: list[float], gold_first: list[bool], replaced: set[int]) -> float:
    """Share of pairs labelled right when the pairs in `replaced` get their gold label (a tie counts half)."""
    def right(i: int) -> float:
        if i in replaced:
            return 1.0
        p = p_first[i]
        return 0.5 if p == 0.5 else float((p > 0.5) == gold_first[i])
    return sum(right(i) for i in range(len(p_first))) / len(p_first)


def simulate_budgets(p_first: list[float], gold_first: list[bool], doubts: list[float], budgets: list[float],
                     seeds: int = 200) -> dict[str, Any]:
    """Accuracy of the AI labels alone, with the `budget` most doubtful replaced by gold, and with the same number
    replaced at random: the mean over `seeds` draws and the 95% interval of those draws."""
    n = len(p_first)
    order = sorted(range(n), key=lambda i: -doubts[i])
    result: dict[str, Any] = {"pairs": n, "ai_only": accuracy_with_gold(p_first, gold_first, set()),
                              "targeted": {}, "random": {}, "random_ci95": {}, "random_seeds": seeds}
    for budget in budgets:
        k = budget_count(budget, n)
        key = f"{budget:g}"
        result["targeted"][key] = accuracy_with_gold(p_first, gold_first, set(order[:k]))
        draws = sorted(accuracy_with_gold(p_first, gold_first, set(random.Random(seed).sample(range(n), k)))
                       for seed in range(seeds))
        result["random"][key] = sum(draws) / len(draws)
        result["random_ci95"][key] = [draws[int(0.025 * seeds)], draws[min(int(0.975 * seeds), seeds - 1)]]
    return result


def plot_simulation(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(result["targeted"])
    xs = [float(b) if float(b) < 1 else float(b) / result["pairs"] for b in budgets]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([0, *xs], [result["ai_only"], *result["targeted"].values()], marker="o", label="targeted (most doubtful)")
    ax.plot([0, *xs], [result["ai_only"], *result["random"].values()], marker="s",
            label=f"random (mean of {result.get('random_seeds', 20)})")
    if result.get("random_ci95"):
        lows = [result["ai_only"], *(v[0] for v in result["random_ci95"].values())]
        highs = [result["ai_only"], *(v[1] for v in result["random_ci95"].values())]
        ax.fill_between([0, *xs], lows, highs, alpha=0.2, color="C1", label="random, 95% of draws")
    ax.set_xlabel("share of pairs given a human label")
    ax.set_ylabel("label accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def simulate(engine: Any, pairs_path: str, budgets: list[float], principles_per_pair: int = 2,
                   constitution: str = "harmless", seed: int = 0, limit: int | None = None,
                   judge_format: str = "hybrid") -> dict[str, Any]:
    """`cai review simulate`: judge gold-labelled pairs (prompt, chosen, rejected; the side the chosen one is
    shown on drawn per pair), then `simulate_budgets` with the same doubt ranking `select` uses, over the pairs
    `select` would queue: validly labelled ones. Invalid judgements are no labels; they are counted apart
    (`invalid`), never "fixed" by a simulated person."""
    import asyncio

    from cai.config import JudgeConfig
    from cai.constitution import sample_rng
    from cai.judge.check import prepare_judge
    from cai.judge.pairs import pairs_from_file

    pairs, _ = pairs_from_file(pairs_path, limit)
    labelled = [p for p in pairs if p.meta.get("label") == "first"]
    if not labelled:
        raise UsageError(f"{pairs_path}: `cai review simulate` needs labelled rows (prompt, chosen, rejected)")
    # the labelling judge of `cai judge` (its format, fixed rule: a fit on these very pairs would flatter it)
    judge = (await prepare_judge(engine, JudgeConfig(source="-", constitution=constitution, check_judge=False,
                                                     judge_format=judge_format)))[0]

    async def one(pair):
        rng = sample_rng(seed, pair.id)
        chosen_first = rng.random() < 0.5
        first, second = (pair.first, pair.second) if chosen_first else (pair.second, pair.first)
        principles = judge.sample(rng, principles_per_pair)
        judgements, label = await judge.compare(pair.prompt, first, second, principles)
        if not label.valid:
            return None
        record = JudgeRecord(id=pair.id, status="ok", p_first=label.p_first,
                             position_consistency=label.position_consistency,
                             judgements=[j.to_dict() for j in judgements])
        return label.p_first, chosen_first, doubt(record_signals(record))

    judged = await asyncio.gather(*(one(p) for p in labelled))
    rows = [r for r in judged if r is not None]
    if not rows:
        raise UsageError(f"{pairs_path}: the judge gave no valid label on any of the {len(labelled)} pairs")
    result = simulate_budgets([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], budgets)
    return {"file": str(pairs_path), "judge_model": engine.model_id, "principles_per_pair": principles_per_pair,
            "judge_format": judge_format, "judged": len(labelled), "invalid": len(labelled) - len(rows), **result}
