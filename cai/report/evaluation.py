"""The report's evaluation section (win-rates, over-refusal, lengths) and its verdict (good / unclear / bad)."""

from __future__ import annotations

import html
from pathlib import Path

from cai.evaluate.results import EvalResults, WinRate
from cai.report.plots import fmt as _fmt
from cai.report.plots import plt as _plt
from cai.report.plots import save as _save
from cai.report.plots import section as _section


def eval_section(run: Path, folder: Path) -> tuple[str, list[str]]:
    path = run / "eval" / "results.json"
    if not path.exists():
        return "", []
    results = EvalResults.read(path)
    harm, refusal = results.harmlessness, results.over_refusal
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    if harm.win_rate is not None:
        low, high = harm.interval
        left.bar(["trained vs base"], [harm.win_rate], yerr=[[harm.win_rate - low], [high - harm.win_rate]],
                 color="#55a868", capsize=8)
    left.axhline(0.5, color="grey", linestyle="--")
    left.set_ylim(0, 1)
    left.set_title("Harmlessness win-rate (95% CI)")
    means, below, above = [], [], []
    for reading in (refusal.base, refusal.trained):
        mean = reading.mean_p_refusal or 0.0
        low, high = (list(reading.ci95) + [None, None])[:2]
        means.append(mean)
        below.append(mean - low if low is not None else 0.0)
        above.append(high - mean if high is not None else 0.0)
    right.bar(["base", "trained"], means, yerr=[below, above], color=["#dd8452", "#4c72b0"], capsize=8)
    right.set_ylim(0, 1)
    right.set_title("Mean refusal probability, benign (95% CI)")
    image = _save(fig, folder, "eval.png")
    lengths = results.mean_length_tokens
    low, high = harm.interval
    body = (f"<p>Win-rate {_fmt(harm.win_rate)} (95% CI {_fmt(low)} to {_fmt(high)}) over {harm.valid} judged "
            f"prompts (length-controlled {_fmt(harm.length_controlled_win_rate)}); hard win share "
            f"{_fmt(harm.hard_win_share)}. Over-refusal: base {_fmt(refusal.base.refusal_rate)}, trained "
            f"{_fmt(refusal.trained.refusal_rate)} (mean refusal probability {_fmt(refusal.base.mean_p_refusal)} "
            f"and {_fmt(refusal.trained.mean_p_refusal)}). "
            f"Mean answer length: base {lengths['base']:.1f} tokens, trained {lengths['trained']:.1f}.</p>"
            + _helpfulness_text(results.helpfulness)
            + f'<img src="{image}" alt="eval results">')
    return _section("Evaluation", body), [image]


def _helpfulness_text(helpful: WinRate | None) -> str:
    if helpful is None:
        return ""
    if helpful.win_rate is None:
        return f"<p>Helpfulness win-rate: n/a ({html.escape(helpful.reason or 'no valid comparison')}).</p>"
    low, high = helpful.interval
    return (f"<p>Helpfulness win-rate on benign prompts (helpful principles): {_fmt(helpful.win_rate)} (95% CI "
            f"{_fmt(low)} to {_fmt(high)}) over {helpful.valid} judged prompts (length-controlled "
            f"{_fmt(helpful.length_controlled_win_rate)}).</p>")


def verdict_section(run: Path) -> str:
    """The answers first: did it work, and can the judge tell (`diagnostics.verdict`)."""
    path = run / "eval" / "results.json"
    if not path.exists():
        return ""
    from cai.evaluate.diagnostics import verdict

    items = "".join(f'<li class="{html.escape(v["mark"])}"><b>{html.escape(v["mark"])}</b>: {html.escape(v["text"])}</li>'
                    for v in verdict(EvalResults.read(path)))
    return f'<section id="verdict"><h2>Verdict</h2><ul>{items}</ul></section>'


def w2s_section(run: Path, folder: Path) -> tuple[str, list[str]]:
    """`cai eval w2s`'s result (RUN/w2s.json, or RUN/w2s/w2s.json inside a pipeline run): accuracy of the weak
    supervisor, each weak-to-strong student and the ceiling, with intervals, and each loss's PGR."""
    path = next((p for p in (run / "w2s.json", run / "w2s" / "w2s.json") if p.is_file()), None)
    if path is None:
        return "", []
    import json

    report = json.loads(path.read_text(encoding="utf-8"))
    arms = list(report["accuracy"])
    values = [report["accuracy"][a]["accuracy"] for a in arms]
    below = [v - report["accuracy"][a]["ci95"][0] for a, v in zip(arms, values, strict=True)]
    above = [report["accuracy"][a]["ci95"][1] - v for a, v in zip(arms, values, strict=True)]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    colours = ["#dd8452"] + ["#4c72b0"] * (len(arms) - 2) + ["#55a868"]
    ax.bar(arms, values, yerr=[below, above], color=colours, capsize=8)
    ax.axhline(0.5, color="grey", linestyle="--")
    ax.set_ylim(0, 1)
    ax.set_title("Held-out accuracy: weak / weak-to-strong / ceiling (95% CI)")
    image = _save(fig, folder, "w2s.png")
    rows = "".join(
        f"<tr><td>{html.escape(a)}</td><td>{_fmt(report['accuracy'][a]['accuracy'])}</td>"
        f"<td>{_fmt(report['accuracy'][a]['ci95'][0])}-{_fmt(report['accuracy'][a]['ci95'][1])}</td>"
        f"<td>{_fmt(report['pgr'].get(a, {}).get('pgr')) if a in report['pgr'] else ''}</td>"
        f"<td>{_ci(report['pgr'][a]['ci95']) if a in report['pgr'] else ''}</td></tr>" for a in arms)
    body = (f"<p>{html.escape(report['verdict'])}</p><p>Truth: {html.escape(report['truth'])} ({report['pairs']} "
            f"pairs, {report['held_out_per_seed']} held out per seed, {report['seeds']} seeds). Weak supervisor: "
            f"{html.escape(report['weak_supervisor'])}. Student: {html.escape(report['student'])}.</p>"
            f"<table><tr><th>arm</th><th>accuracy</th><th>95% CI</th><th>PGR</th><th>PGR 95% CI</th></tr>{rows}"
            f"</table><img src=\"{image}\" alt=\"weak-to-strong accuracy\">")
    return _section("Weak-to-strong", body), [image]


def _ci(interval: list) -> str:
    return "n/a" if interval[0] is None else f"{_fmt(interval[0])}-{_fmt(interval[1])}"
