"""PPO and reward-model arithmetic against numbers worked out by hand (pure logic on small tensors, no model):
per-token rewards with the KL penalty, GAE, whitening, the clipped policy and value losses, the adaptive KL
controller and the Bradley-Terry loss with soft labels, margins and centring."""

import math

import pytest
import torch

from cai.train.losses import reward_loss
from cai.train.ppo_math import (
    KLController,
    entropy_from_logits,
    gae,
    policy_loss,
    token_rewards,
    value_loss,
    whiten,
)
from cai.train.rollouts import cut_at_end, rollout_batch


def test_token_rewards_put_the_score_on_the_last_real_token():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -5.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = token_rewards(torch.tensor([1.0, 2.0]), logprobs, ref, mask, kl_coef=0.1)
    # kl = logp - ref: [0.5, 0, -1] and [1, 0, (padding)]
    assert kl.flatten().tolist() == pytest.approx([0.5, 0.0, -1.0, 1.0, 0.0, 0.0])
    assert rewards.flatten().tolist() == pytest.approx([-0.05, 0.0, 0.1 + 1.0, -0.1, 2.0, 0.0])


def test_gae_by_hand_with_padding():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 0.5, 9.0]])  # 9.0 sits on padding and must not count
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: d2 = 1 - .7 = .3; d1 = .7 - .6 = .1, A1 = .1 + .5 * .3 = .25; d0 = .6 - .5 = .1, A0 = .1 + .5 * .25
    # row 1: d1 = 2 + 0 - .5 = 1.5; d0 = .5 - 1 = -.5, A0 = -.5 + .5 * 1.5 = .25
    assert advantages.flatten().tolist() == pytest.approx([0.225, 0.25, 0.3, 0.25, 1.5, 0.0])
    assert returns.flatten().tolist() == pytest.approx([0.725, 0.85, 1.0, 1.25, 2.0, 0.0])
    # lam = 1: A0 is the discounted return minus V0 (0.9^2 * 1 - 0.5)
    advantages, _ = gae(rewards[:1], values[:1], mask[:1], gamma=0.9, lam=1.0)
    assert advantages.flatten().tolist() == pytest.approx([0.31, 0.30, 0.30])


def test_whitening_uses_real_tokens_only():
    values = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert whiten(values, mask).flatten().tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-4)  # mean 2, sd 1


def test_clipped_policy_loss_by_hand():
    new = torch.tensor([[math.log(1.5), math.log(0.5), math.log(1.1)]])
    old = torch.zeros(1, 3)
    advantages = torch.tensor([[1.0, 1.0, -1.0]])
    mask = torch.ones(1, 3)
    loss, stats = policy_loss(new, old, advantages, mask, cliprange=0.2)
    # ratio 1.5, A 1: max(-1.5, -1.2) = -1.2 (clipped); ratio .5, A 1: max(-.5, -.8) = -.5; ratio 1.1, A -1: 1.1
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1) / 3)
    assert stats["policy/clipfrac"].item() == pytest.approx(1 / 3)
    expected_kl = 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.1) ** 2) / 3
    assert stats["policy/approxkl"].item() == pytest.approx(expected_kl)
    assert stats["policy/ratio"].item() == pytest.approx((1.5 + 0.5 + 1.1) / 3)
    # gradient flows through the unclipped tokens only: d/dlogp of -A r at r = .5 is -.5 (token 1), 1.1 (token 2)
    new.requires_grad_(True)
    policy_loss(new, old, advantages, mask, 0.2)[0].backward()
    assert new.grad.flatten().tolist() == pytest.approx([0.0, -0.5 / 3, 1.1 / 3])


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.0, 100.0]])
    old = torch.tensor([[0.5, 0.5, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = value_loss(values, old, returns, mask, cliprange_value=0.2)
    # v 1.0 -> clipped .7: max((1-2)^2, (.7-2)^2) = 1.69; v 0 -> clipped .3: max(0, .09) = .09
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.09) / 2)
    assert stats["val/clipfrac"].item() == pytest.approx(1.0)
    assert stats["val/vpred"].item() == pytest.approx(0.5)


def test_entropy_and_kl_controller():
    assert entropy_from_logits(torch.zeros(1, 4)).item() == pytest.approx(math.log(4))
    fixed = KLController(0.1)
    fixed.update(kl=100.0, n_rollouts=100)
    assert fixed.value == 0.1
    high = KLController(0.1, target=6.0, horizon=10000)
    high.update(kl=9.0, n_rollouts=100)  # error clipped to +0.2: x (1 + 0.2 * 100 / 10000)
    assert high.value == pytest.approx(0.1 * 1.002)
    low = KLController(0.1, target=6.0, horizon=10000)
    low.update(kl=5.4, n_rollouts=100)  # error -0.1
    assert low.value == pytest.approx(0.1 * (1 - 0.1 * 0.01))


def test_bradley_terry_with_soft_labels_margin_and_centring():
    def log_sig(x):
        return -math.log1p(math.exp(-x))

    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.5])
    losses, metrics = reward_loss(chosen, rejected, torch.tensor([0.8, 1.0]))
    assert losses.tolist() == pytest.approx([-(0.8 * log_sig(1) + 0.2 * log_sig(-1)), -log_sig(-0.5)])
    assert metrics["rewards/accuracies"].tolist() == [1.0, 0.0]
    assert metrics["rewards/p_model"].tolist() == pytest.approx([1 / (1 + math.exp(-1)), 1 / (1 + math.exp(0.5))])
    hard, _ = reward_loss(chosen, rejected)
    assert hard.tolist() == pytest.approx([-log_sig(1), -log_sig(-0.5)])
    margin, _ = reward_loss(chosen, rejected, margin=torch.tensor([0.5, 0.0]))
    assert margin.tolist() == pytest.approx([-log_sig(0.5), -log_sig(-0.5)])
    centred, _ = reward_loss(chosen, rejected, center_coefficient=0.1)
    assert centred.tolist() == pytest.approx([-log_sig(1) + 0.1 * 9, -log_sig(-0.5) + 0.1 * 0.25])


def test_rollout_batch_layout():
    assert cut_at_end([5, 6, 2, 7, 2], {2}) == [5, 6, 2]
    assert cut_at_end([5, 6], {2}) == [5, 6]
    batch = rollout_batch([[10, 11, 12], [13]], [[20, 2], [21, 22, 2]], pad_id=0)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 2, 0], [0, 0, 13, 21, 22, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 2, 3]]
    assert batch["response_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert int(batch["context"]) == 3
