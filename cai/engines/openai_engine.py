"""OpenAI-compatible backend: `vllm serve`, SGLang, or a hosted API, spread over one or more servers.

    cai generate --model openai/SmolLM2 --base-url http://10.0.0.5:8000/v1 --base-url http://10.0.0.6:8000/v1

Each request goes to the healthy server with the fewest requests in flight (each server's concurrency is
bounded). 429s, 5xx, timeouts and connection errors are retried with exponential backoff and jitter (honouring
Retry-After); a server that fails `failure_threshold` times in a row leaves the rotation for a cool-down that
doubles while it keeps failing, then gets one trial request. When every retry is spent the engine reports itself
dead, so a run stops with everything completed on disk. The API key comes from an environment variable or a file
and is sent only in the Authorization header; `describe()` never includes it.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cai.engines.base import (
    Completion,
    Engine,
    EngineDeadError,
    Messages,
    PromptTooLongError,
    RequestError,
    Sampling,
    TokenLogprob,
)
from cai.errors import UsageError
from cai.runs.redact import redact_url

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class TransientError(Exception):
    """A failure worth retrying (on this or another server)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Server:
    url: str
    limit: asyncio.Semaphore
    in_flight: int = 0
    consecutive_failures: int = 0
    down_until: float = 0.0
    cooldown: float = 0.0
    ok: int = 0
    """Replies served (a server back from its cool-down shows here that it serves again)."""
    last_picked: float = 0.0

    def available(self, now: float) -> bool:
        return self.down_until <= now


def endpoint(base_url: str, path: str) -> str:
    """`base_url` + `/path`, keeping the base URL's query (a `?api_key=...` some gateways want) after the path."""
    parts = urlsplit(base_url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/" + path, parts.query, ""))


def read_api_key(env_var: str | None, key_file: str | None) -> str | None:
    if key_file:
        return Path(key_file).expanduser().read_text(encoding="utf-8").strip() or None
    return os.environ.get(env_var) if env_var else None


@dataclass
class Stats:
    requests: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class OpenAIEngine(Engine):
    def __init__(self, config: Any, transport: Any = None):
        """`transport`: an httpx transport to send requests through (tests pass an `httpx.MockTransport`)."""
        import httpx

        self.model_id = config.model.removeprefix("openai/")
        if not config.base_urls:
            raise UsageError("the openai engine needs at least one base URL (--base-url http://host:8000/v1)")
        self.settings = config.openai
        self.servers = [Server(url.rstrip("/"), asyncio.Semaphore(self.settings.max_concurrency_per_server))
                        for url in config.base_urls]
        key = read_api_key(self.settings.api_key_env, self.settings.api_key_file)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.AsyncClient(headers=headers, transport=transport,
                                         timeout=httpx.Timeout(self.settings.timeout_s, connect=10.0))
        self.stats = Stats()
        self._rng = random.Random()
        self.clock = time.monotonic
        """Seconds for cool-downs and turn-taking (a test may drive it by hand instead of waiting)."""

    def describe(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.model_id, "base_urls": [redact_url(s.url) for s in self.servers],
                "max_concurrency_per_server": self.settings.max_concurrency_per_server}

    def _pick(self) -> tuple[Server | None, float]:
        """The available server with the fewest requests outstanding (the least recently picked among equals, so
        sequential requests take turns and a server back from its cool-down gets its trial), or how long until one
        is back."""
        now = self.clock()
        ready = [s for s in self.servers if s.available(now)]
        if ready:
            server = min(ready, key=lambda s: (s.in_flight, s.last_picked))
            server.last_picked = now
            return server, 0.0
        return None, min(s.down_until for s in self.servers) - now

    def _failed(self, server: Server, reason: str) -> None:
        server.consecutive_failures += 1
        self.stats.errors[reason] = self.stats.errors.get(reason, 0) + 1
        if server.consecutive_failures >= self.settings.failure_threshold:
            server.cooldown = min(max(server.cooldown * 2, self.settings.cooldown_s), self.settings.max_cooldown_s)
            server.down_until = self.clock() + server.cooldown

    def _succeeded(self, server: Server) -> None:
        server.ok += 1
        server.consecutive_failures = 0
        server.cooldown = 0.0
        server.down_until = 0.0

    async def generate(self, messages: Messages, sampling: Sampling, *, continue_final: bool = False) -> Completion:
        body: dict[str, Any] = {"model": self.model_id, "messages": messages, "max_tokens": sampling.max_tokens,
                                "temperature": sampling.temperature, "top_p": sampling.top_p}
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.logprobs is not None:
            body.update(logprobs=True, top_logprobs=sampling.logprobs)
        if continue_final:  # vLLM's and SGLang's extension for continuing an assistant turn
            body.update(continue_final_message=True, add_generation_prompt=False)
        return self._completion(await self._request(body), sampling)

    async def response_logprob(self, messages: Messages, response: str) -> tuple[float, int]:
        """Through vLLM's `prompt_logprobs` extension: the reply is sent as a finished assistant turn and the log-
        probabilities of the prompt's last tokens are summed, read back from the end (the turn's end tokens
        first) until their text holds the whole response."""
        body = {"model": self.model_id, "messages": [*messages, {"role": "assistant", "content": response}],
                "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0, "add_generation_prompt": False}
        positions = (await self._request(body)).get("prompt_logprobs")
        if not positions:
            raise RequestError("the server returned no prompt log-probabilities; the contrast score needs a server "
                               "with vLLM's `prompt_logprobs` (vllm serve), or judge with `--no-contrast`")
        total, text, count, wanted = 0.0, "", 0, response.strip()
        for position in reversed(positions):
            if wanted in text or not position:
                break
            token = next(iter(position.values()))  # prompt_logprobs=0: the prompt's own token only
            total, text, count = total + token["logprob"], (token.get("decoded_token") or "") + text, count + 1
        if wanted not in text:
            raise RequestError("the server's prompt tokens do not end with the response")
        return total, count

    async def _request(self, body: dict[str, Any]) -> dict[str, Any]:
        """The reply to one request, retried on transient failures across the servers."""
        self.stats.requests += 1
        last_error = "no attempt"
        for attempt in range(self.settings.max_retries + 1):
            if attempt:
                self.stats.retries += 1
            server, wait = self._pick()
            if server is None:
                await asyncio.sleep(min(wait, self.settings.max_cooldown_s))
                server, _ = self._pick()
                if server is None:
                    continue
            server.in_flight += 1  # outstanding, waiting for a slot included
            try:
                async with server.limit:
                    data = await self._post(server, body)
            except TransientError as e:
                last_error = f"{redact_url(server.url)}: {e}"
                self._failed(server, str(e).split(":")[0])
                delay = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** attempt)
                delay = delay * (0.5 + self._rng.random() / 2)
                await asyncio.sleep(max(delay, e.retry_after or 0.0))
                continue
            finally:
                server.in_flight -= 1
            self._succeeded(server)
            return data
        raise EngineDeadError(f"no server answered after {self.settings.max_retries + 1} tries ({last_error})")

    async def _post(self, server: Server, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            response = await self._client.post(endpoint(server.url, "chat/completions"), json=body)
        except (httpx.TimeoutException, httpx.TransportError) as e:
            raise TransientError(f"{type(e).__name__}: {e}") from None
        if response.status_code in RETRYABLE_STATUS:
            retry_after = response.headers.get("retry-after")
            raise TransientError(f"HTTP {response.status_code}: {response.text[:200]}",
                                 float(retry_after) if retry_after and retry_after.isdigit() else None)
        if response.status_code >= 400:
            text = response.text[:500]
            if "context length" in text or "maximum context" in text or "too long" in text:
                raise PromptTooLongError(f"HTTP {response.status_code}: {text}")
            raise RequestError(f"HTTP {response.status_code}: {text}")
        try:
            return response.json()
        except ValueError:
            raise TransientError(f"invalid JSON reply: {response.text[:200]}") from None

    def _completion(self, data: dict[str, Any], sampling: Sampling) -> Completion:
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        top = None
        if sampling.logprobs is not None:
            content = (choice.get("logprobs") or {}).get("content")
            if not content:
                raise RequestError("the server returned no log-probabilities; the judge needs a server that supports "
                                   "`logprobs` and `top_logprobs` on chat completions (vLLM and SGLang do)")
            top = [sorted((TokenLogprob(token=alt["token"], logprob=alt["logprob"]) for alt in position["top_logprobs"]),
                          key=lambda t: -t.logprob) for position in content]
        text = choice["message"].get("content") or ""
        completion_tokens = usage.get("completion_tokens", len(top) if top else 0)
        self.generated_tokens += completion_tokens
        details = usage.get("prompt_tokens_details") or {}
        return Completion(text=text, prompt_tokens=usage.get("prompt_tokens", 0), completion_tokens=completion_tokens,
                          finish_reason=choice.get("finish_reason"), top_logprobs=top,
                          cached_tokens=details.get("cached_tokens"))

    async def close(self) -> None:
        await self._client.aclose()
