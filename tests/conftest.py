"""Shared fixtures. Tests marked `engine` run the real vLLM engine on the embedded default model; one engine
serves the whole session (it starts in about 30-50 s on 2 CPU cores)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Two engines may be alive at once (the session engine and a `cai` subprocess under test): keep each small.
TEST_ENGINE = {"gpu_memory_utilization": 0.2, "max_model_len": 2048}


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


@pytest.fixture
def cai_cmd():
    """The `cai` command line of this environment, for subprocess tests."""
    return [sys.executable, "-m", "cai"]


@pytest.fixture
def subprocess_env():
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def kill_after_records(command: list[str], records, at_least: int, env=None, timeout: float = 300.0) -> None:
    """Start `command` in its own process group and SIGKILL the whole group (the CLI and vLLM's engine process)
    once `records` holds `at_least` lines; fails if the run ends first or the time runs out."""
    import signal
    import time

    proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if records.exists() and len(records.read_bytes().splitlines()) >= at_least:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def start_vllm_server(port: int, name: str = "smollm2") -> subprocess.Popen:
    """A real OpenAI-compatible vLLM server for the default model on 127.0.0.1:port (in its own process group)."""
    from cai.models import resolve_model

    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(None),
               "--served-model-name", name, "--dtype", "float32", "--enforce-eager", "--host", "127.0.0.1",
               "--port", str(port), "--max-model-len", str(TEST_ENGINE["max_model_len"]),
               "--gpu-memory-utilization", str(TEST_ENGINE["gpu_memory_utilization"]), "--max-logprobs", "20"]
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
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


@pytest.fixture(scope="module")
def vllm_server():
    """Base URL of a real `vllm serve` on loopback, shared by a test module and stopped after it (so its memory
    is free for the engines of later modules)."""
    from tests.fault_proxy import free_port

    port = free_port()
    proc = start_vllm_server(port)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_for_server(url, proc)
        yield url
    finally:
        stop_server(proc)
