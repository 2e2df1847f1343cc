"""Tests against a real `vllm serve` on loopback. One server serves this whole folder (it starts in about 40 s on
2 CPU cores); the last test kills it on purpose and starts another on the same port."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import pytest

from tests.conftest import start_vllm_server, stop_server, wait_for_server
from tests.fault_proxy import free_port


@dataclass
class Served:
    port: int
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def restart(self) -> None:
        stop_server(self.proc)
        self.proc = start_vllm_server(self.port)
        wait_for_server(self.url, self.proc)


@pytest.fixture(scope="package")
def served():
    port = free_port()
    server = Served(port, start_vllm_server(port))
    try:
        wait_for_server(server.url, server.proc)
        yield server
    finally:
        stop_server(server.proc)


@pytest.fixture(scope="package")
def vllm_server(served) -> str:
    """Base URL of the folder's server, e.g. http://127.0.0.1:PORT/v1."""
    return served.url
