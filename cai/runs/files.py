"""Bounded reads of user files and writes into run folders that never follow a symlink.

    text = read_text(path, "constitution")                    # a regular file, at most MAX_DOCUMENT_BYTES
    for number, line in jsonl_lines(path): ...                # line is bytes, or a TooLong marker
    write_text(run / "export" / "README.md", card)            # refuses a symlink in the way

A FIFO or a device in place of a file would hang or read forever, and one enormous line would be held in memory
(and copied into records): where a file is expected, only a regular file is read, documents are capped, and a JSONL
line longer than `max_line_bytes()` (`CAI_MAX_LINE_BYTES`, 8 MiB by default) becomes an error for that row alone.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cai.errors import UsageError

MAX_DOCUMENT_BYTES = 16 * 2**20
"""Configs, recipes, constitutions: far above any real one."""
_DEFAULT_LINE_BYTES = 8 * 2**20


class InputFileError(UsageError):
    """A file that cannot be read as asked: not a regular file, too big, not UTF-8."""


def max_line_bytes() -> int:
    value = os.environ.get("CAI_MAX_LINE_BYTES", "")
    try:
        return int(value) if value else _DEFAULT_LINE_BYTES
    except ValueError:
        raise InputFileError(f"CAI_MAX_LINE_BYTES={value!r} is not a whole number of bytes") from None


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def regular_file(path: str | Path, what: str) -> Path:
    """`path` when it is a regular file (after following links); otherwise an error naming what it is."""
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputFileError(f"{what}: {path} does not exist") from None
    except OSError as e:
        raise InputFileError(f"{what}: cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise InputFileError(f"{what}: {path} is {_kind(mode)}, not a regular file")
    return path


def regular_or_folder(path: Path, what: str) -> str | None:
    """None when `path` is a regular file or a folder, else the problem (for checks that collect problems)."""
    mode = path.stat().st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return f"{what}: {path} is {_kind(mode)}, not a file or folder"


def read_bytes(path: str | Path, what: str, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    path = regular_file(path, what)
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InputFileError(f"{what}: {path} is larger than {limit // 2**20} MiB; this is not a file cai reads")
    return data


def read_text(path: str | Path, what: str, limit: int = MAX_DOCUMENT_BYTES) -> str:
    data = read_bytes(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputFileError(f"{what}: {path} is not valid UTF-8 ({e.reason} at byte {e.start})") from None


@dataclass(frozen=True)
class TooLong:
    """A line over the cap, skipped without being held: its length so far and its first bytes."""

    length: int
    head: bytes

    def reason(self, limit: int) -> str:
        return (f"line longer than {limit:,} bytes (CAI_MAX_LINE_BYTES); left out, nothing of it is kept "
                f"(starts {self.head[:60].decode('utf-8', 'replace')!r})")


def jsonl_lines(path: str | Path, what: str, limit: int | None = None) -> Iterator[tuple[int, bytes | TooLong]]:
    """(line number, bytes) of a regular file; a line longer than `limit` comes as `TooLong` and is read past in
    bounded chunks, never held whole."""
    limit = limit or max_line_bytes()
    path = regular_file(path, what)
    with open(path, "rb") as f:
        number = 0
        while True:
            line = f.readline(limit + 1)
            if not line:
                return
            number += 1
            if len(line) <= limit or (len(line) == limit + 1 and line.endswith(b"\n")):
                yield number, line
                continue
            head, length = line[:200], len(line)
            while not line.endswith(b"\n"):
                line = f.readline(2**20)
                if not line:
                    break
                length += len(line)
            yield number, TooLong(length, head)


def no_symlink(path: Path) -> Path:
    """Refuse to write where a symlink stands: into a run folder, only real files and folders are written."""
    if path.is_symlink():
        raise InputFileError(f"{path} is a symbolic link; cai does not write through links inside a run folder "
                             "(remove it and rerun)")
    return path


def make_folder(path: Path) -> Path:
    """A real folder (its parents made as needed), never a link to one."""
    no_symlink(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def open_new(path: Path, mode: str = "w"):
    """Open a fresh temporary file for writing: O_EXCL | O_NOFOLLOW, after removing a leftover of our own."""
    no_symlink(path.parent)
    if path.is_symlink() or path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    return os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8")


def write_text(path: Path, text: str) -> None:
    """Write a whole file through a temporary file and a rename (a link at `path` is replaced, never followed)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open_new(tmp) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
