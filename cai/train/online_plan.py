"""What an online DPO run plans before any engine starts, and what it reads between rounds: the run's recorded
fields and the folder check for continuing it, the held-out and per-round prompts, each round's judge settings, the
best-vs-worst pairs of a round, and the KL estimate to the starting model.

    heldout, rounds, per_round = split_prompts(config)       # a continued run passes its recorded per_round
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from cai.config import JudgeConfig, error_lines
from cai.errors import UsageError
from cai.train.rl_config import OnlineDPOConfig

MANIFEST = "online_manifest.json"


def online_fields(config: OnlineDPOConfig, heldout: list) -> dict[str, Any]:
    """What a continued online run must match: every setting but `rounds` and the cadence ones (`MAY_CHANGE`),
    the prompts' content, the held-out prompts' content, the starting model and the judge's model."""
    from cai.runs.fingerprint import model_fingerprint
    from cai.runs.resume import MAY_CHANGE, data_fingerprint, resume_fields

    settings = config.model_dump(mode="json", exclude={*MAY_CHANGE, "rounds"})
    held = hashlib.sha256(json.dumps([[i.id, i.messages] for i in heldout], sort_keys=True).encode()).hexdigest()
    inputs = {"model": model_fingerprint(config.model), "data": data_fingerprint(config.data),
              "heldout": held[:16], "judge_model": model_fingerprint(config.judge_engine.model)}
    return resume_fields("online-dpo", settings, inputs)


def check_online_output(config: OnlineDPOConfig, start: str) -> dict[str, Any] | None:
    """OUT is empty (None), or this run's own folder (its manifest, to be continued with the same settings)."""
    out = Path(config.out).expanduser().resolve()
    for name, value in (("--model", start), ("--data", config.data)):
        path = Path(value).expanduser()
        if path.exists() and (out == path.resolve() or path.resolve() in out.parents):
            raise UsageError(f"--out {config.out} is or sits inside {name} {value}: choose another --out")
    if not out.is_dir() or not any(p.name != ".lock" for p in out.iterdir()):
        return None
    if config.overwrite:
        for item in out.iterdir():
            if item.name != ".lock":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        return None
    manifest = out / MANIFEST
    if not manifest.is_file():
        raise UsageError(f"--out {config.out} is not empty and holds no online-dpo run: choose an empty folder, or "
                         "add --overwrite to replace it")
    from cai.runs.store import read_manifest

    return read_manifest(manifest)


def split_prompts(config: OnlineDPOConfig, per_round: int | None = None) -> tuple[list, list[list], int]:
    """The held-out prompts, each round's training prompts (a seeded shuffle) and the prompts per round. A run
    continued with more rounds passes its recorded `per_round`, so its finished rounds keep their prompts and
    the new rounds get fresh ones."""
    from cai.inputs import InputError, InputProblem, load_prompts

    items = [i for i in load_prompts(config.data, limit=config.limit) if not isinstance(i, InputProblem)]
    random.Random(config.seed).shuffle(items)
    heldout, train = items[: config.heldout_prompts], items[config.heldout_prompts:]
    if not train:
        raise InputError(f"{config.data}: {len(items)} usable prompts, none left for training after "
                         f"{config.heldout_prompts} held out")
    if config.reuse_prompts:
        share = train[: config.prompts_per_round] if config.prompts_per_round else train
        return heldout, [share] * config.rounds, len(share)
    per_round = per_round or config.prompts_per_round or len(train) // config.rounds
    if per_round < 1 or per_round * config.rounds > len(train):
        raise InputError(f"{config.data}: {len(train)} training prompts cannot give {config.rounds} rounds "
                         f"{per_round or 'at least one'} fresh prompt(s) each; lower --rounds or "
                         "--prompts-per-round, give more prompts, or add --reuse-prompts")
    return heldout, [train[r * per_round: (r + 1) * per_round] for r in range(config.rounds)], per_round


def best_worst_pairs(rows: list[dict]) -> list[dict]:
    """Per prompt, the response with the highest mean win probability against the one with the lowest (over
    every judged pair it is in), as one exported row; its p_chosen is the judge's label of that very pair."""
    by_prompt: dict[str, list[dict]] = {}
    for row in rows:
        by_prompt.setdefault(row["id"].rsplit("/", 1)[0], []).append(row)
    chosen = []
    for prompt_rows in by_prompt.values():
        wins: dict[str, list[float]] = {}
        for row in prompt_rows:
            wins.setdefault(row["chosen_source"], []).append(row["p_chosen"])
            wins.setdefault(row["rejected_source"], []).append(1.0 - row["p_chosen"])
        score = {name: sum(v) / len(v) for name, v in wins.items()}
        best, worst = max(score, key=score.get), min(score, key=score.get)
        pair = next((r for r in prompt_rows if {r["chosen_source"], r["rejected_source"]} == {best, worst}), None)
        if pair is None or best == worst:
            continue
        # the row keeps the judge's own label of this pair, even where it disagrees with the ranking
        chosen.append({**pair, "best_worst_scores": [score[best], score[worst]]})
    return chosen


def round_judge_config(config: OnlineDPOConfig, r: int, folder: Path, prompts: Path) -> JudgeConfig:
    """Round r's `cai judge` settings: the run's judge options on K samples per prompt of the round's policy."""
    from pydantic import ValidationError

    try:
        return JudgeConfig(**{**config.judge, "source": str(prompts), "strategy": "sampled",
                              "samples_per_prompt": config.samples_per_prompt, "pairing": "all",
                              "policy_temperature": config.temperature, "policy_max_new_tokens": config.max_new_tokens,
                              "seed": config.seed + r, "output_dir": str(folder), "run_name": "judge",
                              "engine": config.judge_engine})
    except ValidationError as e:
        lines = error_lines(e, "judge.")
        raise UsageError("invalid judge settings for online-dpo:\n" + "\n".join(lines)) from None


@torch.no_grad()
def kl_estimate(model_path: str, reference_path: str, answers: list[dict], trust_remote_code: bool = False,
                temperature: float = 1.0) -> float:
    """Monte Carlo KL(policy_T || reference_T) per answer: the mean, over answers sampled from the policy at
    temperature T, of the summed log-ratio of their tokens, both models' log-probabilities taken at the same T
    (softmax(logits / T)), so the estimate is the KL of the distributions the answers were drawn from (>= 0 in
    expectation; at T = 1 the models' own distributions)."""
    from cai.train.config import TrainConfig
    from cai.train.experience import response_logprobs
    from cai.train.modeling import load_causal_lm
    from cai.train.rollouts import rollout_batch

    settings = TrainConfig(data="-", out="-", trust_remote_code=trust_remote_code)
    models = [load_causal_lm(p, settings, torch.float32).eval() for p in (model_path, reference_path)]
    total, pad = 0.0, 0
    for start in range(0, len(answers), 8):
        chunk = [a for a in answers[start: start + 8] if a["response_ids"]]
        if not chunk:
            continue
        batch = rollout_batch([a["prompt_ids"] for a in chunk], [a["response_ids"] for a in chunk], pad)
        logps = [response_logprobs(m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     position_ids=batch["position_ids"]).logits, batch, temperature)[0]
                for m in models]
        total += float(((logps[0] - logps[1]) * batch["response_mask"]).sum())
    return total / len(answers)
