"""Commands run from tests so that no test can hang on them or leave a process behind.

    done = run([sys.executable, "-m", "cai", ...], timeout=300)     # a CompletedProcess; never blocks past timeout

Every process a test starts carries an environment tag of its own (`CAI_TEST_TAG`), inherited by everything it
starts in turn: vLLM's engine processes, and the workers of `accelerate launch`, which live in sessions of their
own, so killing the launcher's process group does not reach them. Output goes to files, not pipes, so a stray
process that still holds them cannot block the test. When the deadline passes, the stacks of every tagged process
(py-spy, native frames included) go into the failure message, then every tagged process is killed. The session
tag (`CAI_TEST_SESSION`, set by conftest.py) marks everything the test run started: what is still alive at the end
is reported and killed there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

TAG = "CAI_TEST_TAG"
SESSION = "CAI_TEST_SESSION"


def tagged(name: str, value: str) -> list[int]:
    """Pids of the live processes whose environment holds name=value (this process excluded)."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone, or not ours to read
            continue
        if state != "Z" and needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return sorted(found)


def _py_spy() -> str:
    """py-spy beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else "py-spy"


def stacks(pids: list[int]) -> str:
    """Every thread's stack of each process (py-spy dump --native), or why it could not be read."""
    parts = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmdline = "?"
        try:
            dump = subprocess.run([_py_spy(), "dump", "--native", "--pid", str(pid)], capture_output=True, text=True,
                                  timeout=60)
            text = dump.stdout or dump.stderr
        except (OSError, subprocess.TimeoutExpired) as e:
            text = f"(no stack: {e})"
        parts.append(f"--- pid {pid}: {cmdline[:300]}\n{text}")
    return "\n".join(parts)


def kill_tagged(name: str, value: str, grace_s: float = 0.0) -> list[int]:
    """SIGKILL every process carrying the tag (after `grace_s` for them to leave on their own); the pids killed."""
    deadline = time.monotonic() + grace_s
    while tagged(name, value) and time.monotonic() < deadline:
        time.sleep(0.2)
    killed = tagged(name, value)
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while tagged(name, value) and time.monotonic() < deadline:
        time.sleep(0.05)
    return killed


class Tracked(subprocess.Popen):
    """A Popen whose process and every descendant carry a tag of their own; `kill_all()` ends them all."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None, **kwargs):
        self.tag = uuid.uuid4().hex
        super().__init__(command, env={**(env or os.environ), TAG: self.tag}, start_new_session=True, **kwargs)

    def kill_all(self) -> list[int]:
        killed = kill_tagged(TAG, self.tag)
        try:
            self.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        return killed

    def alive(self) -> list[int]:
        return tagged(TAG, self.tag)


def run(command: list[str], timeout: float, env: dict[str, str] | None = None, cwd: str | Path | None = None,
        preexec_fn=None, stdin_text: str | None = None) -> subprocess.CompletedProcess:
    """Run a command to completion within `timeout` seconds: its output is returned as text; past the deadline
    the stacks of it and all it started are put in an AssertionError, and every one of them is killed. Whatever
    it started that outlives it (a worker stuck after its launcher exited) is killed too, and fails the test."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        stdin = subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL
        proc = Tracked(command, env=env, cwd=cwd, stdout=out, stderr=err, stdin=stdin, text=True,
                       preexec_fn=preexec_fn)
        try:
            if stdin_text is not None:
                proc.stdin.write(stdin_text)
                proc.stdin.close()
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            dump = stacks(proc.alive())
            proc.kill_all()
            err.seek(0)
            raise AssertionError(f"{' '.join(command)[-300:]} did not finish in {timeout} s; every process's "
                                 f"stacks:\n{dump}\n--- stderr (tail):\n{err.read()[-3000:]}") from None
        leftovers = proc.alive()
        deadline = time.monotonic() + 10  # helpers that end with their parent (multiprocessing's resource tracker)
        while leftovers and time.monotonic() < deadline:  # leave a moment after it: they are not stuck
            time.sleep(0.1)
            leftovers = proc.alive()
        dump = stacks(leftovers) if leftovers else ""
        proc.kill_all()
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(command, proc.returncode, out.read(), err.read())
    assert not leftovers, f"{' '.join(command)[-300:]} exited but left processes behind:\n{dump}"
    return done
