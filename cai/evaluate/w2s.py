"""`cai eval w2s`: what training a reward model on the judge's labels costs, against training it on true labels,
and how much of that gap the student recovers by itself (weak-to-strong generalisation, Burns et al. 2023).

    cai eval w2s --out outputs/w2s                                    # embedded judge -> embedded student
    cai eval w2s --truth my-pairs.jsonl --student ./big-model --model ./small-judge --seeds 5 --out outputs/w2s
    cai eval w2s --truth outputs/judge-run --weak-reward-model outputs/rm --out outputs/w2s   # human review labels

1. Truth: labelled pairs (prompt, chosen, rejected; the shipped check set by default), or a `cai judge` run's
   human review labels. Written to OUT/truth.jsonl.
2. Weak labels: the weak supervisor's P(chosen is better) for every pair. A judge (`--model`, servers) judges them
   as `cai judge` would (records in OUT/weak-judge, resumable); its combination and calibration are cross-fitted
   on the truth pairs (each pair labelled by a fit that never saw it), or `--calibration FILE`'s. Or a trained
   reward model (`--weak-reward-model`): sigmoid of its score difference.
3. Each seed splits the pairs (`--test-fraction` held out, seeded; no pair in both parts) and trains student
   reward models on the training part: on the weak labels with each `--loss` (`xent`, `logconf`), and on the
   true labels (the ceiling). Each pair's side is drawn at random, so "chosen" carries no hint of the truth.
4. Accuracy on the held-out pairs of the weak supervisor, each weak-to-strong student and the ceiling (Wilson
   95%), pooled over seeds; PGR = (w2s - weak) / (ceiling - weak) with a bootstrap interval over held-out pairs.
   OUT/w2s.json; `cai report OUT` draws the bars. Each finished (seed, arm) is kept: the same command resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from cai.engines import EngineConfig
from cai.errors import UsageError
from cai.evaluate.w2s_labels import truth_rows, weak_labels
from cai.evaluate.w2s_math import pgr, pgr_interval, pooled_accuracy, split_pairs
from cai.settings import Settings

LOSSES = ("xent", "logconf")


class W2SConfig(Settings):
    """Settings of `cai eval w2s`."""

    out: str
    """Output folder: truth.jsonl, the weak labels, each seed's arms, w2s.json."""
    truth: str | None = None
    """Labelled pairs (prompt, chosen, rejected) or a `cai judge` run with review labels; default: the shipped
    prompts/judge-eval.jsonl."""
    student: str | None = None
    """The student's base model (a reward head is added); the embedded default when unset."""
    weak_reward_model: str | None = None
    """A trained reward model as the weak supervisor instead of the judge."""
    constitution: str = "harmless"
    """The judge's constitution (its preference principles)."""
    principles_per_pair: int = Field(default=2, ge=1)
    """Preference principles per pair for the judge."""
    judge_format: Literal["pairwise", "pointwise", "hybrid"] = "hybrid"
    """The judge's format (as `cai judge --judge-format`)."""
    calibration: str | None = None
    """A judge calibration fitted elsewhere (`cai eval judge --fit`); otherwise it is cross-fitted on the truth."""
    seeds: int = Field(default=3, ge=1, le=50)
    """Seeds: each its own split, side draw, data order and head initialisation."""
    test_fraction: float = Field(default=0.5, gt=0, lt=1)
    """Share of the pairs held out for scoring in each seed."""
    loss: str = "xent"
    """Losses for the weak-label students, comma-separated: xent, logconf (`xent,logconf` compares both in one
    run). `xent` by default: on the embedded default logconf recovered less of the gap (README, "weak-to-strong")."""
    logconf_alpha: float = Field(default=0.75, ge=0, le=1)
    """`logconf`: the hardened predictions' final weight."""
    logconf_warmup: float = Field(default=0.2, ge=0, le=1)
    """`logconf`: share of training over which that weight ramps up."""
    epochs: float = Field(default=1.0, gt=0)
    """Passes over the training part for every student (one, as reward models are usually trained: a second
    pass doubles the time and lets a student memorise its supervisor's mistakes)."""
    batch_size: int = Field(default=4, ge=1)
    """Pairs per optimizer step."""
    learning_rate: float = Field(default=2e-5, gt=0)
    """Students' peak learning rate."""
    max_length: int = Field(default=384, ge=16)
    """Prompt + response tokens per scored sequence."""
    max_prompt_length: int = Field(default=128, ge=1)
    """Prompts longer than this keep their last tokens."""
    bootstrap: int = Field(default=2000, ge=100)
    """Bootstrap resamples for PGR's interval."""
    keep_models: bool = False
    """Keep every trained student (about 0.5 GB each for the default model); by default only their scores."""
    progress: bool = True
    """Show progress bars."""
    engine: EngineConfig = Field(default_factory=EngineConfig)
    """The judge's engine (the embedded default model unless set)."""

    @field_validator("loss")
    @classmethod
    def _losses(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",") if n.strip()]
        unknown = [n for n in names if n not in LOSSES]
        if not names or unknown or len(set(names)) != len(names):
            raise ValueError(f"--loss takes a comma-separated list of {', '.join(LOSSES)} without repeats, "
                             f"got {value!r}")
        return ",".join(names)

    @property
    def losses(self) -> list[str]:
        return self.loss.split(",")

    def arms(self) -> list[str]:
        return [f"w2s-{loss}" for loss in self.losses] + ["ceiling"]


# --- inputs -----------------------------------------------------------------------------------------------------------
def fingerprint(config: W2SConfig, rows: list[dict[str, Any]]) -> str:
    """What decides every number of the run: the settings (display ones aside), the truth and the models."""
    from cai.runs.fingerprint import model_fingerprint

    settings = config.model_dump(exclude={"out", "progress", "keep_models", "bootstrap"})
    settings["models"] = {"student": model_fingerprint(config.student),
                          "judge": model_fingerprint(config.engine.model),
                          "weak_reward_model": model_fingerprint(config.weak_reward_model)
                          if config.weak_reward_model else None}
    blob = json.dumps([settings, rows], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def check(config: W2SConfig) -> None:
    """The models, the calibration file and the output folder, before any model loads."""
    from cai.runs.preflight import check_model, check_scorer

    problems = [check_model(config.student, "--student"), check_model(config.engine.model, "--model"),
                check_scorer(config.weak_reward_model, "--weak-reward-model")]
    if config.calibration and not Path(config.calibration).is_file():
        problems.append(f"--calibration {config.calibration}: no such file")
    if Path(config.out).exists() and not Path(config.out).is_dir():
        problems.append(f"--out {config.out} is a file; give a folder")
    problems = [p for p in problems if p]
    if problems:
        raise UsageError("cannot measure weak-to-strong:\n" + "\n".join(f"  {p}" for p in problems))


def open_folder(config: W2SConfig, rows: list[dict[str, Any]]) -> Path:
    """OUT with its manifest: a new folder, or the same run continued; a folder of other settings is refused."""
    out = Path(config.out)
    key = fingerprint(config, rows)
    manifest = out / "w2s_manifest.json"
    if manifest.is_file():
        if json.loads(manifest.read_text()).get("fingerprint") != key:
            raise UsageError(f"{out} holds a w2s run with other settings, truth or models; give another --out "
                             f"(nothing there is overwritten)")
        return out
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty and holds no w2s run; give another --out")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "truth.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    from cai.runs.redact import redact_secrets

    settings = redact_secrets(config.model_dump(mode="json"))  # credentials inside server URLs never written
    manifest.write_text(json.dumps({"fingerprint": key, "config": settings}, indent=2))
    return out


# --- the students ---------------------------------------------------------------------------------------------------
def training_rows(rows: list[dict[str, Any]], p_chosen: list[float], seed: int) -> list[dict[str, Any]]:
    """Preference rows with each pair's side drawn at random (seeded): `p_chosen` follows the side."""
    rng = random.Random(f"w2s-sides-{seed}")
    out = []
    for row, p in zip(rows, p_chosen, strict=True):
        if rng.random() < 0.5:
            out.append({"prompt": row["prompt"], "chosen": row["rejected"], "rejected": row["chosen"],
                        "p_chosen": 1.0 - p})
        else:
            out.append({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"],
                        "p_chosen": p})
    return out


def correct(p: float) -> float:
    """1 when a label prefers the true chosen, 0 when it prefers the rejected, 1/2 for no preference."""
    return 1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5


def train_arm(config: W2SConfig, folder: Path, train: list[dict[str, Any]], test: list[dict[str, Any]],
              loss: str, seed: int, train_ids: list[str]) -> dict[str, Any]:
    """Train one student on `train` and score it on `test`; `folder/scores.json` is written when it is whole."""
    import gc

    from cai.train.config import RewardConfig
    from cai.train.data import Truncation
    from cai.train.run import run_training
    from cai.train.scoring import RewardScorer

    done = folder / "scores.json"
    if done.is_file():
        return json.loads(done.read_text())
    if folder.exists():  # an arm cut short: trained again from the start
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train), encoding="utf-8")
    rm = RewardConfig(data=str(data), out=str(folder / "model"), model=config.student, eval_fraction=0.0,
                      loss=loss, logconf_alpha=config.logconf_alpha, logconf_warmup=config.logconf_warmup,
                      epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
                      max_length=config.max_length, max_prompt_length=config.max_prompt_length, seed=seed,
                      progress=config.progress)
    final = run_training("rm", rm)
    gc.collect()
    scorer = RewardScorer(str(folder / "model"), limits=Truncation(config.max_length, config.max_prompt_length))
    prompts = [r["prompt"] for r in test]
    chosen = scorer.score(prompts, [r["chosen"] for r in test])
    rejected = scorer.score(prompts, [r["rejected"] for r in test])
    del scorer
    result = {"ids": [r["id"] for r in test], "train_ids": train_ids, "chosen": chosen, "rejected": rejected,
              "correct": [1.0 if c > r else 0.0 if c < r else 0.5 for c, r in zip(chosen, rejected, strict=True)],
              "train_loss": final.get("loss")}
    if not config.keep_models:
        shutil.rmtree(folder / "model")
    from cai.runs.store import write_json_atomic

    write_json_atomic(done, result)
    return result


# --- the measurement --------------------------------------------------------------------------------------------------
async def run_w2s(config: W2SConfig) -> dict[str, Any]:
    from cai.runs.store import FolderLock, write_json_atomic

    rows, described = truth_rows(config.truth)
    if len(rows) < 8:
        raise UsageError(f"{described}: {len(rows)} labelled pairs; weak-to-strong needs at least 8")
    check(config)
    out = open_folder(config, rows)
    lock = FolderLock(out).acquire()
    try:
        weak = await weak_labels(config, out, rows)
        seeds = []
        for seed in range(config.seeds):
            train_i, test_i = split_pairs(len(rows), config.test_fraction, seed)
            assert not set(train_i) & set(test_i)
            train, test = [rows[i] for i in train_i], [rows[i] for i in test_i]
            result = {"seed": seed, "train_ids": [r["id"] for r in train], "test_ids": [r["id"] for r in test],
                      "correct": {"weak": [correct(weak["p"][r["id"]]) for r in test]}}
            for arm in config.arms():
                loss = "xent" if arm == "ceiling" else arm.removeprefix("w2s-")
                labels = [1.0] * len(train) if arm == "ceiling" else [weak["p"][r["id"]] for r in train]
                scored = train_arm(config, out / f"seed-{seed}" / arm, training_rows(train, labels, seed), test,
                                   loss, seed, result["train_ids"])
                if scored["ids"] != result["test_ids"]:
                    raise UsageError(f"{out}/seed-{seed}/{arm}: scored other pairs than this split's; remove it")
                result["correct"][arm] = scored["correct"]
            seeds.append(result)
        report = {"truth": described, "pairs": len(rows), "held_out_per_seed": len(seeds[0]["test_ids"]),
                  "seeds": config.seeds, "student": config.student or "the embedded default",
                  "weak_supervisor": weak["supervisor"], "weak_invalid": weak["invalid"],
                  **summarise(seeds, config.arms(), config.bootstrap)}
        write_json_atomic(out / "w2s.json", report)
        return report
    finally:
        lock.release()


def summarise(seeds: list[dict[str, Any]], arms: list[str], bootstrap: int) -> dict[str, Any]:
    """Pooled accuracy with its Wilson interval for the weak supervisor and every arm, each weak-label arm's PGR
    with its bootstrap interval, the per-seed figures and the verdict. `arms` ends with `ceiling`."""
    from cai.evaluate.diagnostics import wilson_interval

    n = sum(len(s["correct"]["weak"]) for s in seeds)
    accuracy = {}
    for arm in ["weak", *arms]:
        value = pooled_accuracy(seeds, arm)
        accuracy[arm] = {"accuracy": value, "ci95": list(wilson_interval(value * n, n))}
    gaps = {}
    for arm in arms[:-1]:
        low, high, share = pgr_interval(seeds, arm, bootstrap, seed=0)
        gaps[arm] = {"pgr": pgr(accuracy["weak"]["accuracy"], accuracy[arm]["accuracy"],
                                accuracy["ceiling"]["accuracy"]), "ci95": [low, high], "resamples_with_a_gap": share}
    per_seed = []
    for s in seeds:
        acc = {arm: sum(c) / len(c) for arm, c in s["correct"].items()}
        per_seed.append({"seed": s["seed"], "accuracy": acc,
                         "pgr": {arm: pgr(acc["weak"], acc[arm], acc["ceiling"]) for arm in arms[:-1]}})
    return {"accuracy": accuracy, "pgr": gaps, "per_seed": per_seed, "verdict": verdict(accuracy, gaps)}


def verdict(accuracy: dict[str, Any], gaps: dict[str, Any]) -> str:
    """One plain sentence: is there a gap, and did any loss recover a part of it beyond noise."""
    weak, ceiling = accuracy["weak"], accuracy["ceiling"]
    if ceiling["ci95"][0] <= weak["ci95"][1] and ceiling["accuracy"] - weak["accuracy"] < 0.05:
        return (f"unclear: the student trained on true labels ({ceiling['accuracy']:.2f}) is not clearly better than "
                f"the weak supervisor ({weak['accuracy']:.2f}); PGR means little without a gap")
    best = max(gaps, key=lambda a: gaps[a]["pgr"] if gaps[a]["pgr"] is not None else -math.inf)
    low = gaps[best]["ci95"][0]
    if low is not None and low > 0:
        return (f"good: {best} recovers {gaps[best]['pgr']:.0%} of the gap between the weak supervisor "
                f"({weak['accuracy']:.2f}) and the ceiling ({ceiling['accuracy']:.2f}), interval above 0")
    return (f"unclear: no loss recovers a part of the gap beyond noise (best {best}: PGR "
            f"{gaps[best]['pgr'] if gaps[best]['pgr'] is not None else float('nan'):.2f}, interval from "
            f"{'n/a' if low is None else f'{low:.2f}'}); weak {weak['accuracy']:.2f}, ceiling {ceiling['accuracy']:.2f}")


def format_w2s(report: dict[str, Any]) -> str:
    lines = [f"weak-to-strong on {report['truth']}: {report['pairs']} pairs, {report['held_out_per_seed']} held out "
             f"per seed, {report['seeds']} seeds", f"weak supervisor: {report['weak_supervisor']}",
             f"student: {report['student']}", "", f"{'':<16}{'accuracy':>10}{'95% CI':>14}{'PGR':>8}{'PGR 95% CI':>16}"]
    for arm, a in report["accuracy"].items():
        gap = report["pgr"].get(arm)
        ci = f"{a['ci95'][0]:.2f}-{a['ci95'][1]:.2f}"
        pg = "" if gap is None or gap["pgr"] is None else f"{gap['pgr']:>8.2f}"
        pci = "" if gap is None or gap["ci95"][0] is None else f"{gap['ci95'][0]:.2f}-{gap['ci95'][1]:.2f}"
        lines.append(f"{arm:<16}{a['accuracy']:>10.3f}{ci:>14}{pg:>8}{pci:>16}")
    return "\n".join(lines + ["", report["verdict"]])
