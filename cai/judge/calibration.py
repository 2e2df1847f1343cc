"""Calibration files: a judge's fitted combination rule, calibration and abstention band, keyed by the judge's
model and the settings that shape its answers, so a fit is never applied to another judge.

    cai eval judge my-pairs.jsonl --fit my-judge.json          # write (cross-validated figures inside)
    cai judge RUN --calibration my-judge.json                   # use; refused if the judge or settings differ

    {"kind": "cai-judge-calibration", "judge": {...the key fields...}, "key": "3f1c...", "fitted_on": {"file",
     "sha256", "pairs"}, "rule": "logistic", "combiner": {...}, "cv": {...}, "abstain_band": 0.1}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cai.errors import UsageError
from cai.judge.combine import Combiner

KIND = "cai-judge-calibration"
KEY_FIELDS = ("judge_format", "principles_per_pair", "judge_few_shot", "cot", "cot_max_tokens", "cot_band",
              "min_option_mass", "top_logprobs", "pointwise_question")


class CalibrationError(UsageError):
    """A calibration file that does not belong to this judge, or cannot be read."""


def judge_key(engine: Any, config: Any) -> dict[str, Any]:
    """What a calibration is valid for: the judge's model, its constitution's principles, its templates and the
    settings that change its answers."""
    from cai.constitution import load_constitution
    from cai.runs.fingerprint import input_fingerprints

    inputs = input_fingerprints(load_constitution(config.constitution), config.templates, None, config.engine.model)
    key = {"model": engine.model_id, **inputs, **{k: getattr(config, k) for k in KEY_FIELDS}}
    if not getattr(config, "contrast", True):  # files fitted before the switch keep their key
        key["contrast"] = False
    return key


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_calibration(path: Path, report: dict[str, Any], engine: Any, config: Any) -> None:
    from cai.runs.fingerprint import path_digest
    from cai.runs.store import write_json_atomic

    key = judge_key(engine, config)
    write_json_atomic(path, {"kind": KIND, "judge": key, "key": key_hash(key),
                             "fitted_on": {"file": report["file"], "sha256": path_digest(report["file"]),
                                           "pairs": report["valid"]},
                             "rule": report["fit"]["rule"], "abstain_band": report["fit"]["abstain_band"],
                             "combiner": report["combiner"], "cv": report["fit"]["cv"]})


def read_calibration(path: str | Path) -> dict[str, Any]:
    from cai.runs.files import InputFileError, read_text

    try:
        data = json.loads(read_text(path, "--calibration"))
    except InputFileError as e:
        raise CalibrationError(str(e)) from None
    except (ValueError, RecursionError) as e:
        raise CalibrationError(f"--calibration {path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("kind") != KIND or "combiner" not in data:
        raise CalibrationError(f"--calibration {path}: not a cai judge calibration (make one with `cai eval judge "
                               "PAIRS --fit FILE`)")
    return data


def load_calibration(path: str | Path, engine: Any, config: Any) -> Combiner:
    """The combiner of a calibration file made for this very judge (model, principles, templates, settings)."""
    data = read_calibration(path)
    key = judge_key(engine, config)
    if data.get("key") != key_hash(key):
        stored = data.get("judge", {})
        changed = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
        raise CalibrationError(f"--calibration {path} was fitted for another judge or other settings (differs in: "
                               f"{', '.join(changed)}); fit one for this judge with `cai eval judge PAIRS --fit FILE`")
    try:
        return Combiner.from_dict(data["combiner"])
    except (TypeError, ValueError) as e:
        raise CalibrationError(f"--calibration {path}: its combiner cannot be read ({e})") from None


def describe(data: dict[str, Any] | None) -> str:
    if not data:
        return "none"
    fitted = data.get("fitted_on", {})
    return f"{data.get('rule')} rule fitted on {fitted.get('pairs')} pairs of {fitted.get('file')}"
