"""Run folders: a manifest plus append-only JSONL records, flushed as they complete, resumable after any crash.

    outputs/<run>/manifest.json     config, constitution text and hash, model, versions, seed
    outputs/<run>/records.jsonl     one completed record a line (status "ok" or "error")
    outputs/<run>/export/           datasets written from the records (see cai/runs/writers.py)

A record is written and flushed the moment its sample completes, so a SIGKILL loses at most the samples in flight.
On reopening, a torn last line (a crash mid-write) is cut off and the run continues after the last whole record.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cai.errors import CaiError, UsageError
from cai.runs.redact import redact_secrets
from cai.runs.resume import RunConflictError, check_resume, resume_fields

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class StorageError(CaiError, OSError):
    """A run's output could not be written (disk full, read-only folder, file too large); what was written before
    it stays readable and a rerun resumes from there."""

    exit_code = 1


def check_run_name(name: str) -> str:
    if not _RUN_NAME.match(name) or ".." in name:
        raise UsageError(f"invalid run name {name!r}: use letters, digits, '.', '_' and '-' (no paths)")
    return name


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary file, then rename: the file is the old one or the new one, never half of either."""
    from cai.runs.files import open_new

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open_new(tmp) as f:
            json.dump(data, f, indent=2, ensure_ascii=False, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StorageError(e.errno, f"cannot write {path}: {e.strerror or e} (the previous version, if any, is "
                                    "unchanged; free space or fix the folder, then rerun the same command)") from e


def _whole_json(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data), dict)
    except (ValueError, RecursionError):
        return False


class CorruptRunError(UsageError):
    """A run file that cai did not write as it is (edited or damaged), named with its line."""


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> Iterator[dict]:
    """Whole records of a JSONL file; a torn last line (no newline, not whole JSON) is skipped, a complete last
    record without its newline is kept. Each record must be a JSON object with the `required` keys."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
                if not line.endswith(b"\n"):
                    break  # a torn tail: cut on the next open
                raise CorruptRunError(f"{path}:{number}: not a JSON record ({e}); the file was edited or "
                                      "damaged") from None
            if not isinstance(record, dict) or any(k not in record for k in required):
                raise CorruptRunError(f"{path}:{number}: expected a JSON object with {', '.join(required) or 'keys'}"
                                      f", got {line[:80].decode('utf-8', 'replace')!r}")
            yield record


def read_manifest(path: Path) -> dict[str, Any]:
    """A run's manifest.json, which must be a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CorruptRunError(f"{path}: not valid JSON ({e}); the file was edited or damaged") from None
    if not isinstance(data, dict):
        raise CorruptRunError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


class JsonlLog:
    """An append-only JSONL file: each record is flushed when written and fsynced in small batches."""

    def __init__(self, path: Path, fsync_every: int = 8, fsync_seconds: float = 2.0,
                 required: tuple[str, ...] = ()):
        self.required = required
        self.path = path
        self.fsync_every = fsync_every
        self.fsync_seconds = fsync_seconds
        self._file = None
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self.written = 0
        self.failed: StorageError | None = None

    def open(self) -> list[dict]:
        """Cut a torn last line (a crash mid-write), then return the whole records and start appending."""
        if self.path.exists():
            with open(self.path, "rb+") as f:
                data = f.read()
                keep = data.rfind(b"\n") + 1
                if keep != len(data):
                    if _whole_json(data[keep:]):  # a complete record that only lost its newline: keep it
                        f.write(b"\n")
                    else:
                        f.truncate(keep)
                    os.fsync(f.fileno())
        records = list(read_jsonl(self.path, self.required))
        self._file = open(self.path, "a", encoding="utf-8")
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Write one completed record; it is in the OS's hands on return (survives a process kill)."""
        assert self._file is not None, "open() first"
        if self.failed is not None:
            raise self.failed
        try:
            self._write_line(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            self._unsynced += 1
            self.written += 1
            if self._unsynced >= self.fsync_every or time.monotonic() - self._last_sync > self.fsync_seconds:
                self.sync()
        except OSError as e:
            self.failed = StorageError(
                e.errno, f"cannot write to {self.path}: {e.strerror or e} ({self.written} records written this run "
                f"and every earlier one are on disk and readable; free space or fix the folder, then rerun the "
                f"same command to resume)")
            raise self.failed from e

    def _write_line(self, line: str) -> None:
        self._file.write(line)
        self._file.flush()  # in the OS's hands: survives the process being killed

    def sync(self) -> None:
        if self._file is not None and self._unsynced:
            os.fsync(self._file.fileno())
            self._unsynced = 0
            self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._file is not None:
            try:
                self.sync()
                self._file.close()
            except OSError:
                if self.failed is None:
                    raise
                # already failing: the first error is the one to report; a torn tail is cut on the next open
            finally:
                self._file = None


class FolderInUseError(RunConflictError):
    """Another live process is writing into this folder."""


class FolderLock:
    """An exclusive lock on a folder (`.lock` inside it, holding the owner's pid) for as long as one run writes
    there: a second run into the same folder stops at once with "in use by pid N" instead of redoing the work and
    tripping over the first one's temporary files. The kernel drops the lock when its process dies, SIGKILL
    included, so a killed run never leaves a stale lock behind."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise FolderInUseError(f"{self.path.parent} is in use by pid {owner} (another cai run writes there); "
                                   "wait for it to finish or choose another output folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


class RunStore:
    """One run folder: manifest, append-only records, resume."""

    def __init__(self, output_dir: str | Path, name: str, records_file: str = "records.jsonl"):
        self.root = Path(output_dir).resolve()
        self.path = (self.root / check_run_name(name)).resolve()
        if self.path.parent != self.root:
            raise UsageError(f"run folder {self.path} would leave {self.root}")
        self.records_path = self.path / records_file
        self.manifest_path = self.path / "manifest.json"
        self._logs: list[JsonlLog] = []
        self._lock: FolderLock | None = None

    def open(self, manifest: dict[str, Any], settings: dict[str, Any]) -> list[dict]:
        """Create the run or resume it; returns the records already on disk.

        `settings` are those that shape the outputs; with the manifest's `kind` and `inputs` (fingerprints) they
        are recorded in the one manifest format every run shares (`cai/runs/resume.py`), and a resume with any of
        them changed is refused.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = FolderLock(self.path).acquire()
        try:
            return self._open(manifest, settings)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, manifest: dict[str, Any], settings: dict[str, Any]) -> list[dict]:
        manifest = redact_secrets(manifest)  # compared as they are stored
        fields = resume_fields(manifest.get("kind"), redact_secrets(settings), manifest.get("inputs") or {})
        if self.manifest_path.exists():
            old = read_manifest(self.manifest_path)
            check_resume(old, fields, str(self.path), "Use another --run-name, or delete the folder to start over.")
            manifest = {**manifest, "created": old.get("created"), "resumed": old.get("resumed", 0) + 1}
        else:
            if self.records_path.exists() and self.records_path.stat().st_size:
                raise RunConflictError(f"{self.records_path} holds records but the run has no manifest.json, so "
                                       "nothing says which settings made them; delete the folder to start over")
            manifest = {**manifest, "created": dt.datetime.now(dt.UTC).isoformat(), "resumed": 0}
        write_json_atomic(self.manifest_path, {**manifest, **fields})
        self._records = self.log(self.records_path.name, required=("id", "status"))
        return self._records.open()

    def log(self, file_name: str, required: tuple[str, ...] = ()) -> JsonlLog:
        """Another append-only file of this run (opened by the caller), closed with the store."""
        log = JsonlLog(self.path / file_name, required=required)
        self._logs.append(log)
        return log

    def append(self, record: dict[str, Any]) -> None:
        self._records.append(record)

    def close(self) -> None:
        for log in self._logs:
            log.close()
        if self._lock is not None:
            self._lock.release()

    def update_manifest(self, **fields: Any) -> None:
        data = read_manifest(self.manifest_path)
        data.update(redact_secrets(fields))
        write_json_atomic(self.manifest_path, data)


def latest_by_id(records: list[dict]) -> dict[str, dict]:
    """The last record of each id (a retried sample's newer record wins)."""
    latest: dict[str, dict] = {}
    for record in records:
        latest[record["id"]] = record
    return latest
