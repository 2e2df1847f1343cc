"""Weak-to-strong's numbers by hand (no model): the split, PGR and its interval, a scripted weak supervisor with
known errors, the sides drawn for training, and the confidence loss (hardening threshold, ramp, target)."""

import math

import pytest
import torch

from cai.evaluate.w2s import W2SConfig, correct, summarise, training_rows
from cai.evaluate.w2s_math import pgr, pgr_interval, pooled_accuracy, split_pairs
from cai.train.losses import hardened, logconf_reward_loss, logconf_weight, reward_loss


@pytest.mark.parametrize("n, fraction", [(148, 0.5), (10, 0.3), (2, 0.5), (9, 0.99)])
def test_the_split_never_puts_a_pair_in_both_parts_and_is_seeded(n, fraction):
    for seed in range(5):
        train, test = split_pairs(n, fraction, seed)
        assert not set(train) & set(test) and sorted(train + test) == list(range(n))
        assert train and test and len(test) == min(max(1, round(n * fraction)), n - 1)
        assert (train, test) == split_pairs(n, fraction, seed)
    if n > 8:
        assert split_pairs(n, fraction, 0) != split_pairs(n, fraction, 1)


def test_pgr_by_hand_and_none_without_a_gap():
    assert pgr(0.6, 0.7, 0.8) == pytest.approx(0.5)
    assert pgr(0.6, 0.55, 0.8) == pytest.approx(-0.25)
    assert pgr(0.6, 0.9, 0.8) == pytest.approx(1.5)
    assert pgr(0.8, 0.9, 0.8) is None and pgr(0.8, 0.9, 0.7) is None


def scripted_seeds():
    # two seeds of 4 held-out pairs; the weak supervisor's p (known errors: 2 of 8 wrong, one no-preference)
    weak_p = [[0.9, 0.3, 0.8, 0.5], [0.7, 0.6, 0.2, 0.9]]
    return [{"seed": i, "correct": {"weak": [correct(p) for p in ps],
                                    "w2s-xent": w, "ceiling": [1.0, 1.0, 1.0, c]}}
            for i, (ps, w, c) in enumerate(zip(weak_p, ([1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0]), (1.0, 0.0),
                                               strict=True))]


def test_a_scripted_weak_supervisor_gives_the_hand_computed_accuracy_and_pgr():
    seeds = scripted_seeds()
    assert [correct(p) for p in (0.9, 0.3, 0.5)] == [1.0, 0.0, 0.5]
    # weak: (1 + 0 + 1 + 0.5) + (1 + 1 + 0 + 1) = 5.5 of 8; w2s: 6 of 8; ceiling: 7 of 8
    assert pooled_accuracy(seeds, "weak") == pytest.approx(5.5 / 8)
    summary = summarise(seeds, ["w2s-xent", "ceiling"], bootstrap=500)
    assert summary["accuracy"]["weak"]["accuracy"] == pytest.approx(0.6875)
    assert summary["accuracy"]["ceiling"]["accuracy"] == pytest.approx(0.875)
    assert summary["pgr"]["w2s-xent"]["pgr"] == pytest.approx((0.75 - 0.6875) / (0.875 - 0.6875))  # 1/3
    low, high = summary["pgr"]["w2s-xent"]["ci95"]
    assert low <= 1 / 3 <= high
    # per seed: seed 0 weak 2.5/4, w2s 3/4, ceiling 4/4 -> 1/3; seed 1 weak 3/4, w2s 3/4, ceiling 3/4 -> no gap
    assert summary["per_seed"][0]["pgr"]["w2s-xent"] == pytest.approx(1 / 3)
    assert summary["per_seed"][1]["pgr"]["w2s-xent"] is None
    lo, hi = summary["accuracy"]["weak"]["ci95"]
    assert lo < 0.6875 < hi


def test_the_pgr_interval_is_a_point_when_every_pair_agrees_and_none_without_any_gap():
    same = [{"correct": {"weak": [0.0] * 6, "w2s-xent": [1.0, 1.0, 1.0, 0.0, 0.0, 0.0], "ceiling": [1.0] * 6}}]
    low, high, share = pgr_interval(same, "w2s-xent", 400, seed=1)
    assert share == 1.0 and 0 <= low <= 0.5 <= high <= 1  # resampled w2s share varies, weak and ceiling do not
    flat = [{"correct": {"weak": [1.0] * 5, "w2s-xent": [1.0] * 5, "ceiling": [1.0] * 5}}]
    assert pgr_interval(flat, "w2s-xent", 200, seed=0) == (None, None, 0.0)
    assert pgr_interval(same, "w2s-xent", 300, seed=3) == pgr_interval(same, "w2s-xent", 300, seed=3)


def test_training_rows_draw_sides_at_random_and_the_label_follows_the_side():
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": f"good{i}", "rejected": f"bad{i}"}
            for i in range(40)]
    p = [0.5 + i / 100 for i in range(40)]
    out = training_rows(rows, p, seed=0)
    flipped = [i for i, r in enumerate(out) if r["chosen"].startswith("bad")]
    assert 8 <= len(flipped) <= 32  # about half
    for i, r in enumerate(out):
        expected = 1 - p[i] if i in flipped else p[i]
        assert r["p_chosen"] == pytest.approx(expected) and {r["chosen"], r["rejected"]} == {f"good{i}", f"bad{i}"}
    assert out == training_rows(rows, p, seed=0) and out != training_rows(rows, p, seed=1)


def test_the_hardening_threshold_keeps_the_weak_labels_class_balance():
    p_model = torch.tensor([0.9, 0.2, 0.6, 0.4, 0.55, 0.1, 0.8, 0.3])
    # share 0.25 -> the two most confident (0.9, 0.8) are 1
    assert hardened(p_model, 0.25).tolist() == [1, 0, 0, 0, 0, 0, 1, 0]
    assert hardened(p_model, 0.5).tolist() == [1, 0, 1, 0, 1, 0, 1, 0]
    assert hardened(p_model, 0.0).tolist() == [0] * 8 and hardened(p_model, 1.0).tolist() == [1] * 8


def test_the_confidence_weight_ramps_over_the_warmup_then_holds():
    assert logconf_weight(0.0, 0.75, 0.2) == 0.0
    assert logconf_weight(0.1, 0.75, 0.2) == pytest.approx(0.375)
    assert logconf_weight(0.2, 0.75, 0.2) == pytest.approx(0.75)
    assert logconf_weight(0.9, 0.75, 0.2) == pytest.approx(0.75)
    assert logconf_weight(0.0, 0.5, 0.0) == 0.5


def test_the_confidence_loss_by_hand():
    r_c, r_r = torch.tensor([2.0, -1.0, 0.5, 0.0]), torch.tensor([0.0, 0.0, 0.0, 1.0])
    p_weak = torch.tensor([0.6, 0.7, 0.4, 0.2])  # half prefer chosen -> the top half of the student's p is 1
    losses, metrics = logconf_reward_loss(r_c, r_r, p_weak, 0.0)
    assert torch.allclose(losses, reward_loss(r_c, r_r, p_weak)[0])  # weight 0: the plain soft-label loss
    w = 0.5
    d = [2.0, -1.0, 0.5, -1.0]  # student p: .881, .269, .622, .269 -> hardened 1, 0, 1, 0
    target = [(1 - w) * pw + w * h for pw, h in zip([0.6, 0.7, 0.4, 0.2], [1, 0, 1, 0], strict=True)]
    by_hand = [-t * math.log(1 / (1 + math.exp(-x))) - (1 - t) * math.log(1 / (1 + math.exp(x)))
               for t, x in zip(target, d, strict=True)]
    losses, metrics = logconf_reward_loss(r_c, r_r, p_weak, w)
    assert losses.tolist() == pytest.approx(by_hand, rel=1e-6)
    assert metrics["logconf/weight"].tolist() == [0.5] * 4


def test_the_loss_list_is_checked():
    assert W2SConfig(out="x", loss=" logconf , xent").losses == ["logconf", "xent"]
    assert W2SConfig(out="x").arms() == ["w2s-xent", "ceiling"]  # logconf measured worse on the default
    assert W2SConfig(out="x", loss="xent,logconf").arms() == ["w2s-xent", "w2s-logconf", "ceiling"]
    for bad in ("", "xent,xent", "hinge"):
        with pytest.raises(ValueError, match="comma-separated"):
            W2SConfig(out="x", loss=bad)
