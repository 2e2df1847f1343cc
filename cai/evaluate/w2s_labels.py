"""The two label sources of `cai eval w2s` (cai/evaluate/w2s.py): the truth (labelled pairs or a person's review
labels) and the weak supervisor's labels (a judge, cross-fitted or with a calibration file, or a reward model).

    rows, described = truth_rows("prompts/judge-eval.jsonl")
    weak = await weak_labels(config, out, rows)       # {"supervisor", "p": {pair id: P(chosen better)}, "invalid"}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cai.errors import UsageError


def truth_rows(source: str | None) -> tuple[list[dict[str, Any]], str]:
    """(prompt, chosen, rejected, id, category) rows of the truth, and what they are."""
    from cai.judge.pairs import pairs_from_file
    from cai.resources import data_dir

    path = Path(source) if source else data_dir("prompts") / "judge-eval.jsonl"
    if path.is_dir():
        return human_rows(path), f"human review labels of {path}"
    if not path.is_file():
        raise UsageError(f"--truth {path}: no such file or folder")
    pairs, problems = pairs_from_file(path)
    unlabelled = [p.id for p in pairs if p.meta.get("label") != "first"]
    if unlabelled:
        raise UsageError(f"--truth {path}: {len(unlabelled)} rows have no chosen/rejected (first: {unlabelled[0]})")
    rows = [{"id": p.id, "prompt": p.prompt, "chosen": p.first, "rejected": p.second,
             "category": p.meta.get("category")} for p in pairs]
    return rows, f"{path} ({len(problems)} rows rejected)" if problems else str(path)


def human_rows(run: Path) -> list[dict[str, Any]]:
    """The pairs of a `cai judge` run a person labelled (`cai review`), the chosen side first; ties and skips out."""
    from cai.judge.record import JudgeRecord
    from cai.review.labels import classify, human_values, read_labels, run_id
    from cai.review.review import judge_run_folder
    from cai.runs.records import read_typed
    from cai.runs.store import read_jsonl, read_manifest

    run = judge_run_folder(run)
    queue_file = run / "review" / "queue.jsonl"
    if not queue_file.is_file():
        raise UsageError(f"--truth {run}: no review queue; label pairs with `cai review` first")
    queue = {row["pair_id"]: row for row in read_jsonl(queue_file)}
    records = {r.id: r for r in read_typed(run, JudgeRecord) if r.status == "ok"}
    objectives = list(read_manifest(run / "manifest.json").get("config", {}).get("objectives") or [])
    kept, _ = classify(read_labels(run), queue, records, run_id(run), objectives)
    rows = []
    for pair_id, label in sorted(kept.items()):
        values = human_values(label, objectives)
        p = None if values is None else values.get("p_first")
        if p not in (0.0, 1.0):
            continue
        r = records[pair_id]
        chosen, rejected = (r.first, r.second) if p == 1.0 else (r.second, r.first)
        rows.append({"id": pair_id, "prompt": r.prompt, "chosen": chosen, "rejected": rejected, "category": None})
    return rows


async def weak_labels(config: Any, out: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """P(chosen is better) per pair id from the weak supervisor, cached in OUT/weak.json."""
    cached = out / "weak.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    if config.weak_reward_model:
        result = reward_model_labels(config, rows)
    else:
        result = await judge_labels(config, out, rows)
    from cai.runs.store import write_json_atomic

    write_json_atomic(cached, result)
    return result


def reward_model_labels(config: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    from cai.train.data import Truncation
    from cai.train.scoring import make_scorer

    scorer = make_scorer(config.weak_reward_model, limits=Truncation(config.max_length, config.max_prompt_length))
    prompts = [r["prompt"] for r in rows]
    chosen = scorer.score(prompts, [r["chosen"] for r in rows])
    rejected = scorer.score(prompts, [r["rejected"] for r in rows])
    p = {r["id"]: 1 / (1 + math.exp(rejected[i] - chosen[i])) for i, r in enumerate(rows)}
    return {"supervisor": f"reward model {config.weak_reward_model}", "p": p, "invalid": 0}


async def judge_labels(config: Any, out: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The judge's labels, judged as `cai judge` would (a resumable run in OUT/weak-judge), then combined by the
    `--calibration` file's rule or by a combination cross-fitted on the truth (5 folds)."""
    from cai.config import JudgeConfig
    from cai.judge.combine import Parts
    from cai.judge.fit import fit_judge
    from cai.judge.record import JudgeRecord
    from cai.judge.run import judge_run
    from cai.runs.records import read_typed

    judge = JudgeConfig(source=str(out / "truth.jsonl"), strategy="file", output_dir=str(out), run_name="weak-judge",
                        constitution=config.constitution, principles_per_pair=config.principles_per_pair,
                        judge_format=config.judge_format, calibration=config.calibration, check_judge=False,
                        engine=config.engine, max_failure_rate=1.0)
    await judge_run(judge, progress=config.progress)
    records = {r.id: r for r in read_typed(out / "weak-judge", JudgeRecord)}
    valid = [r for r in (records.get(row["id"]) for row in rows) if r is not None and r.ok and r.p_first is not None
             and r.parts]
    p = {row["id"]: 0.5 for row in rows}  # a pair the judge could not label: no opinion
    if config.calibration:
        for r in valid:
            p[r.id] = r.p_first
        how = f"combined and calibrated by {config.calibration}"
    else:
        fit = fit_judge([Parts.from_dict(r.parts) for r in valid], [r.meta.get("category") for r in valid],
                        config.judge_format)
        for r, value in zip(valid, fit["predictions"]["calibrated"], strict=True):
            p[r.id] = value
        how = (f"{fit['rule']} rule, cross-fitted in {fit['folds']} folds on the truth pairs (each pair labelled "
               f"by a fit that never saw it)")
    model = config.engine.model or "the embedded default"
    return {"supervisor": f"judge {model} ({config.judge_format}, {config.principles_per_pair} principles; {how})",
            "p": p, "invalid": len(rows) - len(valid)}
