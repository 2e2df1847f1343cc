"""Debate and consultancy: McNemar's exact test and the protocol comparison by hand, the consultant's side, and
the settings a protocol needs (no engine: tests/test_debate_engine.py runs them on the real one)."""

import pytest

from cai.config import JudgeConfig
from cai.judge.debate import consultant_side
from cai.judge.metrics import compare_protocols, mcnemar_exact


def test_mcnemar_exact_by_hand():
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)  # 2 * P(X <= 0), X ~ Bin(5, 1/2)
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(2, 12) == pytest.approx(2 * (1 + 14 + 91) / 2 ** 14)


def report(protocol, p_firsts, consistency=None, calls=2.0):
    rows = [{"id": f"p{i}", "p_first": p, "consistency": consistency} for i, p in enumerate(p_firsts)]
    return {"protocol": protocol, "per_pair": rows, "calls_per_label": calls,
            "valid": sum(p is not None for p in p_firsts)}


def test_protocols_are_compared_on_the_same_pairs_by_hand():
    direct = report("direct", [0.9, 0.3, 0.6, None, 0.4, 0.7], consistency=1.0)
    debate = report("debate", [0.8, 0.7, 0.4, 0.6, 0.6, 0.5], consistency=0.5, calls=8.0)
    result = compare_protocols(direct, debate)
    # direct right: p0, p2, p5 (3 of 6; the invalid p3 is wrong); debate right: p0, p1, p3, p4 (p5 at 0.5 is not)
    assert result["direct"]["accuracy"] == pytest.approx(3 / 6)
    assert result["debate"]["accuracy"] == pytest.approx(4 / 6)
    assert result["discordant"] == {"direct_only": 2, "debate_only": 3}
    assert result["mcnemar_p"] == pytest.approx(1.0)  # 2 * P(X <= 2 | n=5) = 2 * 16/32
    assert result["debate"]["calls_per_label"] == 8.0 and result["debate"]["position_consistency"] == 0.5
    with pytest.raises(ValueError, match="different pairs"):
        compare_protocols(direct, report("debate", [0.5] * 5))


def test_the_consultants_side_is_stable_and_both_sides_occur():
    sides = [consultant_side(f"answer {i}", f"other {i}", "harm") for i in range(40)]
    assert set(sides) == {"first", "second"} and 8 <= sides.count("first") <= 32
    assert sides == [consultant_side(f"answer {i}", f"other {i}", "harm") for i in range(40)]


def test_a_protocol_needs_a_comparison_and_its_options_need_a_protocol():
    with pytest.raises(ValueError, match="pointwise"):
        JudgeConfig(source="x", protocol="debate", judge_format="pointwise")
    with pytest.raises(ValueError, match="debate_max_tokens only acts with --protocol"):
        JudgeConfig(source="x", debate_max_tokens=32)
    assert JudgeConfig(source="x", protocol="consultancy", debate_max_tokens=32).debate_max_tokens == 32
