"""Crash safety, measured: `cai generate` and `cai judge` are SIGKILLed at 10 seeded random events each (against a
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
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cai.runs.store import read_jsonl
from tests.conftest import kill_when, limited_file_size
from tests.processes import run as run_command

pytestmark = pytest.mark.engine
KILLS = int(os.environ.get("CAI_TEST_KILLS", "10"))  # CAI_TEST_KILLS=50 for a longer soak
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


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def kill_on_events(command: list[str], records: Path, kills: int, seed: int, total: int, log_dir: Path,
                   budget_s: float = 900) -> list[dict]:
    """Start `command` again and again and SIGKILL its process group at a seeded random event, until `kills`
    kills are done: at start-up (the moment the run's manifest is written, before any new record) or mid-run
    (the moment 1-3 more records are on disk, plus a random 0-50 ms so some land inside a write). A start that
    finishes first counts as a finished rerun. After each kill the records on disk are checked. Returns one
    entry per start."""
    rng = random.Random(seed)
    manifest = records.parent / "manifest.json"
    history: list[dict] = []
    deadline = time.monotonic() + budget_s
    while sum(h["killed"] for h in history) < kills:
        assert time.monotonic() < deadline, f"harness ran out of time after {len(history)} starts"
        before = len(whole_lines(records))
        at_startup = not history or before >= total or rng.random() < 0.3
        target, extra = before + rng.randint(1, 3), rng.uniform(0, 0.05)
        opened = manifest.stat().st_mtime_ns if manifest.exists() else None
        mark: list[float] = []

        def due(at_startup=at_startup, opened=opened, mark=mark, target=target, extra=extra) -> bool:
            if at_startup:
                return manifest.exists() and manifest.stat().st_mtime_ns != opened
            if not mark and line_count(records) >= target:
                mark.append(time.monotonic())
            return bool(mark) and time.monotonic() - mark[0] >= extra

        with open(log_dir / "last-start.log", "wb") as err:
            proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err)
            killed = kill_when(proc, due)
        assert killed or proc.returncode == 0, (log_dir / "last-start.log").read_text()[-3000:]
        parsed = whole_lines(records)
        ids = [r["id"] for r in parsed]
        assert len(ids) == len(set(ids)), "a record was written twice"
        history.append({"event": "startup" if at_startup else f"record {target}", "killed": killed,
                        "records_before": before, "records_after": len(parsed)})
    return history


def finish(command: list[str]) -> None:
    done = run_command(command, timeout=600)
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


def test_generate_survives_10_random_sigkills(generate_command, tmp_path):
    base, out = generate_command
    command = base + ["--run-name", "killed"]
    records = out / "killed" / "records.jsonl"
    history = kill_on_events(command, records, KILLS, seed=1, total=PROMPTS, log_dir=tmp_path)
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


def test_judge_survives_10_random_sigkills(generate_command, vllm_server, tmp_path):
    _, out = generate_command
    base = [sys.executable, "-m", "cai", "judge", str(out / "straight"), "--principles", "2", "--concurrency", "1",
            "--no-judge-check",
            "--output-dir", str(tmp_path), *server_args(vllm_server)]
    finish(base + ["--run-name", "straight"])
    command = base + ["--run-name", "killed"]
    records = tmp_path / "killed" / "records.jsonl"
    pairs = len(list(read_jsonl(tmp_path / "straight" / "records.jsonl")))  # pairs whose revision differs
    history = kill_on_events(command, records, KILLS, seed=2, total=pairs, log_dir=tmp_path)
    finish(command)
    assert sum(h["killed"] for h in history) == KILLS
    assert any(h["killed"] and h["records_after"] > h["records_before"] for h in history)
    final = [json.loads(line) for line in (tmp_path / "killed" / "records.jsonl").read_bytes().splitlines()]
    assert len(final) == len({r["id"] for r in final}) == pairs >= 3  # revisions that differ (model output decides)

    def labels(run):
        return {r["prompt"][-1]["content"]: (r["chosen"], r["rejected"], r["p_chosen"])
                for r in read_jsonl(tmp_path / run / "export" / "train.jsonl")}

    straight, killed = labels("straight"), labels("killed")
    assert straight.keys() == killed.keys() and len(straight) > 0
    for key, (chosen, rejected, p) in straight.items():
        assert killed[key][:2] == (chosen, rejected)
        assert killed[key][2] == pytest.approx(p, abs=1e-3)


def test_a_failing_write_ends_generate_clearly_and_a_rerun_resumes(vllm_server, tmp_path):
    """A 24 KB file-size limit: the manifest (about 21 KB, most of it the constitution's text) fits, the records
    file (about 1.5 KB per prompt at 10 new tokens, so about 3 KB at 32) outgrows it mid-run."""
    def command(name):
        return [sys.executable, "-m", "cai", "generate", "--limit", "16", "--rounds", "1", "--few-shot", "0",
                "--max-new-tokens", "32", "--concurrency", "4", "--output-dir", str(tmp_path), "--run-name", name,
                *server_args(vllm_server)]

    records = tmp_path / "full" / "records.jsonl"
    limit = 24 * 1024
    failed = run_command(command("full"), timeout=600, preexec_fn=limited_file_size(limit))
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
    tiny = run_command(command("tiny"), timeout=600, preexec_fn=limited_file_size(4096))  # not even the manifest fits
    assert tiny.returncode == 1 and "cannot write" in tiny.stderr and "manifest.json" in tiny.stderr
    assert "Traceback" not in tiny.stderr
