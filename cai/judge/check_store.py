"""Where judge checks are kept: the key of a judge's check (its engine, inputs and settings), this machine's cache
(`~/.cache/cai/judge-checks/`) and the checks shipped with cai (`prompts/judge-checks/`). Read by `check.py`,
which measures, and by `evaluate.py`, which scores the default judge's fit on other pairs.

    key = cache_key(engine, config)                  # 20 hex digits
    made_before(key, cache_dir() / "judge-checks" / f"{key}.json")   # (check, "cache" | "shipped") or None
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CHECK_FIELDS = ("principles_per_pair", "constitution", "judge_few_shot", "cot", "cot_max_tokens", "cot_band",
                "min_option_mass", "top_logprobs", "templates", "seed", "judge_format", "pointwise_question",
                "min_valid_principles")


def check_file(path: str | None) -> str:
    from cai.resources import data_dir

    return path or str(data_dir("prompts") / "judge-eval.jsonl")


# Engine settings that change memory or processes, not a judgement's numbers: a check made under one holds for all.
# (`model_path` is where this machine keeps the model; the model itself is keyed by its content fingerprint.)
NOT_JUDGEMENT_SETTINGS = ("gpu_memory_utilization", "distributed_executor_backend", "model_path")
SHIPPED = "judge-checks"
"""Folder under the bundled `prompts/` of checks shipped with cai, named by `cache_key` as the cache is."""


def cache_key(engine: Any, config: Any) -> str:
    from cai.constitution import load_constitution
    from cai.runs.fingerprint import input_fingerprints, path_digest

    inputs = input_fingerprints(load_constitution(config.constitution), config.templates, None, config.engine.model)
    described = {k: v for k, v in engine.describe().items() if k not in NOT_JUDGEMENT_SETTINGS}
    parts = {"engine": described, "inputs": inputs, "file": path_digest(check_file(config.judge_check)),
             "calibration": path_digest(config.calibration) if config.calibration else None,
             **{k: getattr(config, k) for k in CHECK_FIELDS}, "version": 5}
    if not getattr(config, "contrast", True):  # the default keeps its key
        parts["contrast"] = False
    if getattr(config, "protocol", "direct") != "direct":  # direct judging keeps the keys it always had
        debaters = config.debater_engine.model if config.debater_engine else None
        parts |= {"protocol": config.protocol, "debate_max_tokens": config.debate_max_tokens, "debaters": debaters}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def stored_default_check(engine: Any, config: Any) -> tuple[dict[str, Any], str] | None:
    """(the check, "cache" or "shipped") of this judge on the default check pairs, made before and never measured
    here: what `cai judge` would label with, for scoring on other pairs (`cai eval judge FILE`)."""
    from cai.models import cache_dir

    default = config.model_copy(update={"judge_check": None, "calibration": None})
    key = cache_key(engine, default)
    return made_before(key, cache_dir() / "judge-checks" / f"{key}.json")


def made_before(key: str, cached: Path) -> tuple[dict[str, Any], str] | None:
    """(the check, "cache" or "shipped"): this machine's cache first, then the checks shipped with cai; None when
    there is neither or `CAI_RECHECK_JUDGE=1` asks for a new measurement."""
    from cai.resources import data_dir

    if os.environ.get("CAI_RECHECK_JUDGE", "0") not in ("", "0"):
        return None
    for source, entry in (("cache", cached), ("shipped", data_dir("prompts") / SHIPPED / f"{key}.json")):
        if entry.is_file():
            return json.loads(entry.read_text()), source
    return None
