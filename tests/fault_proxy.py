"""A fault-injecting HTTP proxy on loopback for the OpenAI-engine tests: it forwards to a real server, or answers
with scripted faults (429, 500, a reset connection, a slow reply, a reply without log-probabilities)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

from aiohttp import ClientSession, ClientTimeout, web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultProxy:
    """`faults` is consumed one per request ("429", "500", "reset", "slow", "strip-logprobs", None = forward);
    when it runs out, `default` applies to every further request."""

    def __init__(self, upstream: str, faults: list[str | None] | None = None, default: str | None = None,
                 slow_seconds: float = 600.0):
        self.upstream = upstream.rstrip("/")
        self.faults = list(faults or [])
        self.default = default
        self.slow_seconds = slow_seconds
        self.seen: list[str | None] = []
        self.auth_headers: list[str | None] = []
        self.queries: list[dict[str, str]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._session: ClientSession | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fault = self.faults.pop(0) if self.faults else self.default
        self.seen.append(fault)
        self.auth_headers.append(request.headers.get("Authorization"))
        self.queries.append(dict(request.query))
        body = await request.read()
        if fault == "429":
            return web.Response(status=429, text="slow down", headers={"Retry-After": "0"})
        if fault == "500":
            return web.Response(status=500, text="internal error")
        if fault == "reset":
            request.transport.close()  # the client sees the connection drop
            raise asyncio.CancelledError
        if fault == "slow":  # held until the proxy stops (or slow_seconds): always slower than any client timeout
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.slow_seconds)
            return web.Response(status=504, text="too slow")
        async with self._session.post(f"{self.upstream}{request.path.removeprefix('/v1')}", data=body,
                                      headers={"Content-Type": "application/json"}) as upstream:
            payload = await upstream.read()
            status = upstream.status
        if fault == "strip-logprobs" and status == 200:
            data = json.loads(payload)
            for choice in data["choices"]:
                choice["logprobs"] = None
            payload = json.dumps(data).encode()
        return web.Response(status=status, body=payload, content_type="application/json")

    async def start(self) -> FaultProxy:
        self._session = ClientSession(timeout=ClientTimeout(total=120))
        app = web.Application()
        app.router.add_route("POST", "/v1/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
