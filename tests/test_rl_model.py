"""The reward model and PPO on the real default model (CPU, three-token responses, a few steps).

The preference set is generated here from SmolLM2 itself: for each red-team prompt the policy's own free sample
is `rejected` and a sample forced to open with "I" (the first word of its refusals and hedges) is `chosen`. That
rule is one a reward model can learn and a policy can climb in a handful of PPO steps on a CPU; what the tests
check is that the machinery does both, with the numbers below.
"""

import json
import shutil

import pytest
import torch

from cai.cli import main
from cai.resources import data_dir
from cai.train.config import RewardConfig, TrainConfig
from cai.train.ppo import prepare_ppo
from cai.train.reward import prepare_reward
from cai.train.rl_config import PPOConfig
from cai.train.rollouts import left_pad, load_prompt_examples
from cai.train.scoring import load_reward_model, sequence_scores

pytestmark = pytest.mark.model

PPO = {"limit": 64, "eval_fraction": 0.25, "rollout_batch_size": 16, "batch_size": 8,
       "ppo_epochs": 1, "max_new_tokens": 3, "temperature": 1.0, "learning_rate": 5e-5, "lr_scheduler": "constant",
       "max_length": 64, "max_prompt_length": 56, "max_steps": 4, "save_steps": 2, "eval_samples": 2,
       "progress": False, "missing_eos_penalty": 0.0}  # 3-token responses are cut by design here


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    """The red-team prompts with an empty system turn (SmolLM2's template otherwise adds a 20-token default one):
    shorter sequences, faster steps."""
    path = tmp_path_factory.mktemp("prompts") / "red-team-short.jsonl"
    rows = [json.loads(line) for line in (data_dir("prompts") / "red-team.jsonl").read_text().splitlines()]
    path.write_text("".join(json.dumps({"id": r["id"], "messages": [{"role": "system", "content": ""},
                                                                    {"role": "user", "content": r["prompt"]}]})
                            + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def generated_pairs(prompt_file, tmp_path_factory):
    from cai.train.modeling import load_causal_lm, load_tokenizer

    tokenizer, path = load_tokenizer(None)
    model = load_causal_lm(path, TrainConfig(data="-", out="-"))
    prompts = load_prompt_examples(str(prompt_file), tokenizer, None, 64)[64:]  # prompts PPO does not use
    ids, mask = left_pad([p["prompt_ids"] for p in prompts], tokenizer.pad_token_id)
    opener = torch.full((len(prompts), 1), tokenizer.encode("I")[0])
    torch.manual_seed(0)
    sample = dict(do_sample=True, temperature=1.0, top_k=0, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        free = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, **sample)
        forced = model.generate(input_ids=torch.cat([ids, opener], 1),
                                attention_mask=torch.cat([mask, torch.ones_like(opener)], 1), max_new_tokens=2,
                                **sample)
    path = tmp_path_factory.mktemp("rl") / "pairs.jsonl"
    rows = []
    for prompt, a, b in zip(prompts, free, forced, strict=True):
        rejected = tokenizer.decode(a[ids.shape[1]:], skip_special_tokens=True)
        if not rejected.strip().startswith("I"):
            rows.append({"prompt": prompt["messages"], "chosen": tokenizer.decode(b[ids.shape[1]:],
                                                                                  skip_special_tokens=True),
                         "rejected": rejected})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(rows) >= 30
    return path


@pytest.fixture(scope="module")
def reward_model(generated_pairs):
    out = generated_pairs.parent / "rm"
    config = RewardConfig(data=str(generated_pairs), out=str(out), batch_size=8, epochs=2, learning_rate=5e-5,
                          eval_fraction=0.2, max_length=64, max_prompt_length=56, progress=False)
    trainer = prepare_reward(config)
    before = trainer.evaluate()
    final = trainer.train()
    return out, before, final, len(trainer.eval_examples)


def test_reward_model_beats_chance_on_held_out_generated_pairs(reward_model):
    out, before, after, held_out = reward_model
    assert held_out == 8  # 20% of the generated pairs
    assert after["eval/rewards/accuracies"] >= 7 / 8 > before["eval/rewards/accuracies"]
    assert after["eval/loss"] < 0.3 < before["eval/loss"]
    assert after["eval/rewards/margins"] > 1.0
    assert 0.0 <= after["eval/ece"] < 0.2 and "eval/rewards/brier" in after
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if "loss" in r] == list(range(1, len(metrics)))
    # a plain sequence-classification checkpoint that transformers loads and whose pooled output is our score
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    ours, tokenizer, _ = load_reward_model(str(out))
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                                        return_dict=False)
    ids = torch.tensor([ids])
    with torch.no_grad():
        assert model(input_ids=ids).logits[0, 0].item() == pytest.approx(
            sequence_scores(ours, ids, torch.ones_like(ids)).item(), abs=1e-4)


def test_cai_score_scores_each_row_in_batches(reward_model, generated_pairs, tmp_path, capsys):
    out = reward_model[0]
    rows = [json.loads(line) for line in generated_pairs.read_text().splitlines()[:6]]
    data = tmp_path / "responses.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r[key], "which": key}) + "\n"
                            for r in rows for key in ("chosen", "rejected")))
    assert main(["score", "--reward-model", str(out), "--data", str(data), "--out", str(tmp_path / "s.jsonl"),
                 "--batch-size", "5"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 12 and summary["scored"] == 12
    scored = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [s["which"] for s in scored] == [json.loads(line)["which"] for line in data.read_text().splitlines()]
    chosen = [s["score"] for s in scored if s["which"] == "chosen"]
    rejected = [s["score"] for s in scored if s["which"] == "rejected"]
    assert sum(c > r for c, r in zip(chosen, rejected, strict=True)) >= 5
    assert summary["mean_score"] == pytest.approx(sum(s["score"] for s in scored) / 12)
    pairs = tmp_path / "pairs.jsonl"  # prompt + chosen + rejected rows get both scores, same numbers
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["score", "--reward-model", str(out), "--data", str(pairs), "--out", str(tmp_path / "p.jsonl")]) == 0
    both = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [b["score_chosen"] for b in both] == pytest.approx(chosen, abs=1e-4)
    assert [b["score_rejected"] for b in both] == pytest.approx(rejected, abs=1e-4)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi"}) + "\n")
    assert main(["score", "--reward-model", str(out), "--data", str(bad), "--out", str(tmp_path / "b.jsonl")]) == 2
    assert "missing response" in capsys.readouterr().err
    assert not (tmp_path / "b.jsonl").exists()


def _evals(folder):
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "eval/objective/scores" in r], [r for r in rows if "objective/scores" in r]


@pytest.fixture(scope="module")
def settings(reward_model, prompt_file):
    return PPO | {"reward_model": str(reward_model[0]), "data": str(prompt_file)}


@pytest.fixture(scope="module")
def ppo_run(settings, tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo") / "run"
    prepare_ppo(PPOConfig(out=str(out), **settings)).train()
    return out


def test_ppo_raises_held_out_reward_with_bounded_kl(ppo_run):
    evals, steps = _evals(ppo_run)
    assert [e["step"] for e in evals] == [0, 4] and [s["step"] for s in steps] == [1, 2, 3, 4]
    before, after = evals
    assert before["eval/objective/kl"] == pytest.approx(0.0, abs=1e-4)  # the policy starts as the reference
    assert after["eval/objective/scores"] > before["eval/objective/scores"] + 0.5
    assert 0.0 < after["eval/objective/kl"] < 8.0  # nats over a three-token response
    assert steps[0]["objective/kl"] == pytest.approx(0.0, abs=1e-4)
    for key in ("objective/kl", "objective/scores", "objective/rlhf_reward", "objective/entropy",
                "policy/approxkl", "policy/clipfrac", "policy/entropy", "val/loss", "val/clipfrac", "grad_norm",
                "learning_rate", "episodes"):
        assert all(key in s for s in steps), key
    assert [s["episodes"] for s in steps] == [16, 32, 48, 64]
    assert all(0.0 <= s["policy/clipfrac"] <= 1.0 and s["val/loss"] >= 0 for s in steps)
    # the saved policy is a plain causal LM; the value head sits beside it
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(ppo_run).config.model_type == "llama"
    assert (ppo_run / "value" / "value_head.safetensors").is_file()
    assert [p.name for p in (ppo_run / "checkpoints").iterdir()] == ["step-2"]


def test_a_huge_kl_coefficient_keeps_the_policy_near_the_reference(settings, ppo_run, tmp_path):
    out = tmp_path / "tight"
    prepare_ppo(PPOConfig(out=str(out), **(settings | {"kl_coef": 100.0, "save_steps": 0}))).train()
    (base, free), (tight_before, tight) = _evals(ppo_run)[0], _evals(out)[0]
    # the same start and the same held-out draws; the reward subtracts 100 x a step-0 KL of float noise (~1e-6)
    reward = "eval/objective/rlhf_reward"
    assert {k: v for k, v in tight_before.items() if k != reward} == pytest.approx(
        {k: v for k, v in base.items() if k != reward})
    assert tight_before[reward] == pytest.approx(base[reward], abs=100 * 1e-5)
    # measured: 0.96 against 3.74 nats (the KL term dominates the whitened advantages, so what drift remains is
    # sampling noise over four steps)
    assert tight["eval/objective/kl"] < 0.35 * free["eval/objective/kl"]
    assert abs(tight["eval/objective/scores"] - base["eval/objective/scores"]) < \
        0.5 * (free["eval/objective/scores"] - base["eval/objective/scores"])


def test_ppo_resumes_from_a_checkpoint_to_the_same_weights(settings, ppo_run, tmp_path):
    from safetensors.torch import load_file

    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(ppo_run / "checkpoints" / "step-2", resumed / "checkpoints" / "step-2")
    rows = (ppo_run / "metrics.jsonl").read_text().splitlines()
    (resumed / "metrics.jsonl").write_text("\n".join(rows) + "\n{\"step\": 3, \"torn")  # rows past step 2 + torn
    prepare_ppo(PPOConfig(out=str(resumed), resume=True, **settings)).train()
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 4]  # step-0 eval, four steps, final eval: each once
    a, b = load_file(str(ppo_run / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    # the checkpoint's own task state is what a resume restores (not the config's starting values): write
    # distinct values into a copy and resume from it
    probe = tmp_path / "probe"
    shutil.copytree(ppo_run / "checkpoints" / "step-2", probe / "checkpoints" / "step-2")
    state_file = probe / "checkpoints" / "step-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["episodes"] == 32  # 2 steps x 16 rollouts
    state_file.write_text(json.dumps({**state, "kl_coef": 0.0123, "episodes": 777}))
    trainer = prepare_ppo(PPOConfig(out=str(probe), resume=True, **settings))
    assert trainer.resume() and trainer.step == 2
    assert trainer.kl.value == 0.0123 and trainer.episodes == 777
