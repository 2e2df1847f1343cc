"""One resume rule for every kind of run (cai/resume.py): a resume with a changed setting outside the short list
(`MAY_CHANGE`: max_steps, epochs, save/eval/logging cadence) or a changed input is refused, naming what changed;
checked before any model loads. generate and judge have theirs in test_store.py / test_hostile_input.py; online DPO
in test_online.py; here every trainer, ensembles and the options that act only with another."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.processes import run as run_command

sys.path.insert(0, str(Path(__file__).parent))
from tiny import save, tiny_causal_lm, tiny_reward_model, tiny_tokenizer  # noqa: E402

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tok = tiny_tokenizer()
    return {"policy": save(tiny_causal_lm(tok), tok, root / "policy"),
            "rm": save(tiny_reward_model(tok, seed=1), tok, root / "rm"),
            "cost": save(tiny_reward_model(tok, seed=2), tok, root / "cost")}


def pairs_file(folder: Path, text: str = "hello world") -> str:
    path = folder / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "hello", "chosen": text, "rejected": "no", "p_chosen": 0.8,
                                "p_harmless": 0.7, "unsafe_chosen": 0.1, "unsafe_rejected": 0.9}) + "\n")
    return str(path)


def prompts_file(folder: Path, name: str = "prompts.jsonl", text: str = "hello") -> str:
    path = folder / name
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"{text} {i}"}) + "\n" for i in range(8)))
    return str(path)


def configs(models, tmp_path):
    from cai.train.config import CostConfig, DPOConfig, RewardConfig, TrainConfig
    from cai.train.rl_config import PPOConfig

    data, prompts = pairs_file(tmp_path), prompts_file(tmp_path)
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"messages": [{"role": "user", "content": "hello"},
                                            {"role": "assistant", "content": "hello world"}]}) + "\n")
    out = str(tmp_path / "out")
    ppo = dict(model=models["policy"], reward_model=models["rm"], data=prompts, out=out, rollout_batch_size=4,
               batch_size=4, max_length=64, max_prompt_length=24, max_new_tokens=8)
    return {
        "sft": (TrainConfig(model=models["policy"], data=str(sft), out=out), {"learning_rate": 1e-3}),
        "dpo": (DPOConfig(model=models["policy"], data=data, out=out), {"beta": 0.5}),
        "rm": (RewardConfig(model=models["policy"], data=data, out=out), {"center_rewards_coefficient": 0.1}),
        "cost": (CostConfig(model=models["policy"], data=data, out=out), {"classification_weight": 0.5}),
        "ppo": (PPOConfig(**ppo, cost_model=models["cost"], cost_limit=0.0, lambda_max=5.0), {"cost_limit": 0.5}),
    }


def recorded(config, out: Path) -> None:
    from cai.train.outputs import train_fields

    out.mkdir(parents=True, exist_ok=True)
    (out / "train_manifest.json").write_text(json.dumps(train_fields(config)))


@pytest.mark.parametrize("kind", ["sft", "dpo", "rm", "cost", "ppo"])
def test_a_trainer_resume_with_a_changed_setting_is_refused_and_cadence_may_change(kind, models, tmp_path):
    from cai.runs.store import RunConflictError
    from cai.train.outputs import check_output

    config, change = configs(models, tmp_path)[kind]
    recorded(config, tmp_path / "out")
    resume = config.model_copy(update={"resume": True})
    check_output(resume.model_copy(update={"max_steps": 40, "save_steps": 5, "logging_steps": 2}))  # allowed
    name = next(iter(change))
    with pytest.raises(RunConflictError, match=rf"changed: settings\.{name}\)"):
        check_output(resume.model_copy(update=change))
    with pytest.raises(RunConflictError, match=r"settings\.seed"):
        check_output(resume.model_copy(update={"seed": 7}))


def test_ppo_resume_refuses_other_lambda_settings_swapped_models_and_other_prompts(models, tmp_path):
    from cai.runs.store import RunConflictError
    from cai.train.outputs import check_output

    config, _ = configs(models, tmp_path)["ppo"]
    recorded(config, tmp_path / "out")
    resume = config.model_copy(update={"resume": True})
    with pytest.raises(RunConflictError, match=r"settings\.cost_limit, settings\.lambda_max"):
        check_output(resume.model_copy(update={"cost_limit": 1.0, "lambda_max": 3.0}))
    with pytest.raises(RunConflictError, match=r"inputs\.cost_model, inputs\.reward_model"):
        check_output(resume.model_copy(update={"reward_model": models["cost"], "cost_model": models["rm"]}))
    other = prompts_file(tmp_path, "other.jsonl", "bye")
    with pytest.raises(RunConflictError, match=r"settings\.data, inputs\.data"):
        check_output(resume.model_copy(update={"data": other}))
    Path(config.data).write_text(Path(other).read_text())  # the same file name, other prompts inside
    with pytest.raises(RunConflictError, match=r"changed: inputs\.data\)"):
        check_output(resume)


def test_ppo_resume_with_another_cost_limit_is_refused_by_the_command_before_any_model_loads(models, tmp_path):
    config, _ = configs(models, tmp_path)["ppo"]
    recorded(config, tmp_path / "out")
    command = [sys.executable, "-m", "cai", "train", "ppo", "--model", models["policy"], "--reward-model",
               models["rm"], "--cost-model", models["cost"], "--data", config.data, "--out", config.out,
               "--rollout-batch-size", "4", "--batch-size", "4", "--max-length", "64", "--max-prompt-length", "24", "--max-new-tokens", "8",
               "--lambda-max", "5", "--cost-limit", "2", "--resume"]
    done = run_command(command, timeout=120)
    assert done.returncode == 2 and "settings.cost_limit" in done.stderr and "Traceback" not in done.stderr
    assert not (Path(config.out) / "metrics.jsonl").exists()


def test_an_ensemble_resume_checks_the_ensemble_and_every_member(models, tmp_path):
    from cai.runs.store import RunConflictError
    from cai.train.outputs import check_output, train_fields

    config, _ = configs(models, tmp_path)["rm"]
    config = config.model_copy(update={"ensemble": 2})
    out = Path(config.out)
    out.mkdir()
    (out / "ensemble.json").write_text(json.dumps({**train_fields(config), "members": ["member-0", "member-1"],
                                                   "finished": ["member-0"]}))
    check_output(config.model_copy(update={"resume": True}))
    with pytest.raises(RunConflictError, match=r"settings\.ensemble"):
        check_output(config.model_copy(update={"resume": True, "ensemble": 3}))
    from cai.errors import UsageError
    from cai.train.scoring import members

    with pytest.raises(UsageError, match="member-1 have not finished"):
        members(out)


@pytest.mark.parametrize("args, message", [
    (["--cost-limit", "0.5"], "cost_limit only acts with a cost model"),
    (["--lambda-max", "3", "--lambda-lr", "0.2"], "lambda_lr, lambda_max only act with a cost model"),
    (["--rollout-sync", "reload"], "rollout_sync only acts with --rollouts vllm"),
    (["--kl-horizon", "50"], "kl_horizon only acts with --target-kl"),
    (["--eval-judge-constitution", "harmless"], "only acts with --eval-judge"),
])
def test_ppo_options_that_act_only_with_another_are_refused_without_it(args, message, models, tmp_path):
    command = [sys.executable, "-m", "cai", "train", "ppo", "--model", models["policy"], "--reward-model",
               models["rm"], "--data", prompts_file(tmp_path), "--out", str(tmp_path / "out"), *args]
    done = run_command(command, timeout=120)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr[-800:]


@pytest.mark.parametrize("flag", ["--reward-model", "--cost-model"])
def test_a_causal_lm_or_a_missing_path_as_a_reward_or_cost_model_is_refused_before_loading(flag, models, tmp_path):
    base = [sys.executable, "-m", "cai", "train", "ppo", "--model", models["policy"], "--data",
            prompts_file(tmp_path), "--out", str(tmp_path / "out"), "--reward-model", models["rm"]]
    for value, message in ((models["policy"], "LlamaForCausalLM, not a reward model"),
                           (str(tmp_path / "missing"), "does not exist")):
        command = [*base, flag, value] if flag == "--cost-model" else [*base[:-2], flag, value]
        done = run_command(command, timeout=120)
        assert done.returncode == 2 and message in done.stderr, done.stderr[-800:]
        assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
