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
    principles   min(1, 2 std(p_k))        its principles disagree with each other (p_k: a principle's two-order mean)
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
from cai.records import read_records
from cai.store import read_jsonl, write_json_atomic

SIGNALS = ("margin", "position", "principles", "reward_model")


def principle_means(judgements: list[dict[str, Any]]) -> list[float]:
    """Each principle's two-order mean p_first (principles with both orders valid only)."""
    by_principle: dict[str, dict[str, float]] = {}
    for j in judgements:
        if j.get("valid"):
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
    if budget <= 0:
        raise UsageError(f"--budget must be positive, got {budget}")
    return min(total, round(budget * total) if budget < 1 else int(budget))


def rank(records: list[dict[str, Any]], rm_p: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Labelled pairs with their doubt, most doubtful first (ties in input order)."""
    ranked = []
    for r in records:
        signals = doubt_signals(r["p_first"], r.get("position_consistency"), principle_means(r.get("judgements", [])),
                                (rm_p or {}).get(r["id"]))
        ranked.append({"pair_id": r["id"], "doubt": round(doubt(signals), 6), "signals": signals,
                       "reason": reason(signals), "p_first": r["p_first"]})
    return sorted(ranked, key=lambda row: -row["doubt"])


def reward_model_p(reward_model: str, records: list[dict[str, Any]]) -> dict[str, float]:
    """sigma(r_first - r_second) for each pair, from a `cai train rm` model."""
    from cai.train.ensemble import make_scorer

    scorer = make_scorer(reward_model)
    scores = scorer.score([r["prompt"] for r in records for _ in (0, 1)],
                          [text for r in records for text in (r["first"], r["second"])])
    return {r["id"]: 1.0 / (1.0 + math.exp(scores[2 * i + 1] - scores[2 * i])) for i, r in enumerate(records)}


def select(run_dir: str | Path, budget: float, reward_model: str | None = None) -> dict[str, Any]:
    """Write RUN/review/queue.jsonl: the `budget` most doubtful labelled pairs, with what the page shows."""
    run = Path(run_dir)
    records = [r for r in read_records(run) if r["status"] == "ok"]
    if not records:
        raise UsageError(f"{run}: no labelled pairs to review (is it a `cai judge` run?)")
    ranked = rank(records, reward_model_p(reward_model, records) if reward_model else None)
    count = budget_count(budget, len(ranked))
    questions = principle_questions(run)
    by_id = {r["id"]: r for r in records}
    folder = run / "review"
    folder.mkdir(exist_ok=True)
    queue = []
    for position, row in enumerate(ranked[:count]):
        record = by_id[row["pair_id"]]
        queue.append({**row, "rank": position + 1, "prompt": record["prompt"], "first": record["first"],
                      "second": record["second"],
                      "questions": [questions.get(p, p) for p in record.get("principle_ids", [])]})
    _write_jsonl(folder / "queue.jsonl", queue)
    write_json_atomic(folder / "selection.json", {"budget": budget, "selected": count, "labelled_pairs": len(ranked),
                                                  "reward_model": reward_model, "ranking": [r["pair_id"] for r in ranked]})
    return {"queue": str(folder / "queue.jsonl"), "selected": count, "labelled_pairs": len(ranked)}


def principle_questions(run: Path) -> dict[str, str]:
    import yaml

    from cai.store import read_manifest

    text = read_manifest(run / "manifest.json").get("constitution", {}).get("text", "")
    data = yaml.safe_load(text) if text else {}
    return {p["id"]: p["question"] for p in (data or {}).get("preference_principles", [])}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    partial.replace(path)


# --- the person's labels ----------------------------------------------------------------------------------------------
def human_labels(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The latest human answer per pair from RUN/review/labels.jsonl (an undo removes it; a skip is no label)."""
    labels: dict[str, dict[str, Any]] = {}
    for row in read_jsonl(Path(run_dir) / "review" / "labels.jsonl"):
        if row.get("undo"):
            labels.pop(row["pair_id"], None)
        else:
            labels[row["pair_id"]] = row
    return labels


def human_p_first(label: dict[str, Any]) -> float | None:
    """The person's answer as p(first response is better): A/B are as shown, `order` says how it was shown."""
    choice = label["choice"]
    if choice == "tie":
        return 0.5
    if choice not in ("A", "B"):
        return None  # skipped
    first_shown_as_a = label["order"] == "AB"
    return 1.0 if (choice == "A") == first_shown_as_a else 0.0


def merge(run_dir: str | Path, drop_unreviewed_below: float = 0.0) -> dict[str, Any]:
    """Record how to merge (RUN/review/merge.json) and rewrite the export with the human labels applied."""
    from cai.export import export_judge_run

    run = Path(run_dir)
    if not (run / "review" / "queue.jsonl").exists():
        raise UsageError(f"{run}: nothing selected for review; run `cai review select {run}` first")
    if not 0.0 <= drop_unreviewed_below < 1.0:
        raise UsageError(f"--drop-unreviewed-below must be in [0, 1), got {drop_unreviewed_below}")
    write_json_atomic(run / "review" / "merge.json", {"drop_unreviewed_below": drop_unreviewed_below})
    counts = export_judge_run(run)
    return {"export": str(run / "export"), "rows": counts, **review_summary(run)}


def review_summary(run: Path) -> dict[str, Any]:
    selection = json.loads((run / "review" / "selection.json").read_text())
    labels = human_labels(run)
    return {"reviewed": sum(human_p_first(label) is not None for label in labels.values()),
            "skipped": sum(human_p_first(label) is None for label in labels.values()),
            "budget": selection["budget"], "selected": selection["selected"]}


def review_overrides(run: Path) -> tuple[dict[str, float], set[str], dict[str, Any]] | None:
    """For the export: human p_first by pair, the unreviewed pairs to drop, and the card's summary; None when
    no merge was asked for."""
    if not (run / "review" / "merge.json").exists():
        return None
    settings = json.loads((run / "review" / "merge.json").read_text())
    human = {pid: p for pid, label in human_labels(run).items() if (p := human_p_first(label)) is not None}
    ranking = json.loads((run / "review" / "selection.json").read_text())["ranking"]
    least_trusted = ranking[: round(settings["drop_unreviewed_below"] * len(ranking))]
    drop = {pid for pid in least_trusted if pid not in human}
    return human, drop, {**review_summary(run), **settings, "dropped_unreviewed": len(drop)}


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
                     seeds: int = 20) -> dict[str, Any]:
    """Accuracy of the AI labels alone, with the `budget` most doubtful replaced by gold, and with the same number
    replaced at random (mean over `seeds` draws)."""
    n = len(p_first)
    order = sorted(range(n), key=lambda i: -doubts[i])
    result: dict[str, Any] = {"pairs": n, "ai_only": accuracy_with_gold(p_first, gold_first, set()),
                              "targeted": {}, "random": {}}
    for budget in budgets:
        k = budget_count(budget, n)
        key = f"{budget:g}"
        result["targeted"][key] = accuracy_with_gold(p_first, gold_first, set(order[:k]))
        draws = [accuracy_with_gold(p_first, gold_first, set(random.Random(seed).sample(range(n), k)))
                 for seed in range(seeds)]
        result["random"][key] = sum(draws) / len(draws)
    return result


def plot_simulation(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(result["targeted"])
    xs = [float(b) if float(b) < 1 else float(b) / result["pairs"] for b in budgets]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([0, *xs], [result["ai_only"], *result["targeted"].values()], marker="o", label="targeted (most doubtful)")
    ax.plot([0, *xs], [result["ai_only"], *result["random"].values()], marker="s", label="random (mean of 20)")
    ax.set_xlabel("share of pairs given a human label")
    ax.set_ylabel("label accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def simulate(engine: Any, pairs_path: str, budgets: list[float], principles_per_pair: int = 2,
                   constitution: str = "harmless", seed: int = 0, limit: int | None = None) -> dict[str, Any]:
    """`cai review simulate`: judge gold-labelled pairs (prompt, chosen, rejected; the side the chosen one is
    shown on drawn per pair), then `simulate_budgets` with the same doubt ranking `select` uses. An invalid
    judgement is no label (it counts half) and the most doubtful."""
    import asyncio

    from cai.constitution import load_constitution, sample_rng
    from cai.judge import JudgeSettings, judge_pair, option_token_ids
    from cai.pairs import pairs_from_file

    pairs, _ = pairs_from_file(pairs_path, limit)
    labelled = [p for p in pairs if p.meta.get("label") == "first"]
    if not labelled:
        raise UsageError(f"{pairs_path}: `cai review simulate` needs labelled rows (prompt, chosen, rejected)")
    c = load_constitution(constitution)
    option_ids = option_token_ids(engine.local_tokenizer())

    async def one(pair):
        rng = sample_rng(seed, pair.id)
        chosen_first = rng.random() < 0.5
        first, second = (pair.first, pair.second) if chosen_first else (pair.second, pair.first)
        principles = c.sample_preference_principles(rng, principles_per_pair)
        judgements, label = await judge_pair(engine, pair.prompt, first, second, principles, JudgeSettings(),
                                             option_ids)
        if not label.valid:
            return 0.5, chosen_first, 1.0
        signals = doubt_signals(label.p_first, label.position_consistency,
                                principle_means([j.to_dict() for j in judgements]))
        return label.p_first, chosen_first, doubt(signals)

    rows = await asyncio.gather(*(one(p) for p in labelled))
    result = simulate_budgets([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], budgets)
    return {"file": str(pairs_path), "judge_model": engine.model_id, "principles_per_pair": principles_per_pair,
            **result}
