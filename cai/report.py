"""`cai report RUN`: a static HTML page (plots saved as PNG beside it) that shows what a `cai run` did.

    cai report outputs/quickstart

Sections: principle usage; how often revisions changed the text and how lengths moved; judge probabilities,
position consistency and invalid rate; chosen vs rejected lengths; training curves; eval win-rate with its
interval and over-refusal; a few example chains. Everything is local: no scripts or fonts from the network.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

from cai.errors import UsageError
from cai.records import read_records
from cai.store import read_jsonl


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, folder: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(folder / name, dpi=110)
    _plt().close(fig)
    return name


def _records(path: Path) -> list[dict]:
    return read_records(path.parent) if path.exists() else []


def generate_section(run: Path, folder: Path) -> tuple[str, list[str]]:
    records = [r for r in _records(run / "generate" / "records.jsonl") if r["status"] == "ok"]
    if not records:
        return "", []
    plt = _plt()
    images = []
    usage = Counter(p for r in records for p in r["principle_ids"])
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.28 * len(usage))))
    names = [n for n, _ in usage.most_common()][::-1]
    ax.barh(names, [usage[n] for n in names], color="#4c72b0")
    ax.set_xlabel("critiques using the principle")
    ax.set_title("Principle usage")
    images.append(_save(fig, folder, "principle_usage.png"))

    initial = [len(r["initial"].split()) for r in records]
    final = [len(r["final"].split()) for r in records]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.hist([initial, final], bins=15, label=["initial", "final revision"], color=["#dd8452", "#55a868"])
    ax.set_xlabel("words")
    ax.set_ylabel("samples")
    ax.set_title("Response length before and after revision")
    ax.legend()
    images.append(_save(fig, folder, "revision_lengths.png"))
    changed = sum(r["final"].strip() != r["initial"].strip() for r in records)
    chains = "".join(_chain_html(r) for r in records[:3])
    on_topic, critiques = on_topic_critiques(run, records)
    stats_path = run / "generate" / "export" / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    degenerate = ", ".join(f"{n} {reason}" for reason, n in sorted(stats.get("degenerate_reasons", {}).items()))
    body = (f"<p>{len(records)} samples; the final revision differs from the initial response in {changed} "
            f"({changed / len(records):.0%}). Mean length {sum(initial) / len(initial):.1f} words before, "
            f"{sum(final) / len(final):.1f} after. On-topic critiques (the principle's tags match the prompt's): "
            f"{on_topic} of {critiques}. Degenerate final responses: {stats.get('degenerate', 'n/a')}"
            f"{f' ({html.escape(degenerate)})' if degenerate else ''}.</p>"
            + "".join(f'<img src="{i}" alt="{i}">' for i in images)
            + f"<h3>Example chains</h3>{chains}")
    return _section("Critique and revision", body), images


def on_topic_critiques(run: Path, records: list[dict]) -> tuple[int, int]:
    """Critiques whose principle shares a tag with its prompt, of all critiques (tagged prompts only count)."""
    import yaml

    from cai.store import read_manifest

    text = read_manifest(run / "generate" / "manifest.json").get("constitution", {}).get("text", "")
    tags = {p["id"]: set(p.get("tags", [])) for p in (yaml.safe_load(text) or {}).get("principles", [])} if text else {}
    pairs = [(set(r.get("tags", [])), pid) for r in records if r.get("tags") for pid in r["principle_ids"]]
    return sum(bool(prompt & tags.get(pid, set())) for prompt, pid in pairs), len(pairs)


def _chain_html(record: dict) -> str:
    parts = [f"<p><b>Prompt</b> ({html.escape(', '.join(record.get('tags', [])))}): "
             f"{html.escape(record['prompt'][-1]['content'])}</p>"]
    for turn in record["turns"]:
        label = turn["stage"] if turn["stage"] == "initial" else f"{turn['stage']} (principle {turn['principle_id']})"
        if turn.get("request"):
            parts.append(f"<p class='req'><b>{html.escape(turn['stage'])} request</b>: "
                         f"{html.escape(turn['request'])}</p>")
        parts.append(f"<p><b>{html.escape(label)}</b>: {html.escape(turn['text'])}</p>")
    return f"<div class='chain'>{''.join(parts)}</div>"


def judge_section(run: Path, folder: Path) -> tuple[str, list[str]]:
    records = _records(run / "judge" / "records.jsonl")
    if not records:
        return "", []
    plt = _plt()
    valid = [r for r in records if r["status"] == "ok"]
    invalid = len(records) - len(valid)
    images = []
    fig, ax = plt.subplots(figsize=(7, 3))
    p_chosen = [max(r["p_first"], 1 - r["p_first"]) for r in valid]
    ax.hist(p_chosen, bins=10, range=(0.5, 1.0), color="#8172b3")
    ax.set_xlabel("p_chosen (soft label)")
    ax.set_ylabel("pairs")
    ax.set_title("Judge confidence")
    images.append(_save(fig, folder, "judge_p_chosen.png"))
    fig, ax = plt.subplots(figsize=(7, 3))
    chosen_len = [len((r["first"] if r["p_first"] >= 0.5 else r["second"]).split()) for r in valid]
    rejected_len = [len((r["second"] if r["p_first"] >= 0.5 else r["first"]).split()) for r in valid]
    ax.hist([chosen_len, rejected_len], bins=15, label=["chosen", "rejected"], color=["#55a868", "#c44e52"])
    ax.set_xlabel("words")
    ax.set_title("Chosen vs rejected length")
    ax.legend()
    images.append(_save(fig, folder, "chosen_rejected_lengths.png"))
    consistency = [r["position_consistency"] for r in valid if r["position_consistency"] is not None]
    mean_consistency = sum(consistency) / len(consistency) if consistency else float("nan")
    revision_wins = sum((r["p_first"] >= 0.5) == (r["meta"].get("first") == "final") for r in valid)
    body = (f"<p>{len(records)} pairs judged: {len(valid)} labelled, {invalid} invalid "
            f"({invalid / len(records):.0%}). Mean position consistency {mean_consistency:.2f}. "
            f"The revision was preferred in {revision_wins} of {len(valid)} pairs.</p>"
            + "".join(f'<img src="{i}" alt="{i}">' for i in images))
    return _section("AI judge", body), images


def training_section(run: Path, folder: Path) -> tuple[str, list[str]]:
    plt = _plt()
    html_parts, images = [], []
    for stage in ("sft", "dpo", "ppo"):
        path = run / stage / "metrics.jsonl"
        if not path.exists():
            continue
        rows = [r for r in read_jsonl(path) if not any(k.startswith("eval/") for k in r)]
        keys = [k for k in ("loss", "rewards/margins", "rewards/accuracies", "objective/scores", "objective/kl")
                if any(k in r for r in rows)]
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
    path = run / "online" / "metrics.jsonl"
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


def eval_section(run: Path, folder: Path) -> tuple[str, list[str]]:
    path = run / "eval" / "results.json"
    if not path.exists():
        return "", []
    results = json.loads(path.read_text())
    plt = _plt()
    harm = results["harmlessness"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    if harm["win_rate"] is not None:
        low, high = harm["ci95"]
        left.bar(["trained vs base"], [harm["win_rate"]], yerr=[[harm["win_rate"] - low], [high - harm["win_rate"]]],
                 color="#55a868", capsize=8)
    left.axhline(0.5, color="grey", linestyle="--")
    left.set_ylim(0, 1)
    left.set_title("Harmlessness win-rate (95% CI)")
    refusal = results["over_refusal"]
    means, below, above = [], [], []
    for name in ("base", "trained"):
        mean = refusal[name].get("mean_p_refusal") or 0.0
        low, high = refusal[name].get("ci95") or [None, None]
        means.append(mean)
        below.append(mean - low if low is not None else 0.0)
        above.append(high - mean if high is not None else 0.0)
    errors = [below, above]
    right.bar(["base", "trained"], means, yerr=errors, color=["#dd8452", "#4c72b0"], capsize=8)
    right.set_ylim(0, 1)
    right.set_title("Mean refusal probability, benign (95% CI)")
    image = _save(fig, folder, "eval.png")
    lengths = results["mean_length_tokens"]
    body = (f"<p>Win-rate {_fmt(harm['win_rate'])} (95% CI {_fmt(harm['ci95'][0])} to {_fmt(harm['ci95'][1])}) over "
            f"{harm['valid']} judged prompts (length-controlled {_fmt(harm.get('length_controlled_win_rate'))}); "
            f"hard win share {_fmt(harm['hard_win_share'])}. Over-refusal: base "
            f"{_fmt(refusal['base']['refusal_rate'])}, trained {_fmt(refusal['trained']['refusal_rate'])} "
            f"(mean refusal probability {_fmt(refusal['base'].get('mean_p_refusal'))} and "
            f"{_fmt(refusal['trained'].get('mean_p_refusal'))}). "
            f"Mean answer length: base {lengths['base']:.1f} tokens, trained {lengths['trained']:.1f}.</p>"
            + _helpfulness_text(results.get("helpfulness"))
            + f'<img src="{image}" alt="eval results">')
    return _section("Evaluation", body), [image]


def _helpfulness_text(helpful: dict | None) -> str:
    if not helpful:
        return ""
    if helpful.get("win_rate") is None:
        return f"<p>Helpfulness win-rate: n/a ({html.escape(helpful.get('reason', 'no valid comparison'))}).</p>"
    low, high = helpful["ci95"]
    return (f"<p>Helpfulness win-rate on benign prompts (helpful principles): {_fmt(helpful['win_rate'])} (95% CI "
            f"{_fmt(low)} to {_fmt(high)}) over {helpful['valid']} judged prompts (length-controlled "
            f"{_fmt(helpful.get('length_controlled_win_rate'))}).</p>")


def _fmt(value: Any) -> str:
    return value if isinstance(value, str) else "n/a" if value is None else f"{value:.2f}"


def verdict_section(run: Path) -> str:
    """The answers first: did it work, and can the judge tell (`diagnostics.verdict`)."""
    path = run / "eval" / "results.json"
    if not path.exists():
        return ""
    from cai.diagnostics import verdict

    items = "".join(f'<li class="{html.escape(v["mark"])}"><b>{html.escape(v["mark"])}</b>: {html.escape(v["text"])}</li>'
                    for v in verdict(json.loads(path.read_text())))
    return f'<section id="verdict"><h2>Verdict</h2><ul>{items}</ul></section>'


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


STYLE = """body{font-family:sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
img{max-width:100%;display:block;margin:1em 0;border:1px solid #eee}
.chain{border-left:3px solid #8172b3;padding-left:1em;margin:1em 0}.req{color:#555;font-size:90%}
section{margin-bottom:2.5em}#verdict li{margin:.4em 0}.good b{color:#2a7d3b}.bad b{color:#b3261e}
.unclear b{color:#8a6d00}"""
# Counts images that loaded, so a browser test (or a person) can see at a glance that none is broken.
SCRIPT = """window.addEventListener('load',function(){var ok=0,imgs=document.images;
for(var i=0;i<imgs.length;i++){if(imgs[i].complete&&imgs[i].naturalWidth>0)ok++;}
document.body.setAttribute('data-images-loaded',ok+'/'+imgs.length);});"""


def write_report(run_dir: str | Path) -> Path:
    """Write `run_dir/report/index.html` and its PNG plots; returns the page's path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UsageError(f"{run} is not a folder (a `cai run` output folder, such as outputs/quickstart)")
    if not any((run / stage).exists() for stage in ("generate", "judge", "sft", "dpo", "online", "eval")):
        raise UsageError(f"{run} holds no cai stage output to report on")
    folder = run / "report"
    folder.mkdir(parents=True, exist_ok=True)
    sections = []
    for build in (generate_section, judge_section, training_section, online_section, eval_section):
        text, _ = build(run, folder)
        if text:
            sections.append(text)
    if not sections:
        raise UsageError(f"{run} holds no cai stage output to report on")
    verdict = verdict_section(run)
    if verdict:
        sections.insert(0, verdict)
    title = f"cai report: {run.name}"
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}"
            f"<script>{SCRIPT}</script></body></html>")
    (folder / "index.html").write_text(page, encoding="utf-8")
    return folder / "index.html"
