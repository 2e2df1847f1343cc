"""Tests that kill the mutants `make mutate` left alive in the review ranking, simulation and merge
(cai/review/review.py), issue 26. Pure logic on run folders written here; expected numbers by hand."""

from __future__ import annotations

import json
import math
import random

import pytest

from cai.errors import UsageError
from cai.review import review
from tests.test_review import judge_run, record


def test_a_label_of_exactly_one_half_earns_half_credit_whatever_the_gold_side():
    # 0.5 -> 0.5, 0.7 on the gold side -> 1, 0.2 against it -> 0: (0.5 + 1 + 0) / 3
    assert review.accuracy_with_gold([0.5, 0.7, 0.2], [True, True, True], set()) == pytest.approx(0.5)
    assert review.accuracy_with_gold([0.5, 0.7, 0.2], [False, True, True], set()) == pytest.approx(0.5)
    assert review.accuracy_with_gold([0.5, 0.7, 0.2], [True, True, True], {0, 2}) == pytest.approx(1.0)
    assert review.accuracy_with_gold([0.5, 0.3], [True, False], {1}) == pytest.approx(0.75)


def _draws(p, gold, k, seeds):
    return sorted(review.accuracy_with_gold(p, gold, set(random.Random(seed).sample(range(len(p)), k)))
                  for seed in range(seeds))


def test_the_random_baseline_is_seeded_and_its_interval_is_the_middle_95_percent_of_its_draws():
    p = [0.9, 0.2, 0.6, 0.35, 0.8, 0.3, 0.55, 0.1, 0.7, 0.45]
    gold = [True, True, False, False, True, True, True, False, False, True]
    doubts = [1 - 2 * abs(x - 0.5) for x in p]
    first = review.simulate_budgets(p, gold, doubts, [3])
    assert review.simulate_budgets(p, gold, doubts, [3]) == first  # seeded: the same numbers every time
    assert first["random_seeds"] == 200 and first["pairs"] == 10
    # the interval's indices on 40 pairs, 10 replaced (draws spread enough that the end ones differ)
    p = [((7 * i) % 40 + 0.5) / 40 for i in range(40)]
    gold = [i % 3 != 0 for i in range(40)]
    wide = review.simulate_budgets(p, gold, [0.0] * 40, [10])
    draws = _draws(p, gold, 10, 200)
    assert wide["random"]["10"] == pytest.approx(sum(draws) / 200)
    assert wide["random_ci95"]["10"] == [draws[5], draws[195]]  # 2.5% and 97.5% of 200 sorted draws
    assert draws[5] != draws[0] and draws[195] != draws[199]  # the indices matter on these inputs
    few = review.simulate_budgets(p, gold, [0.0] * 40, [10], seeds=20)
    draws = _draws(p, gold, 10, 20)
    assert few["random_ci95"]["10"] == [draws[0], draws[19]] and few["random_seeds"] == 20
    assert draws[18] != draws[19]
    # AI alone right on 0.9, 0.35, 0.8, 0.55, 0.1: 5 of 10. Targeted: the 3 most doubtful (0.45 and 0.55 at 0.9,
    # 0.6 at 0.8) get gold; of the other 7 the AI has 0.9, 0.35, 0.8, 0.1 right -> (4 + 3) / 10
    assert first["ai_only"] == pytest.approx(0.5) and first["targeted"]["3"] == pytest.approx(0.7)


@pytest.mark.parametrize("budget", [0, -1, math.nan, math.inf, "ten"])
def test_a_bad_budget_is_refused_before_the_run_is_read(tmp_path, budget):
    run = judge_run(tmp_path, [])  # no labelled pairs: reading it would fail with another message
    with pytest.raises(UsageError, match=r"^--budget must be a positive fraction \(0\.1\) or count \(50\), got "
                                         + ("ten" if budget == "ten" else "")):
        review.select(run, budget)
    with pytest.raises(UsageError, match="no labelled pairs to review$"):
        review.select(run, 5)


def test_what_review_refuses_says_what_to_do(tmp_path):
    with pytest.raises(UsageError, match="is not a cai run folder \\(no manifest.json\\); give a `cai judge` run"):
        review.select(tmp_path, 1)
    run = judge_run(tmp_path, [record("a", 0, {"p1": (0.9, 0.7), "p2": (0.8, 0.8)})])
    with pytest.raises(UsageError, match="nothing selected for review; run `cai review select .*` first"):
        review.merge(run)
    review.select(run, 1)
    for bad in (1.0, 1.5, -0.1, "x"):
        with pytest.raises(UsageError, match=r"--drop-unreviewed-below must be in \[0, 1\), got "):
            review.merge(run, drop_unreviewed_below=bad)
    merged = review.merge(run, drop_unreviewed_below=0.0)
    # one pair, 2 principles x 2 orders of raw judgements; nothing reviewed, nothing dropped
    assert merged["export"] == str(run / "export") and merged["rows"] == {"train": 1, "abstained": 0, "raw": 4}
    assert (merged["reviewed"], merged["selected"], merged["dropped_unreviewed"]) == (0, 1, 0)
    assert (run / "export" / "train.jsonl").is_file()


def test_a_manifest_without_settings_has_no_objectives(tmp_path):
    run = judge_run(tmp_path, [])
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["config"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert review.run_objectives(run) == []
