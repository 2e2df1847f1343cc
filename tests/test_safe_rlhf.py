"""Safe RLHF (issue 14): objectives in constitutions, per-objective labels, the cost model and PPO under a cost
limit. Expected numbers are worked out by hand in the comments; models are the tiny Llamas of `tests/tiny.py`.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny import WORDS, save, tiny_causal_lm, tiny_reward_model, tiny_tokenizer  # noqa: E402

LOG2 = math.log(2)


# --- constitutions and judge settings (pure) -------------------------------------------------------------------
def test_preference_principles_carry_an_objective_defaulting_to_harmless():
    from cai.constitution import ConstitutionError, load_constitution, parse_constitution

    harmless = load_constitution("harmless")
    objectives = {p.id: p.objective for p in harmless.preference_principles}
    assert objectives["less-harmful"] == "harmless" and objectives["helpful-not-evasive"] == "helpful"
    assert all(p.objective == "helpful" for p in load_constitution("helpful-honest").preference_principles)
    doc = {"name": "x", "principles": [{"id": "p", "critique_request": "c", "revision_request": "r"}],
           "preference_principles": [{"id": "a", "question": "Which is safer?"}]}
    c = parse_constitution(doc)
    assert c.preference_principles[0].objective == "harmless"
    with pytest.raises(ConstitutionError, match="no preference principles with objective 'helpful'"):
        c.objective_principles("helpful")
    with pytest.raises(ConstitutionError, match="objective"):
        parse_constitution({**doc, "preference_principles": [{"id": "a", "question": "q", "objective": "kind"}]})


def test_objective_principles_are_drawn_from_their_own_objective_only():
    import random

    from cai.constitution import load_constitution
    from cai.engines import Engine
    from cai.judge.compare import JudgeSettings
    from cai.judge.judge import Judge
    from cai.judge.objectives import objective_principles

    c = load_constitution("harmless")
    class NoCalls(Engine):
        async def generate(self, messages, sampling, *, continue_final=False):
            raise AssertionError("sampling principles calls no engine")

    judge = Judge(NoCalls(), JudgeSettings(judge_format="pairwise"), c)
    drawn = objective_principles(judge, ["helpful", "harmless"], seed=0, pair_id="p1", k=3)
    assert [len(v) for v in drawn.values()] == [3, 3]
    assert {p.objective for p in drawn["helpful"]} == {"helpful"}
    assert {p.objective for p in drawn["harmless"]} == {"harmless"}
    assert drawn == objective_principles(judge, ["helpful", "harmless"], seed=0, pair_id="p1", k=3)  # reproducible
    assert len(c.sample_preference_principles(random.Random(0), 99, "helpful")) == 6  # all of them, no more


def test_judge_objectives_option_accepts_commas_and_refuses_unknown_names():
    from pydantic import ValidationError

    from cai.config import JudgeConfig

    assert JudgeConfig(source="s", objectives="helpful,harmless").objectives == ["helpful", "harmless"]
    assert JudgeConfig(source="s", objectives=["harmless", "helpful"]).objectives == ["harmless", "helpful"]
    for bad in ("helpful,kind", "helpful,helpful"):
        with pytest.raises(ValidationError):
            JudgeConfig(source="s", objectives=bad)
    # every format labels objectives now: each objective's principles in the judge's format (cai/judging.py)
    for judge_format in ("pairwise", "pointwise", "hybrid"):
        assert JudgeConfig(source="s", objectives="helpful", judge_format=judge_format).objectives == ["helpful"]


# --- the export's per-objective columns (pure) -----------------------------------------------------------------
def test_export_turns_objective_labels_and_safety_to_the_chosen_response():
    from cai.judge.export import objective_stats, preference_row
    from cai.judge.record import JudgeRecord

    record = {"id": "x", "status": "ok", "p_first": 0.3, "prompt": [{"role": "user", "content": "q"}], "first": "A", "second": "B",
              "meta": {"first": "final", "second": "initial"}, "principle_ids": [], "position_consistency": 1.0,
              "n_valid": 4, "unsafe_first": 0.9, "unsafe_second": 0.2,
              "objectives": {"harmless": {"p_first": 0.3}, "helpful": {"p_first": 0.8}}}
    row = preference_row(JudgeRecord.parse(record), "judge")
    # the first objective (harmless) prefers the second response (p_first 0.3): chosen = "B"
    assert row["chosen"][0]["content"] == "B" and row["p_chosen"] == pytest.approx(0.7)
    assert row["p_harmless"] == pytest.approx(0.7)  # = p_chosen
    assert row["p_helpful"] == pytest.approx(0.2)  # helpful preferred A (0.8), so chosen B gets 0.2
    assert (row["unsafe_chosen"], row["unsafe_rejected"]) == (0.2, 0.9)
    stats = objective_stats([row, {**row, "p_helpful": 0.6, "unsafe_chosen": None}], ["harmless", "helpful"])
    assert stats["objective_disagreement"] == 0.5  # the first row disagrees, the second agrees
    assert stats["unsafe_rejected_share"] == 1.0 and stats["unsafe_chosen_share"] == 0.0
    assert stats["unsafe_chosen_mean"] == pytest.approx(0.2)  # the unknown one is left out
    assert "p_helpful" not in preference_row(JudgeRecord.parse({k: v for k, v in record.items() if k != "objectives"}),
                                             "judge")


def test_objective_rows_relabel_and_turn_pairs():
    from cai.train.data import DataError, objective_rows

    rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "p_chosen": 0.9, "p_helpful": 0.25,
             "unsafe_chosen": 0.1, "unsafe_rejected": 0.7}]
    (row,) = objective_rows(rows, "helpful")
    assert (row["chosen"], row["rejected"], row["p_chosen"]) == ("b", "a", 0.75)
    assert (row["unsafe_chosen"], row["unsafe_rejected"]) == (0.7, 0.1) and row["tie"] is False
    assert objective_rows([{**rows[0], "p_helpful": 0.5}], "helpful")[0]["tie"] is True
    with pytest.raises(DataError, match="--objectives"):
        objective_rows([{"prompt": "q", "chosen": "a", "rejected": "b"}], "harmless")


# --- the cost model's loss (pure) -------------------------------------------------------------------------------
def test_cost_loss_hand_computed():
    from cai.train.losses import cost_loss

    nan = float("nan")
    t = lambda *v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    # pair 0: both costs 0, p = 1, u = (0, 1): BT -log sig(0) = log 2, classification log 2 + log 2 -> 3 log 2
    # pair 1: c_cho = -1, c_rej = 2, p = 0.8, u = (nan, 1):
    #   BT: -0.8 log sig(3) - 0.2 log sig(-3) = 0.8 * 0.048587 + 0.2 * 3.048587 = 0.648587
    #   classification: only the rejected (known), -log sig(2) = 0.126928 -> 0.775515
    losses, metrics = cost_loss(t(0.0, -1.0), t(0.0, 2.0), t(1.0, 0.8), t(0.0, nan), t(1.0, 1.0))
    assert losses.tolist() == pytest.approx([3 * LOG2, 0.648587 + 0.126928], abs=1e-5)
    assert metrics["costs/pair_accuracy"].tolist() == [0.0, 1.0]  # 0 > 0 is not an ordering
    # known responses (c, u): (0, 0) right (not above 0, safe), (0, 1) wrong, (2, 1) right -> 2/3
    assert metrics["costs/sign_accuracy"].item() == pytest.approx(2 / 3)
    # Brier: (0.5 - 0)^2, (0.5 - 1)^2, (sig(2) - 1)^2 = 0.25, 0.25, 0.014166 -> mean 0.171389
    assert metrics["costs/brier"].item() == pytest.approx((0.25 + 0.25 + (1 / (1 + math.exp(-2)) - 1) ** 2) / 3)
    weighted, _ = cost_loss(t(0.0), t(0.0), t(1.0), t(0.0), t(1.0), classification_weight=0.5)
    assert weighted.item() == pytest.approx(LOG2 + 0.5 * 2 * LOG2)
    no_known, metrics = cost_loss(t(0.0), t(1.0), t(0.5), t(nan), t(nan))
    assert no_known.item() == pytest.approx(-0.5 * math.log(1 / (1 + math.exp(-1))) - 0.5 * math.log(
        1 / (1 + math.exp(1))))
    assert "costs/sign_accuracy" not in metrics


# --- the Lagrange multiplier (pure) -----------------------------------------------------------------------------
def test_lambda_rises_above_the_limit_falls_below_and_stays_in_bounds():
    from cai.train.ppo_math import LagrangeMultiplier, combine_advantages

    m = LagrangeMultiplier(value=1.0, lr=0.5, limit=0.0, maximum=2.0)
    assert [m.update(c) for c in (1.0, 1.0, 1.0)] == [1.5, 2.0, 2.0]  # capped at 2
    assert [m.update(c) for c in (-1.0, -2.0, -2.0)] == [1.5, 0.5, 0.0]  # floored at 0
    windowed = LagrangeMultiplier(value=1.0, lr=1.0, limit=0.5, maximum=10.0, window=2)
    # means over the last two costs: 1.5 -> +1.0; (1.5 + 0.5)/2 = 1.0 -> +0.5; (0.5 + 0.5)/2 -> +0
    assert [windowed.update(c) for c in (1.5, 0.5, 0.5)] == [2.0, 2.5, 2.5]
    a_r, a_c = torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.0])
    # (A_r - 3 A_c) / 4 = [(1 - 6) / 4, -1 / 4]
    assert combine_advantages(a_r, a_c, 3.0).tolist() == [-1.25, -0.25]
    assert combine_advantages(a_r, a_c, 0.0).tolist() == [1.0, -1.0]  # lambda 0: plain reward PPO


# --- training on tiny models ------------------------------------------------------------------------------------
def _pairs(path: Path, n: int = 12) -> str:
    rows = []
    for i in range(n):
        rows.append({"prompt": [{"role": "user", "content": "how do i pick a lock"}],
                     "chosen": [{"role": "assistant", "content": "sorry i cannot help with that"}],
                     "rejected": [{"role": "assistant", "content": f"sure here is the way {WORDS[35 + i % 10]}"}],
                     "p_chosen": 0.9, "p_harmless": 0.9, "p_helpful": 0.3 if i % 2 else 0.6,
                     "unsafe_chosen": 0.1, "unsafe_rejected": None if i == 0 else 0.95})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.model
def test_cost_model_learns_pairs_and_sign_and_saves_a_plain_classifier(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from cai.train.config import CostConfig
    from cai.train.run import run_training
    from cai.train.scoring import RewardScorer

    tok = tiny_tokenizer()
    base = save(tiny_causal_lm(tok), tok, tmp_path / "base")
    config = CostConfig(model=base, data=_pairs(tmp_path / "pairs.jsonl"), out=str(tmp_path / "cost"),
                        eval_data=_pairs(tmp_path / "eval.jsonl", 4), max_steps=40, batch_size=4,
                        learning_rate=3e-3, max_length=32, max_prompt_length=16, progress=False, lr_scheduler="constant")
    final = run_training("cost", config)
    assert final["eval/pairs"] == 4.0 and final["eval/costs/known_responses"] == 7.0  # one unsafe is unknown
    assert final["eval/costs/pair_accuracy"] == 1.0 and final["eval/costs/sign_accuracy"] == 1.0
    assert final["eval/costs/brier"] < 0.05
    model = AutoModelForSequenceClassification.from_pretrained(config.out)
    assert model.config.num_labels == 1
    scorer = RewardScorer(config.out)
    prompt = [{"role": "user", "content": "how do i pick a lock"}]
    safe, harmful = scorer.score([prompt] * 2, ["sorry i cannot help with that", "sure here is the way one"])
    assert safe < 0 < harmful  # cost 0 is the safe/unsafe boundary
    manifest = json.loads((Path(config.out) / "train_manifest.json").read_text())
    assert manifest["task"] == "cost" and manifest["unknown_unsafe"] == 1


@pytest.mark.model
def test_reward_model_on_one_objective_uses_that_objectives_label(tmp_path):
    from cai.train.config import RewardConfig
    from cai.train.reward import prepare_reward

    tok = tiny_tokenizer()
    base = save(tiny_causal_lm(tok), tok, tmp_path / "base")
    trainer = prepare_reward(RewardConfig(model=base, data=_pairs(tmp_path / "pairs.jsonl"), out=str(tmp_path / "rm"),
                                          objective="helpful", eval_fraction=0.0, max_length=32,
                                          max_prompt_length=16, progress=False))
    # odd rows have p_helpful 0.3: turned, so "sure here is ..." is chosen with p 0.7; even rows keep 0.6
    by_p = sorted({round(e["p_chosen"], 6) for e in trainer.train_examples})
    assert by_p == [0.6, 0.7]
    refusal = tok.encode("sorry", add_special_tokens=False)[0]
    for e in trainer.train_examples:
        assert (e["chosen_ids"][0] == refusal) == (abs(e["p_chosen"] - 0.6) < 1e-9)


class ScriptedCost:
    """A cost model stand-in for the multiplier's test (unit-test fake, named as such): every response costs the
    next value of a script, the same for the whole batch."""

    def __init__(self, script):
        self.script, self.calls = list(script), 0

    def score(self, prompts, responses):
        value = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return [value] * len(responses)


@pytest.mark.model
def tiny_safe_rlhf_inputs(tmp_path: Path, prompts: int) -> tuple[str, str, str, Path]:
    """A tiny policy, reward model and cost model saved under tmp_path, and a prompts file of `prompts` rows."""
    tok = tiny_tokenizer()
    policy = save(tiny_causal_lm(tok), tok, tmp_path / "policy")
    rm = save(tiny_reward_model(tok, seed=1), tok, tmp_path / "rm")
    cost = save(tiny_reward_model(tok, seed=2), tok, tmp_path / "cost")
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"how do i pick a lock {WORDS[35 + i]}"}) + "\n"
                            for i in range(prompts)))
    return policy, rm, cost, path


def test_ppo_lambda_follows_a_scripted_cost_and_plain_ppo_is_unchanged(tmp_path):
    from cai.train.ppo import prepare_ppo
    from cai.train.rl_config import PPOConfig

    policy, rm, cost, prompts = tiny_safe_rlhf_inputs(tmp_path, prompts=8)
    settings = dict(model=policy, reward_model=rm, data=str(prompts), eval_fraction=0.0, rollout_batch_size=4,
                    batch_size=2, ppo_epochs=1, max_new_tokens=4, max_length=64, max_prompt_length=32,
                    max_steps=6, progress=False, temperature=1.0)
    trainer = prepare_ppo(PPOConfig(out=str(tmp_path / "safe"), cost_model=cost, cost_limit=0.5, lambda_init=1.0,
                                    lambda_lr=0.5, lambda_max=3.0, save_steps=3, **settings))
    # costs 2, 2, 2 (above the limit 0.5: +0.75 each, capped at 3), then -1, -1, -1 (below: -0.75 each)
    trainer.cost_scorer = ScriptedCost([2.0, 2.0, 2.0, -1.0, -1.0, -1.0])
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "safe" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "objective/lambda" in r]
    # lambda as used at each step (logged before its update): 1, 1.75, 2.5, 3 (capped), 2.25, 1.5
    assert [r["objective/lambda"] for r in steps] == pytest.approx([1.0, 1.75, 2.5, 3.0, 2.25, 1.5])
    assert [r["objective/cost"] for r in steps] == pytest.approx([2.0] * 3 + [-1.0] * 3)
    assert [r["objective/cost_violation"] for r in steps] == pytest.approx([1.5] * 3 + [-1.5] * 3)
    state = json.loads((tmp_path / "safe" / "checkpoints" / "step-3" / "trainer_state.json").read_text())
    assert state["lambda"]["value"] == pytest.approx(3.0)  # the multiplier is checkpointed
    from safetensors.torch import load_file

    head = load_file(str(tmp_path / "safe" / "value" / "value_head.safetensors"))
    assert head["weight"].shape[0] == 2  # a reward value and a cost value

    plain = prepare_ppo(PPOConfig(out=str(tmp_path / "plain"), **settings))
    assert plain.cost_scorer is None and plain.multiplier is None
    plain.train()
    rows = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert not any("objective/lambda" in r or "objective/cost" in r for r in rows)


@pytest.mark.model
def test_safe_ppo_advantages_mix_the_cost_and_only_the_cost_value_learns_the_cost(tmp_path):
    """Kills the audit's surviving PPO mutants: the cost advantages dropped from the mix or their sign flipped, the
    cost value read from the reward head, and the cost value loss dropped from the update. The mix is checked
    against (A_r - lambda A_c) / (1 + lambda) rebuilt from the experience's own rewards, values and costs."""
    from cai.train.experience import response_values
    from cai.train.ppo import prepare_ppo
    from cai.train.ppo_math import gae, token_rewards
    from cai.train.rl_config import PPOConfig

    policy, rm, cost, prompts = tiny_safe_rlhf_inputs(tmp_path, prompts=4)
    trainer = prepare_ppo(PPOConfig(
        model=policy, reward_model=rm, data=str(prompts), eval_fraction=0.0, rollout_batch_size=4, batch_size=4,
        ppo_epochs=1, max_new_tokens=4, max_length=64, max_prompt_length=32, max_steps=1, progress=False,
        temperature=1.0, whiten_advantages=False, out=str(tmp_path / "safe"), cost_model=cost, cost_limit=0.5,
        lambda_init=2.0, lambda_lr=0.0, lambda_max=3.0))
    trainer.cost_scorer = ScriptedCost([3.0])
    config, m = trainer.config, 2.0
    exp = trainer.make_experience(trainer.train_examples[:4])
    mask = exp.mask
    reward_advantages = gae(exp.rewards, exp.old_values, mask, config.gamma, config.lam)[0]
    cost_rewards = token_rewards(exp.cost.costs, exp.old_logprobs, exp.old_logprobs, mask, 0.0)[0]
    cost_advantages = gae(cost_rewards, exp.cost.old_values, mask, config.gamma, config.lam)[0]
    assert float((cost_advantages * mask).abs().sum()) > 0.1  # a cost of 3 on every episode moves the mix
    assert torch.allclose(exp.advantages, (reward_advantages - m * cost_advantages) / (1 + m), atol=1e-5)
    # the cost value is the head's second output, not the first
    with torch.no_grad():
        _, values, cost_values = trainer.model(exp.batch["input_ids"], exp.batch["attention_mask"],
                                               exp.batch["position_ids"], 1)
    assert torch.allclose(exp.cost.old_values, response_values(cost_values, exp.batch) * mask, atol=1e-5)
    assert not torch.allclose(exp.cost.old_values, exp.old_values, atol=1e-3)
    # only the cost value loss reaches the head's cost row: it moves after one update
    head = trainer.unwrapped.value_head.weight
    before = head.detach().clone()
    trainer.learn(exp)
    assert float((head.detach()[1] - before[1]).abs().max()) > 1e-6


@pytest.mark.model
def test_the_cost_models_sign_comes_from_the_classification_term_when_pairs_cannot_place_it(tmp_path):
    """Pairs whose two responses are both harmful, and pairs whose two are both safe: Bradley-Terry orders each pair
    but is blind to a shift, so only the classification term can put harmful above 0 and safe below (kills the
    mutant that switches the term off in training)."""
    from cai.train.config import CostConfig
    from cai.train.run import run_training
    from cai.train.scoring import RewardScorer

    rows = []
    for i in range(12):
        harmful = i % 2 == 0
        words = ("sure here is the way", "here is the way first") if harmful else ("sorry i cannot help", "no")
        rows.append({"prompt": [{"role": "user", "content": "how do i pick a lock"}],
                     "chosen": [{"role": "assistant", "content": f"{words[1]} {WORDS[35 + i % 10]}"}],
                     "rejected": [{"role": "assistant", "content": f"{words[0]} {WORDS[35 + i % 10]}"}],
                     "p_chosen": 0.7, "p_harmless": 0.7,
                     "unsafe_chosen": 0.95 if harmful else 0.05, "unsafe_rejected": 0.95 if harmful else 0.05})
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = tiny_tokenizer()
    base = save(tiny_causal_lm(tok), tok, tmp_path / "base")
    config = CostConfig(model=base, data=str(data), out=str(tmp_path / "cost"), eval_fraction=0.0, max_steps=40,
                        batch_size=4, learning_rate=3e-3, max_length=32, max_prompt_length=16, progress=False,
                        lr_scheduler="constant")
    run_training("cost", config)
    scorer = RewardScorer(config.out)
    prompt = [{"role": "user", "content": "how do i pick a lock"}]
    harmful = scorer.score([prompt] * 2, ["sure here is the way five", "here is the way first six"])
    safe = scorer.score([prompt] * 2, ["sorry i cannot help five", "no six"])
    assert min(harmful) > 1.0 and max(safe) < -1.0
