"""Crash safety, measured: `cai generate` and `cai judge` are SIGKILLed at 20 seeded random moments each (against a
real `vllm serve` on loopback, so each restart costs seconds, not an engine start) and resumed every time; a DPO
run is killed at random moments between checkpoints (tests/test_train_model.py); writes that fail for real (a file-size limit, the kernel's
EFBIG, standing in for a full disk) end runs with a clear message and leave every earlier record readable.

After every kill the records file may end in one torn line (cut on the next start) and nothing else: every other
line is whole JSON and no id appears twice. At the end every input appears exactly once and the exported dataset
equals an uninterrupted run's (greedy decoding and judge log-probs, so the content is fixed).
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cai.store import read_jsonl
from tests.conftest import limited_file_size

pytestmark = pytest.mark.engine
KILLS = int(os.environ.get("CAI_TEST_KILLS", "20"))
PROMPTS = 12


def whole_lines(path: Path) -> list[dict]:
    """Every line but a torn last one must parse; returns the parsed records."""
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines[-1]:  # no final newline: a torn tail, allowed once, at the end
        lines = lines[:-1]
    return [json.loads(line) for line in lines if line]


def kill_at_random_moments(command: list[str], records: Path, kills: int, seed: int, window: tuple[float, float],
                           log_dir: Path, budget_s: float = 600) -> list[dict]:
    """Start `command` again and again, SIGKILLing its process group at a seeded random moment in `window` seconds
    after each start, until `kills` kills are done (a start that finishes first just counts as a finished
    rerun). After each kill, the records on disk are checked. Returns one entry per start."""
    rng = random.Random(seed)
    history: list[dict] = []
    deadline = time.monotonic() + budget_s
    while sum(h["killed"] for h in history) < kills:
        assert time.monotonic() < deadline, f"harness ran out of time after {len(history)} starts"
        delay = rng.uniform(*window)
        before = len(whole_lines(records))
        with open(log_dir / "last-start.log", "wb") as err:
            proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err)
            try:
                code = proc.wait(timeout=delay)
                killed = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
                code, killed = None, True
        assert killed or code == 0, (log_dir / "last-start.log").read_text()[-3000:]
        parsed = whole_lines(records)
        ids = [r["id"] for r in parsed]
        assert len(ids) == len(set(ids)), "a record was written twice"
        history.append({"delay": round(delay, 2), "killed": killed, "records_before": before,
                        "records_after": len(parsed)})
    return history


def finish(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def server_args(url: str) -> list[str]:
    return ["--model", "openai/smollm2", "--base-url", url, "--no-progress"]


@pytest.fixture(scope="module")
def generate_command(vllm_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("crash")
    base = [sys.executable, "-m", "cai", "generate", "--limit", str(PROMPTS), "--rounds", "1", "--few-shot", "0",
            "--max-new-tokens", "10", "--temperature", "0", "--concurrency", "1", "--output-dir", str(out),
            *server_args(vllm_server)]
    finish(base + ["--run-name", "straight"])
    return base, out


def test_generate_survives_20_random_sigkills(generate_command, tmp_path):
    base, out = generate_command
    command = base + ["--run-name", "killed"]
    records = out / "killed" / "records.jsonl"
    history = kill_at_random_moments(command, records, KILLS, seed=1, window=(0.3, 3.5), log_dir=tmp_path)
    finish(command)
    assert sum(h["killed"] for h in history) == KILLS
    assert any(h["killed"] and h["records_after"] == 0 for h in history)  # some during start-up
    assert any(h["killed"] and h["records_after"] > h["records_before"] for h in history)  # some mid-run
    lines = records.read_bytes().splitlines(keepends=True)
    assert all(line.endswith(b"\n") for line in lines)
    final = [json.loads(line) for line in lines]
    assert sorted(r["id"] for r in final) == [f"rt-{i:03d}" for i in range(1, PROMPTS + 1)]
    assert all(r["status"] == "ok" for r in final)
    manifest = json.loads((out / "killed" / "manifest.json").read_text())
    assert 1 <= manifest["resumed"] <= len(history)  # starts killed before opening the run do not count

    def by_id(run):
        return {r["messages"][0]["content"]: r["messages"] for r in read_jsonl(out / run / "export" / "sft.jsonl")}

    assert by_id("killed") == by_id("straight")


def test_judge_survives_20_random_sigkills(generate_command, vllm_server, tmp_path):
    _, out = generate_command
    base = [sys.executable, "-m", "cai", "judge", str(out / "straight"), "--principles", "2", "--concurrency", "1",
            "--output-dir", str(tmp_path), *server_args(vllm_server)]
    finish(base + ["--run-name", "straight"])
    command = base + ["--run-name", "killed"]
    records = tmp_path / "killed" / "records.jsonl"
    history = kill_at_random_moments(command, records, KILLS, seed=2, window=(0.3, 2.5), log_dir=tmp_path)
    finish(command)
    assert sum(h["killed"] for h in history) == KILLS
    assert any(h["killed"] and h["records_after"] > h["records_before"] for h in history)
    pairs = len(list(read_jsonl(tmp_path / "straight" / "records.jsonl")))  # pairs whose revision differs
    final = [json.loads(line) for line in (tmp_path / "killed" / "records.jsonl").read_bytes().splitlines()]
    assert len(final) == len({r["id"] for r in final}) == pairs >= PROMPTS // 2

    def labels(run):
        return {r["prompt"][-1]["content"]: (r["chosen"], r["rejected"], r["p_chosen"])
                for r in read_jsonl(tmp_path / run / "export" / "train.jsonl")}

    straight, killed = labels("straight"), labels("killed")
    assert straight.keys() == killed.keys() and len(straight) > 0
    for key, (chosen, rejected, p) in straight.items():
        assert killed[key][:2] == (chosen, rejected)
        assert killed[key][2] == pytest.approx(p, abs=1e-3)


def test_a_failing_write_ends_generate_clearly_and_a_rerun_resumes(vllm_server, tmp_path):
    """A 20 KB file-size limit: the manifest (about 18 KB) fits, the records file outgrows it mid-run."""
    def command(name):
        return [sys.executable, "-m", "cai", "generate", "--limit", "16", "--rounds", "1", "--few-shot", "0",
                "--max-new-tokens", "10", "--concurrency", "4", "--output-dir", str(tmp_path), "--run-name", name,
                *server_args(vllm_server)]

    records = tmp_path / "full" / "records.jsonl"
    limit = 20 * 1024
    failed = subprocess.run(command("full"), capture_output=True, text=True, timeout=600,
                            preexec_fn=limited_file_size(limit))
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert failed.stderr.count("\n") <= 2, failed.stderr  # one message, nothing else
    message = failed.stderr.strip().splitlines()[-1]
    assert message.startswith("cai: run failed: ")
    assert "cannot write to" in message and "records.jsonl" in message and "File too large" in message
    assert "rerun the same command" in message and "Traceback" not in failed.stderr
    kept = list(read_jsonl(records))
    assert 0 < len(kept) < 16 and records.stat().st_size <= limit
    assert whole_lines(records) == kept  # at most a torn tail besides whole records
    finish(command("full"))
    final = list(read_jsonl(records))
    assert len(final) == len({r["id"] for r in final}) == 16
    assert final[: len(kept)] == kept  # earlier records untouched
    tiny = subprocess.run(command("tiny"), capture_output=True, text=True, timeout=600,
                          preexec_fn=limited_file_size(4096))  # not even the manifest fits
    assert tiny.returncode == 1 and "cannot write" in tiny.stderr and "manifest.json" in tiny.stderr
    assert "Traceback" not in tiny.stderr
