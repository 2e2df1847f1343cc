"""`cai train online-dpo` (2 rounds, the policy on the in-process engine, the judge the folder's `vllm serve`)
SIGKILLed once round 2's judge has written a record, then the same command again: no finished round redone, the
judgements and samples written before the kill kept, the final model round 2's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.processes import run as run_command


def whole_lines(path: Path) -> list[str]:
    """The lines a kill left whole (a torn last line is the store's to repair)."""
    text = path.read_text() if path.exists() else ""
    lines = text.splitlines()
    return lines if text.endswith("\n") else lines[:-1]


def _online_command(out: Path, judge_url: str) -> list[str]:
    # a small policy engine: the session's engine may still be alive beside it; the judge is the folder's server
    config = out.parent / "engines.yaml"
    config.write_text("engine: {gpu_memory_utilization: 0.1, max_model_len: 512}\n")
    return [sys.executable, "-m", "cai", "train", "online-dpo", "--config", str(config),
            "--judge-model", "openai/smollm2", "--judge-base-url", judge_url,
            "--rounds", "2", "--samples-per-prompt", "2",
            "--principles", "1", "--max-steps-per-round", "2", "--save-steps", "1", "--heldout-prompts", "3",
            "--prompts-per-round", "3", "--max-new-tokens", "16", "--limit", "9", "--no-judge-check",
            "--batch-size", "2", "--max-length", "192", "--max-prompt-length", "128", "--no-progress",
            "--out", str(out)]


@pytest.mark.engine
def test_online_dpo_killed_mid_round_resumes_without_redoing_a_finished_round(vllm_server, tmp_path):
    out = tmp_path / "online"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(_online_command(out, vllm_server), cwd=REPO, env=env, start_new_session=True, stdout=log,
                            stderr=subprocess.STDOUT)
    records = out / "round-2" / "judge" / "records.jsonl"
    deadline = time.monotonic() + 420
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if records.is_file() and records.read_text().strip():
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (out / "round-1" / "round.json").is_file(), (tmp_path / "first.log").read_text()[-3000:]
    assert not (out / "round-2" / "round.json").exists()  # killed inside round 2
    finished = {p: p.stat().st_mtime_ns for p in (out / "round-1" / "round.json",
                                                   out / "round-1" / "model" / "model.safetensors")}
    judged_before = whole_lines(records)
    sampled_before = whole_lines(out / "round-2" / "judge" / "responses.jsonl")
    # the kill landed where the test claims: inside round 2's judging, with judgements and samples on disk
    assert judged_before and sampled_before, (tmp_path / "first.log").read_text()[-3000:]

    again = run_command(_online_command(out, vllm_server), cwd=REPO, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "round 1 finished earlier, kept" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # round 1 untouched
    assert records.read_text().splitlines()[: len(judged_before)] == judged_before  # judgements kept, not redone
    assert (out / "round-2" / "judge" / "responses.jsonl").read_text().splitlines()[: len(sampled_before)] \
        == sampled_before
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert 0 <= r["vs_start"]["win_rate"] <= 1 and 0 <= r["vs_previous"]["win_rate"] <= 1
        assert r["vs_start"]["valid"] <= 3 and 0.5 <= r["label_confidence"] <= 1 and r["pairs"] >= 1
        assert "dpo/loss" in r and r["kl_to_start"] == r["kl_to_start"]
    from safetensors.torch import load_file

    final, last = load_file(str(out / "model.safetensors")), load_file(str(out / "round-2" / "model" /
                                                                          "model.safetensors"))
    assert final.keys() == last.keys() and all((final[k] == last[k]).all() for k in final)
    dpo = json.loads((out / "round-2" / "model" / "train_manifest.json").read_text())
    assert dpo["reference_model"] is not None  # round 2 is anchored to the starting model, not round 1
