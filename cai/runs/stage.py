"""The stage runner every record-producing stage shares (`cai generate`, `cai judge`, and stages to come).

    run = StageRun(store, manifest, settings, progress=True)
    async with run:                                # opens the folder, closes engines and the store after
        engine = run.own(create_engine(...))       # closed at the end, whoever raised
        await run.execute([job(item) for item in todo], concurrency=256, tokens=lambda: engine.generated_tokens)
    run.finish(export_fn, max_failure_rate, "samples failed")

It owns the run folder (manifest with secrets redacted, the lock, the done set), saving records with the
summary's counters and the progress bar, the mapping of a dead engine or a failed write to `RunFailed` with what
completed on disk, the export and the failure-rate check. A stage supplies its manifest, its jobs and its export.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import platform
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cai.engines import Engine, EngineDeadError, RequestError
from cai.errors import CaiError
from cai.runs.progress import Progress
from cai.runs.records import Record
from cai.runs.store import RunStore, StorageError, latest_by_id

T = TypeVar("T")


class RunFailed(CaiError, RuntimeError):
    """The run stopped (engine died, too many failures); what completed is on disk."""

    exit_code = 1


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


class StageRun:
    """One run of a stage: its store, done records, summary, progress and the engines it owns."""

    def __init__(self, store: RunStore, manifest: dict[str, Any], settings: dict[str, Any], progress: bool = True,
                 unit: str = "sample", rate_label: str = "tok/s"):
        self.store = store
        existing = store.open(manifest, settings)
        self.done: dict[str, dict] = {rid: rec for rid, rec in latest_by_id(existing).items()
                                      if Record.parse(rec).done}
        self.summary = RunSummary(store.path)
        self.progress, self.unit, self.rate_label = progress, unit, rate_label
        self.bar = Progress(0, enabled=False)
        self.started = time.monotonic()
        self._owned: list[Engine] = []

    def own(self, engine: Engine) -> Engine:
        """Close `engine` when the run ends."""
        self._owned.append(engine)
        return engine

    def save(self, record: Record | dict[str, Any], tokens: int = 0) -> None:
        """Append a record (on disk before this returns) and count it."""
        record = record if isinstance(record, Record) else Record.parse(record)
        self.store.append(record.dump())
        if record.status == "ok":
            self.summary.ok += 1
            self.summary.completion_tokens += tokens
        else:
            self.summary.errors += 1
            reason = (record.error.message if record.error else getattr(record, "reason", None) or "invalid")[:120]
            self.summary.error_reasons[reason] = self.summary.error_reasons.get(reason, 0) + 1
        self.bar.update()

    async def attempt(self, item_id: str, index: int, work: Awaitable[T], **payload: Any) -> T | None:
        """Await one item's work. A request the engine rejects becomes an `input` error record, any other failure a
        `sample` error record (retried on the next run) and the other items go on; a dead engine stops the run.
        Returns None when an error was recorded."""
        try:
            return await work
        except RequestError as e:
            self.save(Record.error_record(item_id, index, "input", str(e), **payload))
        except EngineDeadError:
            raise
        except Exception as e:
            self.save(Record.error_record(item_id, index, "sample", f"{type(e).__name__}: {e}", **payload))
        return None

    async def execute(self, jobs: list, concurrency: int, tokens: Callable[[], int] = lambda: 0,
                      remaining: int | None = None) -> None:
        """Run the jobs (throughput is timed from here: engine start-up excluded)."""
        self.started = time.monotonic()
        self.bar = Progress(len(jobs) if remaining is None else remaining, tokens=tokens, enabled=self.progress,
                            unit=self.unit, rate_label=self.rate_label)
        self.bar.start_ticker()
        await run_all(jobs, concurrency)

    async def __aenter__(self) -> StageRun:
        return self

    async def __aexit__(self, kind, error, traceback) -> None:
        self.summary.seconds = time.monotonic() - self.started
        self.bar.close()
        self.store.close()
        for engine in self._owned:
            await engine.close()
        if isinstance(error, EngineDeadError):
            raise RunFailed(f"the engine died ({error}); {self.summary.ok} items completed this run are saved in "
                            f"{self.store.path}; rerun the same command to continue") from error
        if isinstance(error, StorageError):
            raise RunFailed(str(error)) from error

    def finish(self, export: Callable[[Path], Any], max_failure_rate: float, what: str, details: str = "") -> None:
        """Export the run's datasets, then fail if too many items failed (the export is written either way)."""
        try:
            export(self.store.path)
        except OSError as e:  # a full disk or a file-size limit: the records are whole, only the export is missing
            raise RunFailed(f"cannot write the export in {self.store.path / 'export'}: {e.strerror or e} (every record "
                            f"is on disk in {self.store.records_path}; make room and rerun the same command to "
                            "export again without redoing any item)") from e
        self.summary.check_failure_rate(max_failure_rate, what, self.store.records_path, details)
