"""The report's sections on training: each trained stage's curves (those the registry names), PPO's cost and
lambda and its proxy reward against sqrt(KL), and online DPO's win-rates and KL over rounds."""

from __future__ import annotations

from pathlib import Path

from cai.report.plots import fmt as _fmt
from cai.report.plots import plt as _plt
from cai.report.plots import save as _save
from cai.report.plots import section as _section
from cai.runs.store import read_jsonl


def training_section(run: Path, folder: Path) -> tuple[str, list[str]]:
    plt = _plt()
    html_parts, images = [], []
    from cai.registry import STAGES

    for stage in (s.name for s in STAGES.values() if s.curves):  # every stage that logs curves, in pipeline order
        path = run / stage / "metrics.jsonl"
        if not path.exists():
            continue
        rows = [r for r in read_jsonl(path) if not any(k.startswith("eval/") for k in r)]
        keys = [k for k in STAGES[stage].curves if any(k in r for r in rows)]
        if not keys:
            continue
        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            points = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color="#4c72b0")
            ax.set_title(key)
            ax.set_xlabel("step")
        fig.suptitle(f"{stage} training")
        images.append(_save(fig, folder, f"train_{stage}.png"))
        html_parts.append(f'<img src="train_{stage}.png" alt="{stage} training curves">')
    if (run / "ppo" / "metrics.jsonl").exists():
        rows = list(read_jsonl(run / "ppo" / "metrics.jsonl"))
        for image, alt, text in ((cost_plot(rows, folder), "PPO cost and lambda per step", COST_TEXT),
                                 (overoptimisation_plot(rows, folder), "proxy reward against sqrt(KL)", OVEROPT_TEXT)):
            if image:
                images.append(image)
                html_parts.append(f'<img src="{image}" alt="{alt}"><p>{text}</p>')
    return (_section("Training", "".join(html_parts)) if html_parts else ""), images


COST_TEXT = ("Safe RLHF: the mean episode cost against its limit, and the Lagrange multiplier lambda that weighs "
             "cost against reward. lambda should rise while the cost is above the limit and fall once it is below.")
OVEROPT_TEXT = ("Held-out proxy reward against the square root of the KL to the reference at each evaluation: a "
                "reward that keeps rising while the distance grows is what over-optimisation of a learned reward "
                "looks like (Gao et al. 2022). With `--eval-judge`, the AI judge's win-rate of the same answers "
                "over the step-0 answers is plotted beside it (green): a reward that climbs while the judge's "
                "win-rate does not is being hacked.")


def cost_plot(rows: list[dict], folder: Path) -> str | None:
    """PPO under a cost model: mean episode cost (with the limit) and lambda per step."""
    points = [(r["step"], r["objective/cost"], r["objective/lambda"], r.get("objective/cost_violation"))
              for r in rows if "objective/lambda" in r]
    if not points:
        return None
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    steps = [p[0] for p in points]
    left.plot(steps, [p[1] for p in points], marker="o", color="#c44e52", label="mean episode cost")
    if points[0][3] is not None:
        limit = points[0][1] - points[0][3]
        left.axhline(limit, color="grey", linestyle="--", label=f"limit {limit:g}")
    left.set_xlabel("step")
    left.set_title("cost per step")
    left.legend(fontsize=7)
    right.plot(steps, [p[2] for p in points], marker="o", color="#4c72b0")
    right.set_xlabel("step")
    right.set_title("lambda per step")
    return _save(fig, folder, "ppo_cost_lambda.png")


def online_section(run: Path, folder: Path) -> tuple[str, list[str]]:
    """Online iterative DPO: the judged win-rates of each round (against the start and the round before) and
    the KL to the starting model, per round."""
    path = next((run / name / "metrics.jsonl" for name in ("online-dpo", "online")  # runs made before the rename
                 if (run / name / "metrics.jsonl").exists()), run / "online-dpo" / "metrics.jsonl")
    if not path.exists():
        return "", []
    rows = sorted(read_jsonl(path), key=lambda r: r["round"])
    if not rows:
        return "", []
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    rounds = [r["round"] for r in rows]
    for key, color, label in (("vs_start", "#55a868", "vs start"), ("vs_previous", "#4c72b0", "vs previous round")):
        points = [(r["round"], r[key]) for r in rows if r[key]["win_rate"] is not None]
        xs, ys = [p[0] for p in points], [p[1]["win_rate"] for p in points]
        errors = [[y - p[1]["ci95"][0] for y, p in zip(ys, points, strict=True)],
                  [p[1]["ci95"][1] - y for y, p in zip(ys, points, strict=True)]]
        left.errorbar(xs, ys, yerr=errors, marker="o", capsize=4, color=color, label=label)
    left.axhline(0.5, color="grey", linestyle="--")
    left.set_ylim(0, 1)
    left.set_xticks(rounds)
    left.set_xlabel("round")
    left.set_title("judged win-rate, held-out (95% CI)")
    left.legend(fontsize=7)
    right.plot(rounds, [r["kl_to_start"] for r in rows], marker="o", color="#c44e52")
    right.set_xticks(rounds)
    right.set_xlabel("round")
    right.set_title("KL to the starting model")
    image = _save(fig, folder, "online_rounds.png")
    last = rows[-1]
    body = (f"<p>{len(rows)} round(s) of sample -> judge -> DPO. After round {last['round']}: win-rate against the "
            f"start {_fmt(last['vs_start']['win_rate'])} (95% CI {_fmt(last['vs_start']['ci95'][0])} to "
            f"{_fmt(last['vs_start']['ci95'][1])}), against the round before {_fmt(last['vs_previous']['win_rate'])}"
            f"; label confidence {_fmt(last['label_confidence'])}, KL to the start {_fmt(last['kl_to_start'])}."
            f'</p><img src="{image}" alt="online rounds">')
    return _section("Online rounds", body), [image]


def overoptimisation_plot(rows: list[dict], folder: Path) -> str | None:
    """PPO's held-out proxy reward against sqrt(KL) per evaluation step."""
    points = [(r["eval/objective/kl"], r["eval/objective/scores"], r["step"]) for r in rows
              if "eval/objective/kl" in r and "eval/objective/scores" in r]
    if len(points) < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    xs = [max(kl, 0.0) ** 0.5 for kl, _, _ in points]
    ax.plot(xs, [score for _, score, _ in points], marker="o", color="#8172b3")
    for x, (_, score, step) in zip(xs, points, strict=True):
        ax.annotate(f"step {step}", (x, score), fontsize=7)
    ax.set_xlabel("sqrt(KL to the reference)")
    ax.set_ylabel("held-out proxy reward", color="#8172b3")
    ax.set_title("PPO: reward vs distance")
    judged = [(max(r["eval/objective/kl"], 0.0) ** 0.5, r["eval/judge_win_rate"]) for r in rows
              if "eval/judge_win_rate" in r and "eval/objective/kl" in r]
    if judged:  # the judge's view of the same answers: does it follow the proxy reward?
        twin = ax.twinx()
        twin.plot([x for x, _ in judged], [w for _, w in judged], marker="s", color="#55a868")
        twin.axhline(0.5, color="#55a868", linestyle=":")
        twin.set_ylim(0, 1)
        twin.set_ylabel("judge win-rate vs step 0", color="#55a868")
    return _save(fig, folder, "ppo_overoptimisation.png")
