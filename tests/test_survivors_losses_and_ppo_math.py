"""Tests written to kill what the mutation run of `cai/train/losses.py` and `cai/train/ppo_math.py` left alive
(issue 26; `mutmut run "cai.train.losses*" "cai.train.ppo_math*"` under forkserver isolation, 2026-12-07). The
earlier tests used inputs on which a wrong form gives the same number (an old policy of log-probability 0, a
variance of 1, one row of logits); these use inputs where each form differs, with the numbers worked out by hand in
the comments. Pure logic."""

from __future__ import annotations

import math

import pytest
import torch

from cai.train.losses import (
    cost_loss,
    hardened,
    head_sequence_logps,
    logconf_reward_loss,
    preference_loss,
    reward_loss,
    sequence_logps,
)
from cai.train.ppo_math import KLController, entropy_from_logits, masked_mean, policy_loss, value_loss, whiten


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


# --- ppo_math --------------------------------------------------------------------------------------------------
def test_policy_loss_with_an_old_policy_off_zero_and_the_lower_clip():
    old = torch.tensor([[0.1, -0.2, 0.3, -0.4]])
    ratios = [1.5, 0.5, 1.1, 0.5]
    new = old + torch.tensor([[math.log(r) for r in ratios]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, stats = policy_loss(new, old, advantages, torch.ones(1, 4), cliprange=0.2)
    # r 1.5, A 1: max(-1.5, -1.2) = -1.2 (clipped); r .5, A 1: -.5; r 1.1, A -1: 1.1 (inside the range, not
    # clipped); r .5, A -1: max(.5, .8) = .8 (clipped at 1 - e)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1 + 0.8) / 4)
    assert stats["policy/clipfrac"].item() == pytest.approx(0.5)
    assert stats["policy/approxkl"].item() == pytest.approx(0.5 * sum(math.log(r) ** 2 for r in ratios) / 4)
    assert stats["policy/ratio"].item() == pytest.approx(sum(ratios) / 4)


def test_value_loss_squares_the_error_and_counts_only_strictly_clipped_tokens():
    values, old = torch.tensor([[3.0, 1.0]]), torch.tensor([[2.5, 1.0]])
    returns = torch.tensor([[0.0, 0.5]])
    loss, stats = value_loss(values, old, returns, torch.ones(1, 2), cliprange_value=0.2)
    # v 3 -> clipped 2.7: max(9, 7.29) = 9; v = old 1 -> clipped 1: both .25, equal (not "clipped")
    assert loss.item() == pytest.approx(0.5 * (9 + 0.25) / 2)
    assert stats["val/clipfrac"].item() == 0.0
    assert stats["val/vpred"].item() == pytest.approx(2.0)


def test_whiten_divides_by_the_standard_deviation_and_can_keep_the_mean():
    values, mask = torch.tensor([[1.0, 3.0, 5.0, 9.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # mean 3, unbiased variance (4 + 0 + 4) / 2 = 4, sd 2
    assert whiten(values, mask).flatten().tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    assert whiten(values, mask, shift_mean=False).flatten().tolist() == pytest.approx([2.0, 3.0, 4.0, 0.0], abs=1e-6)
    # two tokens: variance (1 + 1) / 1 = 2
    two = whiten(torch.tensor([[1.0, 3.0]]), torch.ones(1, 2)).flatten().tolist()
    assert two == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)], abs=1e-6)
    # no spread: zeros, not NaN (the 1e-8 keeps the root of a non-negative number)
    flat = whiten(torch.full((1, 3), 2.0), torch.ones(1, 3))
    assert torch.isfinite(flat).all() and flat.abs().max().item() == 0.0


def test_masked_mean_of_one_token_and_of_none():
    assert masked_mean(torch.tensor([[4.0, 7.0]]), torch.tensor([[1.0, 0.0]])).item() == 4.0
    assert masked_mean(torch.tensor([[4.0, 7.0]]), torch.zeros(1, 2)).item() == 0.0


def test_entropy_per_position_over_the_vocabulary_only():
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, math.log(2.0)]]])  # probs 1/3 each; 1/4, 1/4, 1/2
    entropy = entropy_from_logits(logits)
    assert entropy.shape == (1, 2)
    assert entropy.flatten().tolist() == pytest.approx([math.log(3), 1.5 * math.log(2)])


def test_the_kl_controller_clips_a_low_kl_at_minus_0_2():
    low = KLController(0.1, target=6.0, horizon=10000)
    low.update(kl=1.0, n_rollouts=100)  # error 1/6 - 1 = -0.83, clipped to -0.2: x (1 - 0.2 * 100 / 10000)
    assert low.value == pytest.approx(0.1 * 0.998)


# --- losses ----------------------------------------------------------------------------------------------------
def test_soft_dpo_with_label_smoothing_by_hand_and_its_reward_metrics():
    policy_chosen, ref_chosen = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0])
    policy_rejected, ref_rejected = torch.tensor([-3.0, -1.0]), torch.tensor([-2.5, -1.0])
    p = torch.tensor([0.9, 0.5])
    losses, metrics = preference_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.5,
                                      loss_type="soft", p_chosen=p, label_smoothing=0.1)
    # pair 1: delta = 1 - (-0.5) = 1.5, beta delta = .75; target = .9 * .9 + .1 * .1 = .82
    # pair 2: delta = 0; target = .9 * .5 + .1 * .5 = .5: -log sig(0) = log 2
    assert losses.tolist() == pytest.approx([-(0.82 * logsig(0.75) + 0.18 * logsig(-0.75)), math.log(2)])
    assert metrics["rewards/chosen"].tolist() == pytest.approx([0.5, 0.0])
    assert metrics["rewards/rejected"].tolist() == pytest.approx([-0.25, 0.0])
    assert metrics["rewards/margins"].tolist() == pytest.approx([0.75, 0.0])
    assert metrics["rewards/accuracies"].tolist() == [1.0, 0.0]  # a tie is not a win
    assert metrics["logps/chosen"].tolist() == [-1.0, -2.0] and metrics["logps/rejected"].tolist() == [-3.0, -1.0]


def test_preference_loss_errors_name_what_is_wrong_exactly():
    args = [torch.zeros(1)] * 4
    with pytest.raises(ValueError, match=r"^the soft loss needs p_chosen \(the judge's probability\) for every pair$"):
        preference_loss(*args, beta=0.1, loss_type="soft")
    with pytest.raises(ValueError, match=r"^unknown loss type 'hinge' \(sigmoid, ipo, soft\)$"):
        preference_loss(*args, beta=0.1, loss_type="hinge")


def test_reward_loss_metrics_by_name_brier_by_hand_and_the_loss_in_the_scores_dtype():
    r_chosen, r_rejected = torch.tensor([1.0, 0.3]), torch.tensor([1.0, -0.7])
    losses, metrics = reward_loss(r_chosen, r_rejected, torch.tensor([0.8, 1.0], dtype=torch.float64))
    assert losses.dtype == torch.float32  # the judge's float64 probabilities do not promote the loss
    assert set(metrics) == {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                            "rewards/p_model", "rewards/brier"}
    assert metrics["rewards/margins"].tolist() == pytest.approx([0.0, 1.0])
    assert metrics["rewards/accuracies"].tolist() == [0.0, 1.0]  # a tie is not a win
    sig1 = 1 / (1 + math.exp(-1.0))
    assert metrics["rewards/brier"].tolist() == pytest.approx([(0.5 - 0.8) ** 2, (sig1 - 1.0) ** 2])
    assert metrics["rewards/chosen"].tolist() == pytest.approx([1.0, 0.3])
    assert metrics["rewards/rejected"].tolist() == pytest.approx([1.0, -0.7])


def test_hardened_keeps_ties_at_the_threshold_and_the_prediction_dtype():
    p = torch.tensor([0.2, 0.6, 0.8])
    # share 0.5: the threshold is the median, 0.6 exactly, and a prediction equal to it counts as positive
    out = hardened(p, 0.5)
    assert out.tolist() == [0.0, 1.0, 1.0] and out.dtype == torch.float32
    assert hardened(p, 1.0).tolist() == [1.0, 1.0, 1.0] and hardened(p, 0.0).tolist() == [0.0, 0.0, 0.0]


def test_the_confidence_loss_counts_a_weak_label_of_one_half_as_no_preference():
    r_chosen, r_rejected = torch.tensor([0.4, 0.1, -0.2, 0.9]), torch.zeros(4)
    p_weak = torch.tensor([0.5, 0.9, 0.1, 0.2], dtype=torch.float64)
    losses, metrics = logconf_reward_loss(r_chosen, r_rejected, p_weak, weight=0.5)
    # one weak label of four prefers chosen (0.5 does not): share 0.25, so the student's single surest pair is 1
    p_model = torch.sigmoid(r_chosen)
    target = 0.5 * p_weak.float() + 0.5 * hardened(p_model, 0.25)
    assert hardened(p_model, 0.25).tolist() == [0.0, 0.0, 0.0, 1.0]
    expected, _ = reward_loss(r_chosen, r_rejected, target)
    assert losses.dtype == torch.float32 and losses.tolist() == pytest.approx(expected.tolist())
    assert metrics["logconf/weight"].tolist() == [0.5] * 4


def test_cost_loss_classification_term_metrics_and_dtype_by_hand():
    c_chosen, c_rejected = torch.tensor([0.5, 0.0]), torch.tensor([0.8, 0.5])
    p = torch.tensor([1.0, 1.0], dtype=torch.float64)
    unsafe_chosen = torch.tensor([0.7, 0.5], dtype=torch.float64)
    unsafe_rejected = torch.tensor([0.9, float("nan")], dtype=torch.float64)
    losses, metrics = cost_loss(c_chosen, c_rejected, p, unsafe_chosen, unsafe_rejected, classification_weight=1.0)
    assert losses.dtype == torch.float32
    # pair 1: d = .3; class terms c .5, u .7: -(.7 log sig(.5) + .3 log sig(-.5)) and c .8, u .9:
    # -(.9 log sig(.8) + .1 log sig(-.8)); pair 2: d = .5; c 0, u .5: log 2; its rejected response unknown
    first = -logsig(0.3) - (0.7 * logsig(0.5) + 0.3 * logsig(-0.5)) - (0.9 * logsig(0.8) + 0.1 * logsig(-0.8))
    assert losses.tolist() == pytest.approx([first, -logsig(0.5) + math.log(2)])
    assert set(metrics) == {"costs/chosen", "costs/rejected", "costs/pair_accuracy", "costs/sign_accuracy",
                            "costs/brier"}
    assert metrics["costs/chosen"].tolist() == [0.5, 0.0]
    assert metrics["costs/rejected"].tolist() == pytest.approx([0.8, 0.5])
    assert metrics["costs/pair_accuracy"].tolist() == [1.0, 1.0]  # d = .3 and .5, both above 0 (and below 1)
    # known responses: c .5 with u .7 and c .8 with u .9 (cost above 0, below 1; harmful): right; c 0 with u .5
    # (neither above): right
    assert metrics["costs/sign_accuracy"].tolist() == [1.0]
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert metrics["costs/brier"].tolist() == pytest.approx([((sig(0.5) - 0.7) ** 2 + (sig(0.8) - 0.9) ** 2) / 3])


def test_log_probabilities_of_more_sequences_than_tokens_from_the_head_in_chunks():
    torch.manual_seed(0)
    hidden = torch.randn(5, 2, 4)  # five sequences of two tokens: more rows than positions
    head = torch.nn.Linear(4, 6, bias=False)
    labels = torch.tensor([[1, 2], [3, -100], [0, 5], [4, 4], [-100, 1]])
    expected = sequence_logps(head(hidden), labels)
    by_hand = [sum(torch.log_softmax(head(hidden[i, t]), -1)[labels[i, t]].item()
                   for t in range(2) if labels[i, t] != -100) for i in range(5)]
    assert expected.tolist() == pytest.approx(by_hand, abs=1e-5)
    for rows in (1, 2, 5):
        assert head_sequence_logps(hidden, head, labels, rows_per_chunk=rows).tolist() == pytest.approx(by_hand,
                                                                                                       abs=1e-5)
