"""Measure the judge before it labels anything: accuracy, position consistency, Brier score and calibration on
labelled pairs (`prompts/judge-eval.jsonl` unless `--judge-check FILE`), cached per judge so a rerun costs nothing.

    quality = await check_judge(engine, config)    # {"accuracy", "ci95", "position_consistency", "brier", ...}
    enforce(quality, strict=config.strict_judge)    # a loud warning, or JudgeCheckFailed with --strict-judge

The check uses the judge exactly as the run will (its principles per pair, templates, few-shot examples, CoT and
option-mass settings) and reports the `swapped+ensembled` variant, the one `cai judge` labels with.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

from cai.errors import CaiError

CHECK_FIELDS = ("principles_per_pair", "constitution", "judge_few_shot", "cot", "cot_max_tokens", "cot_band",
                "min_option_mass", "top_logprobs", "templates", "seed", "judge_format", "pointwise_question")


class JudgeCheckFailed(CaiError):
    """`--strict-judge` and the judge scored below `--min-judge-accuracy` on its check: nothing was labelled."""


def check_file(path: str | None) -> str:
    from cai.resources import data_dir

    return path or str(data_dir("prompts") / "judge-eval.jsonl")


def cache_key(engine: Any, config: Any) -> str:
    from cai.constitution import load_constitution
    from cai.fingerprint import input_fingerprints, path_digest

    inputs = input_fingerprints(load_constitution(config.constitution), config.templates, None, config.engine.model)
    parts = {"engine": engine.describe(), "inputs": inputs, "file": path_digest(check_file(config.judge_check)),
             **{k: getattr(config, k) for k in CHECK_FIELDS}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


async def check_judge(engine: Any, config: Any) -> dict[str, Any]:
    """The judge's quality on the check pairs (from the cache when this judge was checked before)."""
    from cai.diagnostics import wilson_interval
    from cai.judge_eval import evaluate_judge
    from cai.judge_run import settings_of
    from cai.models import cache_dir

    cached = cache_dir() / "judge-checks" / f"{cache_key(engine, config)}.json"
    if cached.exists():
        quality = json.loads(cached.read_text())
        return {**quality, "passed": quality["accuracy"] >= config.min_judge_accuracy,
                "min_accuracy": config.min_judge_accuracy, "cached": True}
    path = check_file(config.judge_check)
    report = await evaluate_judge(engine, path, config.principles_per_pair, config.constitution,
                                  settings_of(config), config.seed, None, config.judge_few_shot)
    m = report["metrics"]["swapped+ensembled"]
    accuracy = m["accuracy"] if m["accuracy"] is not None else 0.0
    quality = {"accuracy": accuracy, "ci95": wilson_interval(accuracy * m["valid"], m["valid"]),
               "position_consistency": m["position_consistency"], "brier": m["brier"], "ece": m["ece"],
               "pairs": m["valid"], "checked_pairs": report["pairs"], "file": path,
               "judge_model": report["judge_model"]}
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(quality, indent=2))
    return {**quality, "passed": accuracy >= config.min_judge_accuracy, "min_accuracy": config.min_judge_accuracy,
            "cached": False}


def describe(quality: dict[str, Any]) -> str:
    low, high = quality["ci95"] or (0.0, 0.0)
    return (f"judge check: accuracy {quality['accuracy']:.2f} (95% CI {low:.2f}-{high:.2f}) on {quality['pairs']} "
            f"labelled pairs of {quality['file']}, position consistency {quality['position_consistency'] or 0:.2f}, "
            f"Brier {quality['brier'] or 0:.3f}, ECE {quality['ece'] or 0:.3f}: "
            + ("passed" if quality["passed"] else f"FAILED (minimum {quality['min_accuracy']:.2f})"))


def enforce(quality: dict[str, Any], strict: bool) -> None:
    """Stop (`strict`) or warn loudly when the judge failed its check."""
    if quality["passed"]:
        return
    message = (f"{describe(quality)}. Its labels are close to noise: read every result made from them as such, "
               "use a bigger judge (--model, or openai/... servers), or check it on your own pairs (--judge-check).")
    if strict:
        raise JudgeCheckFailed(message + " Stopped before labelling (--strict-judge).")
    print(f"\n*** WARNING: {message}\n", file=sys.stderr, flush=True)
