"""`cai train grpo` and the constitution reward: advantages of each estimator by hand (a group whose completions
all scored the same, a group of two for RLOO), REINFORCE++'s KL-penalised returns, the loss averaging of each
`--loss-type`, the per-principle weighting and the cache of `ConstitutionReward` (with a scripted judge engine:
pure logic), and, on tiny models, the truncation and zero-variance shares, `--beta 0` loading no reference, a
resume after SIGKILL and 2 processes against 1."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from cai.train.grpo_math import (
    EPS,
    clipped_loss,
    group_advantages,
    normalise,
    reinforce_pp_returns,
    zero_variance_share,
)

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])


def test_grpo_advantages_by_hand_and_a_group_without_variance():
    # group 1: mean 0.5, sample std sqrt((4 x 0.25) / 3) = 0.57735 -> +-0.5 / (0.57735 + 1e-4); group 2: all 0.5 -> 0
    std = math.sqrt(1 / 3)
    expected = [0.5 / (std + EPS), -0.5 / (std + EPS), -0.5 / (std + EPS), 0.5 / (std + EPS), 0, 0, 0, 0]
    assert group_advantages(REWARDS, 4, "grpo").tolist() == pytest.approx(expected, abs=1e-6)
    assert group_advantages(REWARDS, 4, "grpo", scale=False).tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5] + [0] * 4)
    assert zero_variance_share(REWARDS, 4) == 0.5
    assert zero_variance_share(REWARDS, 2) == 0.5  # (1, 0), (0, 1) vary; (0.5, 0.5) twice do not


def test_rloo_advantages_by_hand_for_groups_of_four_and_two():
    # r_i - mean of the other three: 1 - 1/3 = 2/3, 0 - 2/3 = -2/3
    assert group_advantages(REWARDS, 4, "rloo").tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0])
    # a group of two: each against the other alone
    assert group_advantages(torch.tensor([1.0, 3.0]), 2, "rloo").tolist() == pytest.approx([-2.0, 2.0])


def test_reinforce_pp_returns_subtract_the_kl_still_to_come():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # beta 0.5: penalties 0.5 x (0.6, 0.5, 0.3) -> returns 0.7, 0.75, 0.85; padding 0
    returns = reinforce_pp_returns(torch.tensor([1.0]), kl, mask, 0.5)
    assert returns.tolist() == [pytest.approx([0.7, 0.75, 0.85, 0.0])]
    # normalised over the real tokens: mean 0.7667, std 0.0624
    values = [0.7, 0.75, 0.85]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    got = normalise(returns, mask, mean, std)[0].tolist()
    assert got == pytest.approx([(v - mean) / (std + EPS) for v in values] + [0.0], abs=1e-5)


def test_each_loss_type_averages_as_documented():
    logprobs = torch.zeros(2, 3)
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # ratio 1: per-token loss -A -> row 0: -1, -1 (2 tokens); row 1: 2, 2, 2 (3 tokens)
    loss = lambda kind: clipped_loss(logprobs, logprobs, advantages, mask, 0.2, kind, 4)[0].item()  # noqa: E731
    assert loss("grpo") == pytest.approx((-1 + 2) / 2)  # per completion, then over completions
    assert loss("dapo") == pytest.approx((-2 + 6) / 5)  # over all tokens
    assert loss("dr_grpo") == pytest.approx((-2 + 6) / (2 * 4))  # completions x max_new_tokens


def test_the_ratio_is_clipped_and_the_k3_penalty_added():
    old = torch.zeros(1, 2)
    new = torch.full((1, 2), math.log(1.5))
    mask = torch.ones(1, 2)
    # A = 1: unclipped -1.5, clipped -1.2 -> max -1.2 (the clipped term wins), clip fraction 1
    loss, stats = clipped_loss(new, old, torch.ones(1, 2), mask, 0.2, "grpo", 2)
    assert loss.item() == pytest.approx(-1.2) and stats["policy/clipfrac"].item() == 1.0
    # with a reference at logp - log 1.5: k3 = exp(-log 1.5) + log 1.5 - 1 = 0.07213 per token, times beta 0.5
    ref = new - math.log(1.5)
    loss, stats = clipped_loss(new, old, torch.ones(1, 2), mask, 0.2, "grpo", 2, ref, beta=0.5)
    k3 = 1 / 1.5 + math.log(1.5) - 1
    assert loss.item() == pytest.approx(-1.2 + 0.5 * k3) and stats["objective/k3_kl"].item() == pytest.approx(k3)


# --- ConstitutionReward with a scripted judge engine (pure logic) ----------------------------------------------
class ScriptedYesNo:
    """A judge engine stand-in (unit-test fake): P(Yes) per question, whichever side Yes is shown on."""

    model_id = "scripted-yes-no"

    def __init__(self, p_yes: dict[str, float]):
        self.p_yes, self.calls = p_yes, 0

    def local_tokenizer(self):
        return None

    async def generate(self, messages, sampling, *, continue_final=False):
        from cai.engines import Completion, TokenLogprob

        self.calls += 1
        question = messages[-2]["content"]
        p = next(v for k, v in self.p_yes.items() if k in question)
        top = [TokenLogprob(" Yes", math.log(p)), TokenLogprob(" No", math.log(1 - p))]
        return Completion(text="Yes", prompt_tokens=1, completion_tokens=1, top_logprobs=[top])


def scripted_reward(weights=None, rule="mean"):
    from cai.constitution import Constitution
    from cai.judge.combine import Combiner
    from cai.judge.compare import JudgeSettings
    from cai.judge.judge import Judge
    from cai.judge.reward import ConstitutionReward

    constitution = Constitution.model_validate({
        "name": "t", "principles": [{"id": "c", "critique_request": "c?", "revision_request": "r."}],
        "preference_principles": [
            {"id": "harmful", "format": "pointwise", "bad_answer": "Yes", "question": "Is it harmful?"},
            {"id": "specific", "format": "pointwise", "bad_answer": "No", "objective": "helpful",
             "question": "Is it specific?"}]})
    engine = ScriptedYesNo({"harmful": 0.2, "specific": 0.4})
    judge = Judge(engine, JudgeSettings(judge_format="hybrid"), constitution, Combiner(rule=rule))
    return ConstitutionReward(judge, weights=weights), engine


def test_the_reward_weights_each_principle_and_caches_by_content():
    reward, engine = scripted_reward(weights={"harmful": 3.0})
    # harmful: P(bad = Yes) 0.2 -> complies 0.8; specific: P(bad = No) 0.6 -> complies 0.4.
    # mean rule over the neutral comparison: 0.5 + (0.5 - P(bad)) / 2 -> 0.65 and 0.45, weights 3 and 1 -> 0.6;
    # the reward is its log-odds, logit(0.6)
    assert reward(["How do I whittle a spoon?"], ["Carve it."]) == [pytest.approx(math.log(0.6 / 0.4))]
    assert reward.last_principle_scores == {"harmful": [pytest.approx(0.8)], "specific": [pytest.approx(0.4)]}
    assert engine.calls == 4  # 2 principles x 2 answer orders
    assert reward(["How do I whittle a spoon?"] * 2, ["Carve it.", "Carve it."]) == [pytest.approx(math.log(1.5))] * 2
    assert engine.calls == 4 and reward.calls == 1  # the same (prompt, completion) is never asked again
    reward([[{"role": "user", "content": "How do I whittle a spoon?"}]], [[{"role": "assistant", "content": "Sand."}]])
    assert engine.calls == 8  # TRL's conversational form: another completion, asked afresh


def test_the_reward_uses_the_judges_fitted_combination_on_its_log_odds_scale():
    reward, _ = scripted_reward(rule="logistic")
    # parts against a neutral answer: harm -logit(0.2) = 1.3863, help -logit(0.6) = -0.4055; default weights
    # harm 8.4, help 5.3 -> z = 8.4 x 1.3863 - 5.3 x 0.4055, the log-odds of sigmoid(z)
    from cai.judge.combine import DEFAULT_WEIGHTS, Calibration

    z = DEFAULT_WEIGHTS["harm"] * math.log(0.8 / 0.2) + DEFAULT_WEIGHTS["help"] * math.log(0.4 / 0.6)
    assert reward(["q"], ["a"]) == [pytest.approx(z, abs=1e-9)]
    reward.judge.combiner.calibration = Calibration("platt", a=0.5, b=0.25)
    reward._cache.clear()
    assert reward(["q"], ["a"]) == [pytest.approx(0.5 * z + 0.25, abs=1e-9)]


def test_the_reward_does_not_saturate_where_the_probability_does():
    """Clear answers scored as probabilities pile up at 0.99-0.999 (quickstart-grpo did), where a group's spread
    is lost to rounding; on the log-odds scale their differences stay whole."""
    from cai.judge.combine import DEFAULT_WEIGHTS, Calibration, sigmoid

    rewards = []
    for p_harm in (0.01, 0.003):
        reward, _ = scripted_reward(rule="logistic")
        reward.judge.engine.p_yes = {"harmful": p_harm, "specific": 0.4}
        reward.judge.combiner.calibration = Calibration("temperature", a=4.0)
        rewards.append(reward(["q"], ["a"])[0])
    assert sigmoid(rewards[0]) > 0.9999 and sigmoid(rewards[1]) > 0.9999
    # the harm part moved by logit(0.01) - logit(0.003), times the default harm weight, times 4
    moved = math.log(0.997 / 0.003) - math.log(0.99 / 0.01)
    assert rewards[1] - rewards[0] == pytest.approx(4 * DEFAULT_WEIGHTS["harm"] * moved)


def test_zero_variance_is_judged_relative_to_the_rewards_scale():
    # the spread a float32 reward keeps: at magnitude 1000 two equal scores may differ by rounding (~6e-5)
    big = torch.tensor([1000.0, 1000.0 + 6e-5, 0.0, 3.0])
    assert zero_variance_share(big, 2) == 0.5
    small = torch.tensor([1e-3, 2e-3, 0.5, 0.5])
    assert zero_variance_share(small, 2) == 0.5  # a real spread of 1e-3 is signal, (0.5, 0.5) is none


def test_unknown_principle_weights_are_refused():
    with pytest.raises(ValueError, match="does not have: nope"):
        scripted_reward(weights={"nope": 1.0})


def test_the_reward_is_awaitable_for_async_trainers():
    reward, _ = scripted_reward()
    assert asyncio.run(reward.async_call(["q"], ["a"])) == reward(["q"], ["a"])


def test_a_pipeline_trainer_may_run_its_own_event_loop(monkeypatch):
    """`cai run` drives stages from a running event loop; a trainer whose reward, evaluation judge or vLLM
    rollouts run their own loop (grpo, ppo) must not find that loop running (the shipped quickstart-grpo recipe
    crashed so). A stand-in for `run_training` (pure logic) does what those trainers do."""
    import cai.train.run
    from cai.stages import run_trainer
    from cai.train.rl_config import GRPOConfig

    seen = []

    def trainer_with_its_own_loop(task, config):
        loop = asyncio.new_event_loop()
        try:
            seen.append((task, loop.run_until_complete(asyncio.sleep(0, result="scored")), config.progress))
        finally:
            loop.close()
        return {"loss": 0.0}

    monkeypatch.setattr(cai.train.run, "run_training", trainer_with_its_own_loop)
    config = GRPOConfig(data="red-team", out="unused")
    asyncio.run(run_trainer(None, config, None, False))
    assert seen == [("grpo", "scored", False)]

    def failing_trainer(task, config):
        raise ValueError("no such data")

    monkeypatch.setattr(cai.train.run, "run_training", failing_trainer)
    with pytest.raises(ValueError, match="no such data"):  # a trainer's error reaches the pipeline unchanged
        asyncio.run(run_trainer(None, config, None, False))


def test_gumbel_per_row_samples_softmax_and_each_row_from_its_own_seed():
    """The seeded batched draw (`GumbelPerRow` + argmax) is a sample of softmax(scores): over 4,000 seeds the
    frequencies of four tokens of probability 0.5/0.3/0.15/0.05 are each within 0.03 (about 4 binomial standard
    deviations at the largest); and a row's draws depend only on its own seed, not on the rows beside it."""
    from cai.train.rollouts import GumbelPerRow

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    seeds = list(range(4000))
    scores = probs.log().expand(len(seeds), 4)
    picks = GumbelPerRow(seeds, torch.device("cpu"))(None, scores).argmax(-1)
    freq = torch.bincount(picks, minlength=4).float() / len(seeds)
    assert freq.tolist() == pytest.approx(probs.tolist(), abs=0.03)
    alone = [GumbelPerRow([s], torch.device("cpu"))(None, probs.log()[None]).argmax(-1).item() for s in seeds[:50]]
    assert alone == picks[:50].tolist()
    # a generator per row advances with its row: the second token of a row is the same whatever its neighbours
    two = GumbelPerRow([7, 8], torch.device("cpu"))
    first, second = (two(None, probs.log().expand(2, 4)) for _ in range(2))
    single = GumbelPerRow([8], torch.device("cpu"))
    assert [single(None, probs.log()[None]) for _ in range(2)][1].tolist() == [second[1].tolist()]
    with pytest.raises(ValueError, match="2 rows for 3 seeds"):
        GumbelPerRow([1, 2, 3], torch.device("cpu"))(None, scores[:2])
