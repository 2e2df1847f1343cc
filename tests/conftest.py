"""Shared fixtures. Tests marked `engine` run the real vLLM engine on the embedded default model; one engine
serves the whole session (it starts in about 30-50 s on 2 CPU cores)."""

from __future__ import annotations

import asyncio
import os
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
