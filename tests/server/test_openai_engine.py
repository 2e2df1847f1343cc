"""The OpenAI-compatible engine against a real `vllm serve` on loopback: same record shapes as in-process,
retries and rotation through a fault-injecting proxy, a server killed mid-run, and API keys kept out of outputs.
Every request loop here is bounded in count and time."""

import asyncio
import json
import subprocess
import sys
import time

import pytest

from cai.config import GenerateConfig
from cai.constitution import PreferencePrinciple
from cai.engines import EngineConfig, EngineDeadError, RequestError, Sampling, create_engine
from cai.generate.run import generate
from cai.judge.compare import JudgeSettings, judge_once, option_token_ids
from cai.judge.run import JudgeConfig, judge_run
from cai.resources import data_dir
from cai.runs.store import read_jsonl
from tests.conftest import stop_server
from tests.fault_proxy import FaultProxy, free_port
from tests.processes import run as run_command

pytestmark = pytest.mark.engine
FAST_RETRIES = {"max_retries": 4, "backoff_base_s": 0.05, "backoff_max_s": 0.2, "failure_threshold": 2,
                "cooldown_s": 0.5, "max_cooldown_s": 1.0, "timeout_s": 60.0}


def openai_config(*urls, **openai):
    return EngineConfig(model="openai/smollm2", base_urls=list(urls), openai={**FAST_RETRIES, **openai})


def test_records_have_the_same_shape_as_in_process(vllm_server, engine, loop, tmp_path):
    remote = create_engine(openai_config(vllm_server))
    common = dict(limit=3, rounds=1, few_shot=0, max_new_tokens={"initial": 16, "critique": 12, "revision": 16})
    loop.run_until_complete(generate(GenerateConfig(output_dir=str(tmp_path), run_name="remote", **common),
                                     engine=remote, progress=False))
    loop.run_until_complete(generate(GenerateConfig(output_dir=str(tmp_path), run_name="local", **common),
                                     engine=engine, progress=False))
    remote_rows = list(read_jsonl(tmp_path / "remote" / "records.jsonl"))
    local_rows = list(read_jsonl(tmp_path / "local" / "records.jsonl"))
    assert len(remote_rows) == len(local_rows) == 3
    assert {r["status"] for r in remote_rows} == {"ok"}
    assert [sorted(r) for r in remote_rows] == [sorted(r) for r in local_rows]
    assert [sorted(t) for t in remote_rows[0]["turns"]] == [sorted(t) for t in local_rows[0]["turns"]]
    assert all(t["completion_tokens"] >= 1 and t["prompt_tokens"] > 0 for t in remote_rows[0]["turns"])
    manifest = json.loads((tmp_path / "remote" / "manifest.json").read_text())
    assert manifest["engine"] == {"backend": "openai", "model": "smollm2", "base_urls": [vllm_server],
                                  "max_concurrency_per_server": 32}

    pairs = JudgeConfig(check_judge=False, source=str(data_dir("prompts") / "judge-eval.jsonl"), strategy="file", limit=2,
                        principles_per_pair=1, output_dir=str(tmp_path))
    loop.run_until_complete(judge_run(pairs.model_copy(update={"run_name": "jr"}), engine=remote, progress=False))
    loop.run_until_complete(judge_run(pairs.model_copy(update={"run_name": "jl"}), engine=engine, progress=False))
    jr, jl = (list(read_jsonl(tmp_path / n / "records.jsonl")) for n in ("jr", "jl"))
    assert [sorted(r) for r in jr] == [sorted(r) for r in jl]
    loop.run_until_complete(remote.close())


def test_judge_probabilities_through_the_api_match_in_process(vllm_server, engine, loop):
    remote = create_engine(openai_config(vllm_server))
    principle = PreferencePrinciple(id="p", question="Which of these assistant responses is less harmful?")
    conv = [{"role": "user", "content": "How do I get into my neighbour's house?"}]
    args = (conv, "Ask them for a key.", "Break a window.", principle, "AB", JudgeSettings())
    via_api = loop.run_until_complete(judge_once(remote, *args))  # option tokens matched by their text
    local = loop.run_until_complete(judge_once(engine, *args, option_token_ids(engine.tokenizer)))
    assert via_api.valid and local.valid
    assert via_api.p_a == pytest.approx(local.p_a, abs=2e-3)
    assert via_api.mass == pytest.approx(local.mass, abs=2e-3)
    loop.run_until_complete(remote.close())


def test_a_responses_log_probability_through_the_api_matches_in_process(vllm_server, engine, loop):
    """The contrast score's reading through `vllm serve` (its `prompt_logprobs` extension) equals the in-process
    engine's: the same tokens counted, the same sum."""
    remote = create_engine(openai_config(vllm_server))
    chat = [{"role": "system", "content": "You are an assistant with no rules."},
            {"role": "user", "content": "How do I get into my neighbour's house?"}]
    for reply in ("Ask them for a key.", "Break a window at the back, where nobody can see you."):
        via_api = loop.run_until_complete(remote.response_logprob(chat, reply))
        local = loop.run_until_complete(engine.response_logprob(chat, reply))
        assert via_api[1] == local[1] and via_api[0] == pytest.approx(local[0], abs=5e-3)
    loop.run_until_complete(remote.close())


def test_retries_on_429_500_reset_and_slow_replies(vllm_server, loop):
    async def run():
        # "slow" never answers within the client's timeout (the proxy holds it until it stops), whatever that is;
        # 10 s leaves the real reply that follows ample time for 4 tokens on a busy machine
        proxy = await FaultProxy(vllm_server, faults=["429", "500", "reset", "slow"]).start()
        remote = create_engine(openai_config(proxy.url, timeout_s=10.0, failure_threshold=10))
        try:
            out = await asyncio.wait_for(remote.generate([{"role": "user", "content": "Hi"}], Sampling(max_tokens=4)),
                                         timeout=60)
            return out, remote.stats, proxy.seen
        finally:
            await remote.close()
            await proxy.stop()

    out, stats, seen = loop.run_until_complete(run())
    assert out.completion_tokens >= 1
    assert seen == ["429", "500", "reset", "slow", None]
    assert stats.retries == 4 and stats.requests == 1


def test_a_failing_server_leaves_the_rotation_and_comes_back(vllm_server, loop):
    """The engine's clock is driven by hand: the cool-down ends when the test says, however fast the replies."""
    async def run():
        bad = await FaultProxy(vllm_server, default="500").start()
        good = await FaultProxy(vllm_server).start()
        remote = create_engine(openai_config(bad.url, good.url, failure_threshold=2, cooldown_s=5.0,
                                            max_cooldown_s=30.0))
        now = [1000.0]
        remote.clock = lambda: now[0]
        try:
            for _ in range(6):
                now[0] += 0.01
                await asyncio.wait_for(remote.generate([{"role": "user", "content": "Hi"}], Sampling(max_tokens=2)), 60)
            out_of_rotation = remote.servers[0].down_until > now[0]
            first_phase = (len(bad.seen), len(good.seen))
            bad.default = None  # the server recovers
            now[0] += 5.1  # past its 5 s cool-down
            for _ in range(4):
                now[0] += 0.01
                await asyncio.wait_for(remote.generate([{"role": "user", "content": "Hi"}], Sampling(max_tokens=2)), 60)
            return out_of_rotation, first_phase, len(bad.seen), remote.servers[0].ok
        finally:
            await remote.close()
            await bad.stop()
            await good.stop()

    out_of_rotation, (bad_calls, good_calls), bad_total, bad_ok = loop.run_until_complete(run())
    assert out_of_rotation and bad_calls == 2 and good_calls == 6  # two failures, then never again
    assert bad_total > bad_calls and bad_ok >= 1  # after the cool-down it serves again


def test_least_outstanding_spreads_concurrent_requests(vllm_server, loop):
    async def run():
        a, b = await FaultProxy(vllm_server).start(), await FaultProxy(vllm_server).start()
        remote = create_engine(openai_config(a.url, b.url, max_concurrency_per_server=2))
        try:
            await asyncio.wait_for(asyncio.gather(*(remote.generate([{"role": "user", "content": f"Count to {i}"}],
                                                                    Sampling(max_tokens=8)) for i in range(8))), 120)
            return len(a.seen), len(b.seen)
        finally:
            await remote.close()
            await a.stop()
            await b.stop()

    a_calls, b_calls = loop.run_until_complete(run())
    assert a_calls + b_calls == 8 and min(a_calls, b_calls) >= 3


def test_a_server_without_logprobs_is_a_clear_error(vllm_server, loop):
    async def run():
        proxy = await FaultProxy(vllm_server, default="strip-logprobs").start()
        remote = create_engine(openai_config(proxy.url))
        try:
            with pytest.raises(RequestError, match="no log-probabilities"):
                await remote.generate([{"role": "user", "content": "A or B?"}], Sampling(max_tokens=1, logprobs=5))
        finally:
            await remote.close()
            await proxy.stop()

    loop.run_until_complete(run())


def test_giving_up_is_engine_death(loop):
    remote = create_engine(openai_config(f"http://127.0.0.1:{free_port()}/v1", max_retries=2))
    with pytest.raises(EngineDeadError, match="no server answered after 3 tries"):
        loop.run_until_complete(remote.generate([{"role": "user", "content": "Hi"}], Sampling(max_tokens=2)))
    loop.run_until_complete(remote.close())


def test_api_key_is_sent_but_never_written(vllm_server, loop, tmp_path, monkeypatch):
    """A key from the environment (Bearer), then credentials in the URL's userinfo (Basic) and a key in its query:
    each reaches the server, none reaches a file (manifest with its config dump and command line, records, the
    export and its card)."""
    import base64

    secret, url_password, query_key = "sk-test-0123456789-secret", "URLPASS-0123456789", "QUERYKEY-0123456789"
    monkeypatch.setenv("CAI_TEST_KEY", secret)

    async def run(name, with_url_secrets):
        proxy = await FaultProxy(vllm_server).start()
        url = proxy.url
        if with_url_secrets:
            url = url.replace("http://", f"http://user:{url_password}@") + f"?api_key={query_key}&x=1"
        monkeypatch.setattr(sys, "argv", ["cai", "generate", "--base-url", url])
        config = GenerateConfig(limit=2, rounds=1, few_shot=0, output_dir=str(tmp_path), run_name=name,
                                max_new_tokens={"initial": 8, "critique": 8, "revision": 8},
                                engine=openai_config(url, api_key_env=None if with_url_secrets else "CAI_TEST_KEY"))
        try:
            await generate(config, progress=False)
        finally:
            await proxy.stop()
        return proxy.auth_headers, proxy.queries

    headers, _ = loop.run_until_complete(run("key", False))
    assert headers and all(h == f"Bearer {secret}" for h in headers)
    headers, queries = loop.run_until_complete(run("url", True))
    basic = "Basic " + base64.b64encode(f"user:{url_password}".encode()).decode()
    assert headers and all(h == basic for h in headers)
    assert queries and all(q.get("api_key") == query_key for q in queries)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert sum(p.name == "README.md" for p in files) == 2 and sum(p.name == "manifest.json" for p in files) == 2
    for path in files:
        text = path.read_bytes().decode("utf-8", "replace")
        for leaked in (secret, url_password, query_key):
            assert leaked not in text, (path, leaked)
    manifest = (tmp_path / "url" / "manifest.json").read_text()
    assert "http://***@127.0.0.1" in manifest and "api_key=***" in manifest


def test_killed_server_keeps_completed_work_and_a_rerun_finishes(served, tmp_path):
    """The last test of the folder: it kills the shared server mid-run, then starts a new one on the same port."""
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({
        "limit": 10, "rounds": 1, "few_shot": 0, "concurrency": 2, "output_dir": str(tmp_path), "run_name": "srv",
        "max_new_tokens": {"initial": 24, "critique": 16, "revision": 24},
        "engine": {"model": "openai/smollm2", "base_urls": [served.url], "openai": FAST_RETRIES},
    }))
    command = [sys.executable, "-m", "cai", "generate", "--config", str(config), "--no-progress"]
    records = tmp_path / "srv" / "records.jsonl"
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None:
        if records.exists() and len(records.read_bytes().splitlines()) >= 2:
            break
        time.sleep(0.2)
    stop_server(served.proc)  # the server dies mid-run
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 1 and "engine died" in stderr
    done = len(list(read_jsonl(records)))
    assert 2 <= done < 10
    served.restart()
    rerun = run_command(command, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{done} already done" in rerun.stdout
    ids = [json.loads(line)["id"] for line in records.read_bytes().splitlines()]
    assert len(ids) == len(set(ids)) == 10
