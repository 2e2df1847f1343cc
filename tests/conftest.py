"""Shared fixtures. Tests marked `engine` run the real vLLM engine on the embedded default model; one engine
serves the whole session (it starts in about 30-50 s on 2 CPU cores)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Everything this test run starts inherits the session tag: whatever is still alive at the end is found and killed.
os.environ.setdefault("CAI_TEST_SESSION", f"{os.getpid()}-{time.time_ns()}")
# Two engines may be alive at once (the session engine and a `cai` subprocess under test): keep each small.
TEST_ENGINE = {"gpu_memory_utilization": 0.2, "max_model_len": 2048}
# Every vLLM engine of the run (in-process, `cai` subprocesses, `vllm serve`) gets a 1 GiB KV cache (~20k tokens of
# the default model) instead of a share of memory: under `make test` two test workers run side by side, each with
# engines of its own, and an explicit size also skips vLLM's warm-up pass at start.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER is not None:
    # one of `make test`'s workers (pytest-xdist, one per core): one compute thread each, so two workers share the
    # cores instead of four threads fighting over two; vLLM binds its threads to this worker's own core.
    _cores = sorted(os.sched_getaffinity(0))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", str(_cores[int(WORKER.removeprefix("gw")) % len(_cores)]))


def _group(nodeid: str) -> str:
    """The unit `make test` hands a worker: a test file, or the whole `tests/server` folder (one server)."""
    path = nodeid.split("::", 1)[0]
    return "tests/server" if path.startswith("tests/server/") else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's file scheduling, with the server folder kept together. (Its `loadgroup` marks do nothing
    under pytest 9.2, which no longer reads the node id xdist rewrites.)"""
    from xdist.scheduler import LoadScopeScheduling

    class FilesAndServerFolder(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    return FilesAndServerFolder(config, log)


def pytest_collection_modifyitems(config, items):
    """The slowest groups first, so that under `make test` the two workers finish together (a file keeps its
    order)."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(_group(item.nodeid), len(rank)))


SLOWEST_FIRST = tuple(f"tests/{name}" for name in (
    "server", "test_rl_model.py", "test_train_model.py", "test_pipeline.py", "test_online.py", "test_grpo_engine.py",
    "test_judge_engine.py", "test_distributed.py", "test_grpo_model.py", "test_generate_engine.py",
    "test_debate_engine.py", "test_hostile_input.py", "test_review.py", "test_w2s_model.py", "test_engine_vllm.py"))
"""Test groups by their time in the last full run (the rest follow in collection order)."""


@pytest.fixture(scope="session")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def engine(loop):
    from cai.engines import EngineConfig, create_engine

    async def start():
        return create_engine(EngineConfig(**TEST_ENGINE))

    eng = loop.run_until_complete(start())
    yield eng
    loop.run_until_complete(eng.close())


def chromium() -> str:
    """Debian's Chromium for the browser tests. Under `make test` (CAI_REQUIRE_CHROMIUM=1, which installs it) a
    missing browser fails the test; run some other way, the test is skipped and says why."""
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CAI_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is missing, and `make test` (CAI_REQUIRE_CHROMIUM=1) needs it: scripts/setup.sh "
                        "--browser installs Debian's chromium")
        pytest.skip("Debian's chromium is not installed; `make test` installs it and fails without it")
    return path


def start_vllm_server(port: int, name: str = "smollm2") -> subprocess.Popen:
    """A real OpenAI-compatible vLLM server for the default model on 127.0.0.1:port (in its own process group)."""
    from cai.models import resolve_model

    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(None),
               "--served-model-name", name, "--dtype", "float32", "--enforce-eager", "--host", "127.0.0.1",
               "--port", str(port), "--max-model-len", str(TEST_ENGINE["max_model_len"]),
               "--gpu-memory-utilization", str(TEST_ENGINE["gpu_memory_utilization"]), "--max-logprobs", "20",
               "--distributed-executor-backend", "uni"]  # the model in the engine process, as cai's engine runs it
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    return subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_for_server(url: str, proc, timeout: float = 240.0) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"the vLLM server at {url} did not answer within {timeout} s")


def stop_server(proc) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def limited_file_size(max_bytes: int):
    """preexec_fn: a per-process file-size limit; writing past it fails with EFBIG (SIGXFSZ ignored)."""
    import resource
    import signal

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


def kill_when(proc: subprocess.Popen, due, budget_s: float = 600, poll_s: float = 0.005) -> bool:
    """SIGKILL `proc`'s process group as soon as `due()` holds; False when it finished first. Events, not
    timers: the same kills land on a slow or a fast machine."""
    deadline = time.monotonic() + budget_s
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the process neither finished nor reached its kill event"
        if due():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            return True
        time.sleep(poll_s)
    return False


_LEFT_BEHIND: list[str] = []


def pytest_sessionfinish(session, exitstatus):
    """No process the tests started may outlive them: leftovers (after 15 s to exit on their own) are listed with
    their stacks, killed, and fail the run."""
    from tests.processes import SESSION, kill_tagged, stacks, tagged

    if WORKER is not None:
        return  # the other worker's processes carry the same tag and are still running: the controller checks
    def left_behind() -> list[int]:
        return [pid for pid in tagged(SESSION, os.environ[SESSION]) if not _ends_with_this_process(pid)]

    left = left_behind()
    if not left:
        return
    import time as _time

    deadline = _time.monotonic() + 15
    while left and _time.monotonic() < deadline:
        _time.sleep(0.5)
        left = left_behind()
    if left:
        _LEFT_BEHIND.extend(_cmdline(pid) for pid in left)
        dump = stacks(left)
        kill_tagged(SESSION, os.environ[SESSION])
        print(f"\n*** the tests left {len(left)} processes behind (now killed):\n{dump}", file=sys.stderr)
        session.exitstatus = 1


def _ends_with_this_process(pid: int) -> bool:
    """multiprocessing's resource tracker, started by this pytest process when vLLM spawned its engine: it reads
    a pipe from this process and exits when this process does, so it is not a process the tests left behind."""
    try:
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return False
    return ppid == os.getpid() and b"multiprocessing.resource_tracker" in command


def _cmdline(pid: int) -> str:
    try:
        return f"pid {pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return f"pid {pid}: (gone)"


def pytest_unconfigure(config):
    """Repeat the leftovers after pytest's last line, where a log's tail shows them (the stacks are above)."""
    if _LEFT_BEHIND:
        print("\n*** FAILED: the tests left processes behind (stacks above):\n  " + "\n  ".join(_LEFT_BEHIND),
              file=sys.stderr)
