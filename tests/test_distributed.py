"""Two-process training (`accelerate launch --multi_gpu --num_processes 2` on the CPU, gloo) against one process with the same global
batch and seed: DPO and the reward model follow the same loss curve, log each step once with global means,
write each checkpoint once, and resume. A tiny random Llama (tests/tiny.py) keeps each launch to seconds of
training; what is tested is the loop's distribution, which does not depend on the model's size.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.processes import run as run_command

sys.path.insert(0, str(Path(__file__).parent))
from tiny import save, tiny_causal_lm, tiny_reward_model, tiny_tokenizer  # noqa: E402

pytestmark = pytest.mark.model

def launch_command() -> list[str]:
    """`accelerate launch` on a free port: two launches at once (another test run) must not meet at 29500."""
    from tests.fault_proxy import free_port

    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--main_process_port",
            str(free_port()), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def launch(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a (multi-process) training command once. Past `timeout` the stacks of the launcher and of every worker
    are in the failure and all of them are killed; a worker that outlives its launcher fails the test too."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return run_command(command, timeout=timeout, env=env)


PAIRS = [("how do i pick a lock", "sorry i cannot help with that", "sure here is the way first pick a lock"),
         ("hello", "hello world", "no"), ("how do i do that", "here is the way", "bye"),
         ("one two three", "four five six", "no no no")]


def write_pairs(path: Path) -> str:
    rows = [{"prompt": prompt, "chosen": chosen, "rejected": rejected, "p_chosen": 0.6 + 0.1 * (i % 4)}
            for i, (prompt, chosen, rejected) in enumerate(PAIRS * 4)]  # 16 pairs
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def train(task: str, processes: int, model: str, data: str, out: Path, batch_size: int, *extra: str) -> None:
    # `--cpu` would make accelerate start one process only; `--multi_gpu` starts them, and cai joins them over gloo
    launcher = [*launch_command(), "--num_processes", str(processes), "-m", "cai"]
    command = [*(launcher if processes > 1 else [sys.executable, "-m", "cai"]), "train", task, "--model", model,
               "--data", data, "--out", str(out), "--batch-size", str(batch_size), "--max-steps", "3",
               "--max-length", "48", "--max-prompt-length", "24", "--seed", "3", "--no-progress", *extra]
    done = launch(command)
    assert done.returncode == 0, done.stderr[-3000:]
    if processes > 1:
        manifest = json.loads((out / "train_manifest.json").read_text())
        assert manifest["processes"] == processes  # really distributed, not N lone copies


def logged(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def assert_same_curve(one: Path, two: Path, key: str = "loss", tokens: bool = True) -> None:
    rows_one = [r for r in logged(one) if key in r]
    rows_two = [r for r in logged(two) if key in r]
    assert [r["step"] for r in rows_two] == [1, 2, 3]  # each step logged once, by one process
    assert [r["step"] for r in rows_one] == [1, 2, 3]
    for a, b in zip(rows_one, rows_two, strict=True):
        assert abs(a[key] - b[key]) < 5e-3, (a, b)
        assert not tokens or a["tokens"] == b["tokens"]  # both processes' tokens counted
    assert rows_one[0][key] != pytest.approx(rows_one[-1][key], abs=1e-3)  # the curve moved: a real comparison
    w1, w2 = weights(one), weights(two)
    assert w1.keys() == w2.keys()
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4


def test_dpo_on_two_processes_follows_the_one_process_curve_and_resumes(tmp_path):
    tok = tiny_tokenizer()
    model = save(tiny_causal_lm(tok), tok, tmp_path / "model")
    data = write_pairs(tmp_path / "pairs.jsonl")
    common = ("--loss-type", "soft", "--learning-rate", "5e-3", "--reference", "precompute")
    train("dpo", 1, model, data, tmp_path / "one", 4, *common)
    train("dpo", 2, model, data, tmp_path / "two", 2, *common, "--save-steps", "1")
    assert_same_curve(tmp_path / "one", tmp_path / "two")
    checkpoints = sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())
    assert checkpoints == ["step-1", "step-2"]  # written once each (none at the last step: the final model follows)
    for step in checkpoints:  # whole: both processes' RNG states are in before the folder gets its name
        names = {p.name for p in (tmp_path / "two" / "checkpoints" / step).iterdir()}
        assert {"random_states_0.pkl", "random_states_1.pkl", "trainer_state.json"} <= names
    # lose step 2 and the final model, then resume on two processes: step 2 and 3 are redone and logged once
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "two", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-2")
    (resumed / "model.safetensors").unlink()
    train("dpo", 2, model, data, resumed, 2, *common, "--save-steps", "1", "--resume")
    assert [r["step"] for r in logged(resumed) if "loss" in r] == [1, 2, 3]
    assert_same_curve(tmp_path / "one", resumed, tokens=False)  # the token count restarts with the process


def test_reward_model_on_two_processes_follows_the_one_process_curve(tmp_path):
    tok = tiny_tokenizer()
    model = save(tiny_reward_model(tok), tok, tmp_path / "rm-start")
    data = write_pairs(tmp_path / "pairs.jsonl")
    common = ("--learning-rate", "5e-3", "--eval-fraction", "0")
    train("rm", 1, model, data, tmp_path / "one", 4, *common)
    train("rm", 2, model, data, tmp_path / "two", 2, *common)
    assert_same_curve(tmp_path / "one", tmp_path / "two")


def test_ppo_on_two_processes_logs_global_episodes_once_and_checkpoints_whole(tmp_path):
    """PPO's rollouts are sampled per process (each from its own random stream), so its curve is not the
    one-process curve; what must hold is the bookkeeping: one log row per step with global counts, whole
    checkpoints, one KL coefficient."""
    tok = tiny_tokenizer()
    policy = save(tiny_causal_lm(tok), tok, tmp_path / "policy")
    reward = save(tiny_reward_model(tok), tok, tmp_path / "rm")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": ["hello", "how do i pick a lock", "bye"][i % 3]})
                               + "\n" for i in range(24)))
    out = tmp_path / "ppo"
    launcher = [*launch_command(), "--num_processes", "2", "-m", "cai"]
    command = [*launcher, "train", "ppo", "--model", policy, "--reward-model", reward, "--data", str(prompts),
               "--out", str(out), "--rollout-batch-size", "4", "--batch-size", "4", "--max-steps", "3",
               "--max-new-tokens", "4", "--max-length", "48", "--max-prompt-length", "24", "--save-steps", "1",
               "--eval-fraction", "0.25", "--target-kl", "0.5", "--no-progress"]
    done = launch(command)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = logged(out)
    steps = [r for r in rows if "objective/kl" in r]
    assert [r["step"] for r in steps] == [1, 2, 3] and [r["episodes"] for r in steps] == [8, 16, 24]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-2"]
    for step in ("step-1", "step-2"):
        names = {p.name for p in (out / "checkpoints" / step).iterdir()}
        assert {"random_states_0.pkl", "random_states_1.pkl", "trainer_state.json"} <= names
        state = json.loads((out / "checkpoints" / step / "trainer_state.json").read_text())
        assert state["episodes"] == 8 * int(step.split("-")[1])
    assert json.loads((out / "train_manifest.json").read_text())["processes"] == 2
