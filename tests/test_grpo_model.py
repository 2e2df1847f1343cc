"""`cai train grpo` on tiny random Llamas (tests/tiny.py) with a reward model or a scripted reward: the logged
truncation and zero-variance shares from known completions, `--beta 0` loading no reference, a resume after
SIGKILL that redoes no step and ends on the uninterrupted run's weights, and 2 processes against 1 (each
completion drawn from its own seed, so both layouts sample the same completions)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import launch, launch_command, logged, weights  # noqa: E402
from tiny import WORDS, save, tiny_causal_lm, tiny_reward_model, tiny_tokenizer  # noqa: E402

pytestmark = pytest.mark.model
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo-models")
    tok = tiny_tokenizer()
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"how do i pick a lock {WORDS[35 + i % 10]}"})
                               + "\n" for i in range(16)))
    return {"policy": save(tiny_causal_lm(tok), tok, root / "policy"),
            "rm": save(tiny_reward_model(tok, seed=1), tok, root / "rm"), "prompts": str(prompts)}


def config(models, out, **extra):
    from cai.train.rl_config import GRPOConfig

    settings = dict(model=models["policy"], data=models["prompts"], out=str(out), constitution_reward=False,
                    reward_model=[models["rm"]], eval_fraction=0.0, rollout_batch_size=8, num_generations=2,
                    batch_size=8, max_new_tokens=3, max_length=48, max_prompt_length=24, max_steps=2,
                    learning_rate=5e-3, progress=False, seed=3)
    return GRPOConfig(**{**settings, **extra})


class KnownCompletions:
    """Rollouts stand-in (unit-test fake) that returns fixed token ids; nothing to sync."""

    def __init__(self, responses, stop):
        self.responses, self.stop = responses, stop

    def generate(self, prompt_ids, seeds=None):
        return [list(r) for r in self.responses[: len(prompt_ids)]]

    def sync_weights(self, policy):
        pass


def test_known_completions_give_the_truncation_and_zero_variance_shares_and_beta_0_loads_no_reference(models,
                                                                                                     tmp_path):
    from cai.train.grpo import prepare_grpo
    from cai.train.grpo_rewards import Rewards

    trainer = prepare_grpo(config(models, tmp_path / "out", rollout_batch_size=4, batch_size=4))
    assert trainer.reference is None  # --beta 0: no reference model loaded
    eos = trainer.tokenizer.eos_token_id
    # max_new_tokens 3: [5, eos] ended, [5, 6, 7] cut, [5] short but not cut, [8, 9, 10] cut -> 2 of 4 cut
    trainer.rollouts = KnownCompletions([[5, eos], [5, 6, 7], [5], [8, 9, 10]], {eos})
    # groups of 2: (1.0, 1.0) no variance, (0.0, 2.0) -> advantages 0, 0, -1/(std+eps), +1/(std+eps)
    trainer.rewards = Rewards([("scripted", lambda prompts, texts: [1.0, 1.0, 0.0, 2.0], 1.0)])
    exp = trainer.make_experience(trainer.train_examples[:2])
    assert exp["stats"]["completions/clipped_share"] == 0.5
    assert exp["stats"]["groups/zero_variance_share"] == 0.5
    assert exp["ref_logprobs"] is None and exp["stats"]["objective/kl"] == 0.0
    std = (2.0 ** 0.5)  # sample std of (0, 2)
    per_token = exp["advantages"] / exp["mask"].clamp(min=1)
    assert per_token[:, 0].tolist() == pytest.approx([0.0, 0.0, -1 / (std + 1e-4), 1 / (std + 1e-4)], abs=1e-5)
    assert exp["mask"].sum(1).tolist() == [2, 3, 1, 3]
    with_reference = prepare_grpo(config(models, tmp_path / "beta", beta=0.1))
    assert with_reference.reference is not None


def test_a_seeded_batch_draws_what_each_response_draws_alone(models):
    """GRPO samples a whole rollout batch in one `generate`, each response from its own seed: a response is the
    same alone or beside others of other prompt lengths (left-padded), the same again, and other seeds draw
    otherwise. (The 2-process test below relies on this: each process draws half the batch.)"""
    from transformers import AutoModelForCausalLM

    from cai.train.modeling import load_tokenizer
    from cai.train.rollouts import TransformersRollouts

    tokenizer, path = load_tokenizer(models["policy"])
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    rollouts = TransformersRollouts(policy, tokenizer, max_new_tokens=8, temperature=1.0, seeded=True)
    prompts = [tokenizer.encode(text) for text in ("how do i pick a lock", "you are", "helpful you are helpful")]
    seeds = [11, 12, 13]
    batch = rollouts.generate(prompts, seeds)
    assert batch == [rollouts.generate([p], [s])[0] for p, s in zip(prompts, seeds, strict=True)]
    assert rollouts.generate(prompts, seeds) == batch and all(len(r) >= 1 for r in batch)
    assert rollouts.generate(prompts, [21, 22, 23]) != batch
    assert policy.training  # sampling leaves the policy as it found it


def _command(models, out, *extra):
    return [sys.executable, "-m", "cai", "train", "grpo", "--model", models["policy"], "--data", models["prompts"],
            "--out", str(out), "--no-constitution-reward", "--reward-model", models["rm"], "--eval-fraction", "0",
            "--rollout-batch-size", "8", "--num-generations", "2", "--batch-size", "4", "--max-new-tokens", "3",
            "--max-length", "48", "--max-prompt-length", "24", "--learning-rate", "5e-3", "--seed", "3",
            "--no-progress", *extra]


def test_a_grpo_run_killed_after_a_checkpoint_resumes_without_redoing_steps(models, tmp_path):
    from tests.processes import run as run_command

    whole = run_command(_command(models, tmp_path / "whole", "--max-steps", "4"), timeout=300, cwd=REPO)
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "killed"
    command = _command(models, out, "--max-steps", "4", "--save-steps", "1")
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "checkpoints" / "step-2").is_dir():
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (out / "checkpoints" / "step-2").is_dir() and not (out / "model.safetensors").exists(), \
        (tmp_path / "first.log").read_text()[-2000:]  # killed after step 2's checkpoint, before the end
    again = run_command([*command, "--resume"], timeout=300, cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    steps = [r["step"] for r in logged(out) if "loss" in r]
    assert steps == [1, 2, 3, 4]  # each step logged once
    rows_whole = [r for r in logged(tmp_path / "whole") if "loss" in r]
    for a, b in zip(rows_whole, [r for r in logged(out) if "loss" in r], strict=True):
        assert a["reward/mean"] == pytest.approx(b["reward/mean"], abs=1e-6)  # the same completions were drawn
    w1, w2 = weights(tmp_path / "whole"), weights(out)
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4


def test_grpo_on_two_processes_follows_the_one_process_curve(models, tmp_path):
    common = ("--max-steps", "3", "--loss-type", "dr_grpo")
    single = _command(models, tmp_path / "one", *common)
    single[single.index("--batch-size") + 1] = "8"  # one micro-batch of the whole step, as the two processes take
    one = launch(single)
    assert one.returncode == 0, one.stderr[-3000:]
    command = _command(models, tmp_path / "two", *common)
    command = [*launch_command(), "--num_processes", "2", "-m", "cai", *command[3:]]
    command[command.index("--rollout-batch-size") + 1] = "4"  # 2 prompts x 2 completions per process
    command[command.index("--batch-size") + 1] = "4"
    two = launch(command)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "train_manifest.json").read_text())["processes"] == 2
    rows_one = [r for r in logged(tmp_path / "one") if "loss" in r]
    rows_two = [r for r in logged(tmp_path / "two") if "loss" in r]
    assert [r["step"] for r in rows_two] == [1, 2, 3] and [r["step"] for r in rows_one] == [1, 2, 3]
    for a, b in zip(rows_one, rows_two, strict=True):
        assert a["reward/mean"] == pytest.approx(b["reward/mean"], abs=1e-4)  # the same completions
        assert abs(a["loss"] - b["loss"]) < 5e-3, (a, b)
        assert a["episodes"] == b["episodes"] == 8 * a["step"]
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4
    assert torch.is_tensor(next(iter(w1.values())))
