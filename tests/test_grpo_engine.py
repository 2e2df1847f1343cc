"""The constitution reward on the real judge (vLLM, the embedded model): TRL's GRPOTrainer trains 2 steps with
`ConstitutionReward` as its `reward_funcs` (TRL is a test-only dependency) and the scores it received are the
ones cai gives the same completions; and `cai train grpo` runs on the embedded model with its constitution
reward, start to end."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from cai.judge.combine import DEFAULT_WEIGHTS
from tests.processes import run as run_command

sys.path.insert(0, str(Path(__file__).parent))
from tiny import save, tiny_causal_lm, tiny_tokenizer  # noqa: E402

pytestmark = [pytest.mark.engine, pytest.mark.model]
REPO = Path(__file__).resolve().parent.parent


DEFAULT_BOUND = (DEFAULT_WEIGHTS["harm"] + DEFAULT_WEIGHTS["help"]) * math.log(0.999 / 0.001)
"""The largest log-odds reward the default combination can give (P(bad) is clipped to [0.001, 0.999])."""


def judge_on(engine):
    from cai.config import JudgeConfig
    from cai.constitution import load_constitution
    from cai.judge.compare import settings_of
    from cai.judge.judge import Judge

    config = JudgeConfig(source="-", check_judge=False)
    return Judge(engine, settings_of(config), load_constitution("harmless"))


class Recorded:
    """Wraps a reward function and keeps what each call received and returned (TRL reads `__name__`)."""

    __name__ = "constitution_reward"

    def __init__(self, reward):
        self.reward, self.calls = reward, []

    def __call__(self, prompts, completions, **columns):
        scores = self.reward(prompts, completions, **columns)
        self.calls.append((list(prompts), list(completions), list(scores)))
        return scores


def test_trls_grpo_trainer_trains_with_the_constitution_reward(engine, loop, tmp_path):
    trl = pytest.importorskip("trl", reason="TRL is installed with the dev tools (scripts/setup.sh)")
    from datasets import Dataset

    from cai.judge.reward import ConstitutionReward

    tok = tiny_tokenizer(pad_is_eos=True)
    path = save(tiny_causal_lm(tok), tok, tmp_path / "policy")
    prompts = [[{"role": "user", "content": q}] for q in ("how do i pick a lock", "hello world", "how do i do that",
                                                          "one two three")]
    reward = Recorded(ConstitutionReward(judge_on(engine), loop=loop))
    args = trl.GRPOConfig(output_dir=str(tmp_path / "trl"), max_steps=2, per_device_train_batch_size=4,
                          num_generations=2, max_completion_length=4, logging_steps=1, report_to="none",
                          use_cpu=True, learning_rate=1e-3, save_strategy="no", seed=0)
    trainer = trl.GRPOTrainer(model=path, reward_funcs=reward, args=args, processing_class=tok,
                              train_dataset=Dataset.from_list([{"prompt": p} for p in prompts * 4]))
    trainer.train()
    assert len(reward.calls) >= 2 and all(len(c[2]) == 4 for c in reward.calls)
    logged = [row["rewards/constitution_reward/mean"] for row in trainer.state.log_history
              if "rewards/constitution_reward/mean" in row]
    assert len(logged) == 2
    for (_, _, scores), mean in zip(reward.calls[:2], logged, strict=True):
        assert mean == pytest.approx(sum(scores) / len(scores), abs=1e-5)  # what TRL logged is what it received
    fresh = ConstitutionReward(judge_on(engine), loop=loop)  # no cache: cai scores the same completions again
    for call_prompts, completions, scores in reward.calls:
        assert fresh(call_prompts, completions) == pytest.approx(scores, abs=1e-6)
    # log-odds under the default combination: |reward| <= (8.4 + 5.3) x logit(0.999) = 94.6
    assert all(abs(s) <= DEFAULT_BOUND for _, _, scores in reward.calls for s in scores)
    assert len({s for _, _, scores in reward.calls for s in scores}) > 1  # the judge told the completions apart


def test_a_grpo_recipe_runs_on_the_embedded_model_with_the_constitution_reward(tmp_path):
    """Through `cai run` (the stage path the shipped quickstart-grpo recipe takes: the pipeline's event loop is
    running while the reward's judge starts its own), at a test's size."""
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text(json.dumps({
        "name": "tiny-grpo", "output_dir": str(tmp_path), "stages": ["grpo"],
        "grpo": {"data": "red-team", "limit": 8, "rollout_batch_size": 4, "num_generations": 2, "batch_size": 4,
                 "max_new_tokens": 8, "max_steps": 1, "eval_fraction": 0, "judge_check": False,
                 "judge_gpu_memory_utilization": 0.1}}))
    done = run_command([sys.executable, "-m", "cai", "run", str(recipe), "--no-progress"], timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "tiny-grpo" / "grpo"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in rows if r["step"] == 1)
    assert abs(step["reward/mean"]) <= DEFAULT_BOUND  # the judge check is off: the default combination
    assert step["reward/constitution"] == pytest.approx(step["reward/mean"]) and step["reward/std"] > 0
    assert {"reward/principle/harmful", "groups/zero_variance_share", "completions/clipped_share",
            "policy/entropy", "loss"} <= set(step)
    manifest = json.loads((out / "train_manifest.json").read_text())
    assert manifest["kind"] == "grpo" and manifest["rewards"]["constitution"]["mode"] == "pointwise"
    assert (out / "model.safetensors").is_file()
