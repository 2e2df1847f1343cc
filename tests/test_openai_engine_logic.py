"""`OpenAIEngine`'s server choice, retries, back-off and cool-downs against `httpx.MockTransport` (pure client
logic with scripted replies; the real `vllm serve` tests are in tests/server/). The engine's clock is driven by
hand, so nothing here depends on this machine's speed."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from cai.engines import EngineConfig, EngineDeadError, RequestError, Sampling
from cai.engines.openai_engine import OpenAIEngine

FAST = {"max_retries": 3, "backoff_base_s": 0.0, "backoff_max_s": 0.0, "failure_threshold": 2, "cooldown_s": 5.0,
        "max_cooldown_s": 20.0, "api_key_env": None}
HI = [{"role": "user", "content": "hi"}]


def reply(text: str = "ok") -> httpx.Response:
    return httpx.Response(200, json={"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                                     "usage": {"prompt_tokens": 3, "completion_tokens": 1}})


class Servers:
    """Scripted servers by host: each host answers with its next scripted status (200 when the script ends)."""

    def __init__(self, **scripts: list[int]):
        self.scripts = scripts
        self.seen: list[str] = []
        self.urls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.seen.append(host)
        self.urls.append(str(request.url))
        script = self.scripts.get(host, [])
        status = script.pop(0) if script else 200
        if status == 200:
            return reply(host)
        headers = {"Retry-After": "0"} if status == 429 else {}
        return httpx.Response(status, text=f"status {status}", headers=headers)


def engine(servers: Servers, *hosts: str, **settings) -> tuple[OpenAIEngine, list[float]]:
    config = EngineConfig(model="openai/m", base_urls=[f"http://{h}:8000/v1" for h in hosts],
                          openai={**FAST, **settings})
    remote = OpenAIEngine(config, transport=httpx.MockTransport(servers))
    now = [100.0]
    remote.clock = lambda: now[0]
    return remote, now


def run(remote: OpenAIEngine, n: int = 1) -> list[str]:
    async def go():
        try:
            return [(await remote.generate(HI, Sampling(max_tokens=1))).text for _ in range(n)]
        finally:
            await remote.close()
    return asyncio.run(go())


def test_sequential_requests_take_turns_across_servers():
    servers = Servers()
    remote, now = engine(servers, "a", "b", "c")

    async def go():
        out = []
        for _ in range(6):
            now[0] += 1
            out.append((await remote.generate(HI, Sampling(max_tokens=1))).text)
        await remote.close()
        return out

    assert asyncio.run(go()) == ["a", "b", "c", "a", "b", "c"]  # least recently picked among equally idle servers


def test_transient_failures_are_retried_and_counted():
    servers = Servers(a=[429, 500, 503])
    remote, _ = engine(servers, "a", failure_threshold=10)
    assert run(remote) == ["a"]
    assert servers.seen == ["a"] * 4 and remote.stats.retries == 3 and remote.stats.requests == 1


def test_a_failing_server_leaves_the_rotation_until_its_cool_down_ends():
    servers = Servers(a=[500, 500])
    remote, now = engine(servers, "a", "b")

    async def go():
        texts = [(await remote.generate(HI, Sampling(max_tokens=1))).text for _ in range(4)]
        out_of_rotation = remote.servers[0].down_until > now[0]
        now[0] += 5.1  # past the 5 s cool-down: `a` gets a trial request, and it answers
        texts += [(await remote.generate(HI, Sampling(max_tokens=1))).text for _ in range(2)]
        await remote.close()
        return texts, out_of_rotation

    texts, out_of_rotation = asyncio.run(go())
    assert out_of_rotation
    # two failures on `a` (the first request retried on `b`... and the next one's first try on `a` fails too),
    # then `b` alone until the cool-down ends; `a` serves again afterwards
    assert servers.seen.count("a") == 3 and texts[:4] == ["b"] * 4 and "a" in texts[4:]


def test_the_cool_down_doubles_while_a_server_keeps_failing():
    servers = Servers(a=[500] * 6)
    remote, now = engine(servers, "a", "b")

    async def go():
        for _ in range(2):
            await remote.generate(HI, Sampling(max_tokens=1))
        first = remote.servers[0].cooldown
        now[0] += first + 0.1
        await remote.generate(HI, Sampling(max_tokens=1))  # the trial request fails: out again, for longer
        await remote.close()
        return first, remote.servers[0].cooldown

    assert asyncio.run(go()) == (5.0, 10.0)


def test_every_server_failing_ends_the_run_with_engine_dead():
    remote, _ = engine(Servers(a=[500] * 10), "a", failure_threshold=100)
    with pytest.raises(EngineDeadError, match="no server answered after 4 tries"):
        run(remote)


def test_a_rejected_request_is_not_retried_and_a_query_key_reaches_the_server():
    def server(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions" and request.url.params["api_key"] == "K"
        assert json.loads(request.content)["max_tokens"] == 1
        return httpx.Response(400, text="maximum context length is 10 tokens")

    config = EngineConfig(model="openai/m", base_urls=["http://a:8000/v1?api_key=K"], openai=FAST)
    remote = OpenAIEngine(config, transport=httpx.MockTransport(server))
    with pytest.raises(RequestError, match="maximum context length"):
        run(remote)
    assert remote.stats.retries == 0


def test_a_responses_log_probability_is_read_from_the_prompts_last_tokens():
    """`response_logprob` through vLLM's `prompt_logprobs`: the reply is sent as an open assistant turn, and the
    tokens read back from the end until their text covers it are summed (scripted server reply)."""
    bodies = []
    tokens = [("<|im_start|>", -1.0), ("assistant", -0.5), ("\n", -0.2), ("Ask", -2.0), (" them", -1.5), (".", -0.25),
              ("<|im_end|>", -0.5), ("\n", -0.01)]

    def server(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        positions = [None] + [{str(i): {"logprob": lp, "rank": 1, "decoded_token": t}} for i, (t, lp) in
                              enumerate(tokens)]
        return httpx.Response(200, json={"choices": [{"message": {"content": "x"}, "finish_reason": "length"}],
                                         "usage": {"prompt_tokens": 7, "completion_tokens": 1},
                                         "prompt_logprobs": positions})

    config = EngineConfig(model="openai/m", base_urls=["http://a:8000/v1"], openai=FAST)
    remote = OpenAIEngine(config, transport=httpx.MockTransport(server))
    total, count = asyncio.run(remote.response_logprob(HI, "Ask them."))
    assert count == 5 and total == pytest.approx(-2.0 - 1.5 - 0.25 - 0.5 - 0.01)  # the reply and its end of turn
    sent = bodies[0]
    assert sent["messages"][-1] == {"role": "assistant", "content": "Ask them."}
    assert sent["prompt_logprobs"] == 0 and "continue_final_message" not in sent
    assert sent["add_generation_prompt"] is False and sent["max_tokens"] == 1


def test_a_server_without_prompt_logprobs_is_a_clear_error_for_the_contrast():
    config = EngineConfig(model="openai/m", base_urls=["http://a:8000/v1"], openai=FAST)
    remote = OpenAIEngine(config, transport=httpx.MockTransport(lambda request: reply()))
    with pytest.raises(RequestError, match="prompt log-probabilities.*vllm serve"):
        asyncio.run(remote.response_logprob(HI, "Ask them."))
