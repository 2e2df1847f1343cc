"""The hybrid judge's arithmetic (cai/judge_combine.py) with numbers worked out by hand: parts, both rules,
position consistency, fitting, calibration, cross-validation folds, the selective-accuracy curve and the band."""

from __future__ import annotations

import math

import pytest

from cai.judge.combine import (
    Calibration,
    Combiner,
    Parts,
    accuracy,
    choose_band,
    fit_calibration,
    fit_combiner,
    fit_logistic,
    folds,
    logit,
    selective_curve,
    sigmoid,
)


def parts(harm=(None, None), help_=(None, None), pair=(None, None)) -> Parts:
    return Parts(dict(zip(("AB", "BA"), harm, strict=True)), dict(zip(("AB", "BA"), help_, strict=True)),
                 dict(zip(("AB", "BA"), pair, strict=True)))


def test_features_average_the_orders_and_missing_parts_count_as_zero():
    p = parts(harm=(0.2, 0.4), pair=(1.0, None))
    assert p.features() == pytest.approx([0.3, 0.0, 1.0, 0.0])
    assert p.features("AB") == pytest.approx([0.2, 0.0, 1.0, 0.0])
    assert p.features("BA") == pytest.approx([0.4, 0.0, 0.0, 0.0])
    assert p.swapped().features() == pytest.approx([-0.3, 0.0, -1.0, 0.0])


def test_harm_first_decides_on_a_clear_harm_difference_and_otherwise_the_comparison_does():
    c = Combiner(rule="harm-first", threshold=0.15, slope=6.0, help_slope=3.0)  # (on probability-sized parts)
    assert c.raw([0.3, 0.5, -2.0]) == pytest.approx(1 / (1 + math.exp(-1.8)))  # 0.8581: harm wins over pair
    assert c.raw([0.3, 0.5, -2.0]) == pytest.approx(0.858148935)
    assert c.raw([0.1, 0.2, -0.5]) == pytest.approx(sigmoid(-0.5 + 0.6))  # below the threshold: 0.5250
    assert c.raw([-0.15, 0.0, 3.0]) == pytest.approx(sigmoid(-0.9))  # at the threshold harm decides


def test_logistic_has_no_intercept_so_a_swapped_pair_gets_one_minus_p():
    c = Combiner(rule="logistic", weights={"harm": 2.0, "help": 1.0, "pair": 0.5})
    p = parts(harm=(0.5, 0.3), help_=(0.2, 0.2), pair=(1.2, 0.4))
    expected = sigmoid(2.0 * 0.4 + 1.0 * 0.2 + 0.5 * 0.8)  # sigmoid(1.4) = 0.8022
    assert c.probability(p) == pytest.approx(expected)
    assert c.probability(p.swapped()) == pytest.approx(1 - expected)


def test_a_label_is_position_consistent_when_each_order_alone_picks_the_same_winner():
    c = Combiner(rule="logistic", weights={"harm": 0.0, "help": 0.0, "pair": 1.0})
    assert c.label(parts(pair=(1.0, 0.5)))[1] is True
    p, consistent = c.label(parts(pair=(2.0, -1.0)))
    assert consistent is False and p == pytest.approx(sigmoid(0.5))
    assert c.label(parts(pair=(2.0, None)))[1] is None  # no evidence in one order: consistency unknown
    assert c.abstains(0.9, False) and not c.abstains(0.9, True)
    banded = Combiner(abstain_band=0.1)
    assert banded.abstains(0.55, True) and not banded.abstains(0.65, True) and banded.abstains(0.41, None)


def test_fit_logistic_recovers_the_log_odds_of_a_constant_feature():
    # one feature equal to 1 everywhere, 3 of 4 targets 1: sigmoid(w) = 0.75, w = ln 3
    (w,) = fit_logistic([[1.0]] * 4, [1.0, 1.0, 1.0, 0.0], l2=0.0)
    assert w == pytest.approx(math.log(3), abs=1e-6)
    # soft targets: the same optimum from p = 0.75 on every row
    (w,) = fit_logistic([[1.0]] * 2, [0.75, 0.75], l2=0.0)
    assert w == pytest.approx(math.log(3), abs=1e-6)


def test_temperature_scaling_maps_an_overconfident_judge_to_its_accuracy():
    # every label says 0.9 for the first response; 7 of 10 are right: calibrated, 0.9 must read 0.7
    probabilities, targets = [0.9] * 10, [1.0] * 7 + [0.0] * 3
    calibration = fit_calibration(probabilities, targets, "temperature")
    assert calibration.a == pytest.approx(logit(0.7, 1e-6) / logit(0.9, 1e-6), rel=1e-3)  # 0.3856
    assert calibration.apply(0.9) == pytest.approx(0.7, abs=1e-3)
    assert calibration.apply(0.1) == pytest.approx(0.3, abs=1e-3)  # symmetric: no side is favoured
    platt = fit_calibration(probabilities, targets, "platt")
    assert platt.b == pytest.approx(0.0, abs=1e-6) and platt.apply(0.9) == pytest.approx(0.7, abs=1e-3)
    assert Calibration().apply(0.9) == 0.9


def test_folds_are_disjoint_cover_every_pair_and_are_seeded():
    split = folds(23, 5, seed=3)
    flat = [i for fold in split for i in fold]
    assert sorted(flat) == list(range(23)) and len(flat) == len(set(flat))
    assert [len(f) for f in split] == [5, 5, 5, 4, 4]
    assert folds(23, 5, seed=3) == split and folds(23, 5, seed=4) != split


def test_fit_combiner_learns_which_part_to_trust():
    # harm points the right way on every pair; pair points the wrong way on half: the fit must lean on harm
    data = [parts(harm=(1.5, 1.5), pair=(1.0, 1.0)), parts(harm=(1.0, 1.0), pair=(-1.0, -1.0)),
            parts(harm=(2.0, 2.0), pair=(1.0, 1.0)), parts(harm=(0.6, 0.6), pair=(-1.0, -1.0))]
    combiner = fit_combiner(data, [1.0] * 4, "logistic", "none")
    assert combiner.weights["harm"] > 0 and combiner.weights["harm"] > abs(combiner.weights["pair"])
    assert accuracy([combiner.probability(p) for p in data], [1.0] * 4) == 1.0
    harm_first = fit_combiner(data, [1.0] * 4, "harm-first", "none")
    assert harm_first.threshold <= 0.6  # every pair decided by harm
    assert accuracy([harm_first.probability(p) for p in data], [1.0] * 4) == 1.0


def test_selective_accuracy_curve_and_the_band_chosen_from_it():
    probabilities = [0.9, 0.8, 0.7, 0.6, 0.55, 0.45, 0.3, 0.52]
    consistent = [True, True, True, True, True, True, True, False]
    targets = [1.0] * 8  # right: 0.9, 0.8, 0.7, 0.6, 0.55; wrong: 0.45, 0.3; 0.52 is inconsistent
    curve = selective_curve(probabilities, consistent, targets, bands=(0.0, 0.1, 0.25))
    assert curve[0] == {"band": 0.0, "kept": 7 / 8, "accuracy": 5 / 7}
    assert curve[1] == {"band": 0.1, "kept": 5 / 8, "accuracy": 4 / 5}  # 0.9, 0.8, 0.7, 0.6, 0.3
    assert curve[2] == {"band": 0.25, "kept": 2 / 8, "accuracy": 1.0}
    assert choose_band(curve, target_accuracy=0.8, min_kept=0.6) == 0.1
    assert choose_band(curve, target_accuracy=0.95, min_kept=0.6) == 0.1  # best kept accuracy with >= 60% kept
    assert choose_band(curve, target_accuracy=0.95, min_kept=0.9) == 0.0  # nothing keeps 90%: no band


def test_averaged_splits_by_hand():
    from cai.judge.fit import mean_curve, mean_metrics

    one = {"pairs": 10, "accuracy": 0.7, "ci95": [0.0, 1.0], "brier": 0.2, "ece": 0.1, "position_consistency": 0.8}
    two = {**one, "accuracy": 0.9, "brier": 0.1, "ece": 0.3, "position_consistency": None}
    mean = mean_metrics([one, two])
    assert mean["accuracy"] == pytest.approx(0.8) and mean["brier"] == pytest.approx(0.15)
    assert mean["ece"] == pytest.approx(0.2) and mean["position_consistency"] == 0.8  # None left out
    assert mean["ci95"] == pytest.approx([0.4902, 0.9433], abs=1e-4)  # Wilson, 8 of 10: the splits are not more data
    curve = mean_curve([[{"band": 0.0, "kept": 1.0, "accuracy": 0.6}, {"band": 0.3, "kept": 0.0, "accuracy": None}],
                        [{"band": 0.0, "kept": 0.8, "accuracy": 0.8}, {"band": 0.3, "kept": 0.2, "accuracy": 1.0}]])
    assert curve == [{"band": 0.0, "kept": pytest.approx(0.9), "accuracy": pytest.approx(0.7)},
                     {"band": 0.3, "kept": pytest.approx(0.1), "accuracy": 1.0}]


def test_the_fit_reports_the_mean_of_repeated_splits_and_labels_with_the_first():
    from cai.judge.fit import fit_judge

    # noisy parts: which pairs a fold holds out changes the held-out figures, so the splits differ
    data = [parts(harm=(h, h + 0.3), help_=(u, -u)) for h, u in
            zip([1.2, -0.4, 0.8, 0.3, -1.0, 2.0, 0.1, -0.2, 0.9, 0.5, -0.6, 1.5, 0.2, 0.7, -0.3, 1.1],
                [0.5, 1.0, -0.8, 0.2, 0.9, -0.5, 0.4, 0.6, -0.2, 0.1, 0.3, -0.9, 0.7, -0.4, 0.2, 0.0], strict=True)]
    categories = ["a", "b"] * 8
    single = [fit_judge(data, categories, "hybrid", k=4, seed=s, repeats=1) for s in (7, 8, 9)]
    repeated = fit_judge(data, categories, "hybrid", k=4, seed=7, repeats=3)
    assert repeated["repeats"] == 3 and single[0]["repeats"] == 1
    for rule in ("mean", "harm-first", "logistic"):
        accuracies = [f["cv"][rule]["calibrated"]["accuracy"] for f in single]
        eces = [f["cv"][rule]["calibrated"]["ece"] for f in single]
        got = repeated["cv"][rule]
        assert got["calibrated"]["accuracy"] == pytest.approx(sum(accuracies) / 3)
        assert got["calibrated"]["ece"] == pytest.approx(sum(eces) / 3)
        assert got["spread"] == {"accuracy": [min(accuracies), max(accuracies)], "ece": [min(eces), max(eces)]}
        for name in ("a", "b"):
            assert got["by_category"][name]["accuracy"] == pytest.approx(
                sum(f["cv"][rule]["by_category"][name]["accuracy"] for f in single) / 3)
    assert len({f["cv"]["logistic"]["calibrated"]["ece"] for f in single}) > 1  # the splits did differ
    # the labels handed on (weak-to-strong) are one split's: one held-out label per pair
    assert repeated["predictions"] == single[0]["predictions"] or repeated["rule"] != single[0]["rule"]


def test_a_combiner_round_trips_through_json():
    c = Combiner(rule="logistic", weights={"harm": 1.5, "help": 0.5, "pair": 0.25},
                 calibration=Calibration("temperature", a=0.5), abstain_band=0.1)
    assert Combiner.from_dict(c.to_dict()) == c


def test_the_judge_check_cache_ignores_engine_settings_that_do_not_change_a_judgement():
    """The same model judged with another KV-cache share or executor gives the same log-probabilities: the check is
    reused (a grpo reward judge at 0.15 of memory and the eval stage's at 0.3 used to check twice, ~11 min each at
    4 principles). Anything that changes the numbers (model, dtype, context length) still keys a new check.
    The engines are stand-ins with only `describe()` (pure logic)."""
    from cai.config import JudgeConfig
    from cai.judge.check import cache_key

    class Described:
        def __init__(self, **settings):
            self.settings = settings

        def describe(self):
            return {"backend": "vllm", "model": "m", "dtype": "float32", "max_model_len": 4096, **self.settings}

    config = JudgeConfig(source="-")
    base = cache_key(Described(gpu_memory_utilization=0.3, distributed_executor_backend="uni"), config)
    assert cache_key(Described(gpu_memory_utilization=0.15), config) == base
    assert cache_key(Described(gpu_memory_utilization=0.3, dtype="bfloat16"), config) != base
    assert cache_key(Described(gpu_memory_utilization=0.3, max_model_len=2048), config) != base
    assert cache_key(Described(gpu_memory_utilization=0.3, model="other"), config) != base


def test_a_cached_check_names_the_file_it_was_asked_about(tmp_path, monkeypatch):
    """The cache is keyed by the check file's content: a copy elsewhere (a second run's folder) reuses the result,
    and the result names the file of this run, not the one it was first measured on (pure logic: a stand-in
    engine with only `describe()`, the cache entry written by hand)."""
    import asyncio
    import json

    from cai.config import JudgeConfig
    from cai.judge.check import cache_key, check_judge

    class Described:
        def describe(self):
            return {"backend": "vllm", "model": "m", "dtype": "float32"}

    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path / "cache"))
    pairs = tmp_path / "here" / "check.jsonl"
    pairs.parent.mkdir()
    pairs.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    config = JudgeConfig(source="-", judge_check=str(pairs))
    entry = tmp_path / "cache" / "judge-checks" / f"{cache_key(Described(), config)}.json"
    entry.parent.mkdir(parents=True)
    entry.write_text(json.dumps({"accuracy": 0.8, "file": "/first/run/check.jsonl", "checked_pairs": 1}))
    quality = asyncio.run(check_judge(Described(), config))
    assert quality["cached"] and quality["passed"] and quality["accuracy"] == 0.8
    assert quality["file"] == str(pairs)


def test_edges_of_accuracy_the_curve_and_the_band():
    """Mutation survivors of `make mutate` on cai/judge/combine.py (2026-12-01), each pinned by hand."""
    # a 0.5 prediction counts half whatever the target; a target-0 pair is right when p < 0.5
    assert accuracy([0.5], [0.0]) == 0.5 and accuracy([0.5], [1.0]) == 0.5
    assert accuracy([0.3, 0.7], [0.0, 0.0]) == 0.5
    assert math.isnan(accuracy([], []))  # no pairs: no accuracy, not an error
    with pytest.raises(ValueError):
        accuracy([0.6], [1.0, 1.0])  # predictions and targets of different lengths are a bug, not a shorter list
    with pytest.raises(ValueError):
        selective_curve([0.6], [True, True], [1.0])
    # one pair: all of it kept at band 0; nothing kept above its margin has no accuracy (not nan)
    curve = selective_curve([0.9], [True], [1.0], bands=(0.0, 0.45))
    assert curve == [{"band": 0.0, "kept": 1.0, "accuracy": 1.0}, {"band": 0.45, "kept": 0.0, "accuracy": None}]
    rows = [{"band": 0.0, "kept": 1.0, "accuracy": 0.7}, {"band": 0.1, "kept": 0.8, "accuracy": 0.8},
            {"band": 0.2, "kept": 0.6, "accuracy": 0.9}, {"band": 0.3, "kept": 0.4, "accuracy": 1.0}]
    assert choose_band(rows, target_accuracy=0.8, min_kept=0.6) == 0.1  # the smallest band reaching, not the best
    assert choose_band(rows, target_accuracy=0.9, min_kept=0.6) == 0.2  # exactly the target reaches; exactly 60% kept
    tied = [{"band": 0.0, "kept": 1.0, "accuracy": 0.7}, {"band": 0.1, "kept": 0.9, "accuracy": 0.75},
            {"band": 0.2, "kept": 0.8, "accuracy": 0.75}]
    assert choose_band(tied, target_accuracy=0.95, min_kept=0.6) == 0.1  # equal accuracy: the smaller band
    # the defaults `fit_judge` relies on: 0.85 accurate on at least 60% kept
    assert choose_band([{"band": 0.0, "kept": 1.0, "accuracy": 0.86}, {"band": 0.1, "kept": 0.8, "accuracy": 0.95}]) == 0.0
    assert choose_band([{"band": 0.0, "kept": 0.5, "accuracy": 0.99}, {"band": 0.1, "kept": 0.7, "accuracy": 0.9}]) == 0.1


def test_the_weaker_order_decides_abstention_computed_by_hand():
    c = Combiner(rule="logistic", weights={"harm": 1.0, "help": 0.0, "pair": 0.0}, abstain_band=0.15)
    sure_and_unsure = parts(harm=(2.0, 0.5))  # p_AB = sigmoid(2) = 0.8808, p_BA = sigmoid(0.5) = 0.6225
    p, consistent = c.label(sure_and_unsure)
    assert p == pytest.approx(sigmoid(1.25)) and consistent is True  # 0.7773: far from 0.5 on its own
    assert c.margin(sure_and_unsure) == pytest.approx(sigmoid(0.5) - 0.5)  # 0.1225, the weaker order
    assert c.abstains(p, consistent, c.margin(sure_and_unsure))  # 0.1225 < 0.15
    assert not c.abstains(p, consistent)  # without the margin: |p - 0.5| = 0.277
    assert not Combiner(rule="logistic", weights=c.weights, abstain_band=0.12).abstains(p, True, 0.1225)
    assert c.margin(parts(harm=(1.0, -0.5))) == 0.0  # the orders pick different winners
    assert c.margin(parts(harm=(-2.0, -0.5))) == pytest.approx(0.5 - sigmoid(-0.5))  # the same for the other side
    assert c.margin(parts(harm=(2.0, None))) is None  # an order without evidence: only |p - 0.5| is known
    calibrated = Combiner(rule="logistic", weights=c.weights, calibration=Calibration("temperature", a=2.0))
    assert calibrated.margin(sure_and_unsure) == pytest.approx(sigmoid(1.0) - 0.5)  # each order calibrated


def test_combiners_from_older_files_keep_the_band_on_the_label():
    old = Combiner.from_dict({"rule": "logistic", "weights": {"harm": 1.0, "help": 0.0, "pair": 0.0},
                              "calibration": {"method": "none"}, "abstain_band": 0.2})
    assert old.abstain_on == "label"
    assert old.margin(parts(harm=(2.0, 0.5))) == pytest.approx(sigmoid(1.25) - 0.5)
    assert Combiner.from_dict(Combiner().to_dict()).abstain_on == "weaker-order"


def test_selective_curve_keeps_labels_by_their_margin_when_given():
    probabilities = [0.9, 0.8, 0.7, 0.3]
    margins = [0.3, 0.05, None, 0.15]  # None: |p - 0.5| = 0.2 stands in
    curve = selective_curve(probabilities, [True] * 4, [1.0] * 4, bands=(0.0, 0.1, 0.18, 0.25), margins=margins)
    assert [row["kept"] for row in curve] == [1.0, 3 / 4, 2 / 4, 1 / 4]
    assert [row["accuracy"] for row in curve] == [3 / 4, 2 / 3, 1.0, 1.0]
    with pytest.raises(ValueError, match="3 margins for 4 labels"):
        selective_curve(probabilities, [True] * 4, [1.0] * 4, margins=[0.1] * 3)


class OrderSensitiveYesNo:
    """Unit-test stand-in for the engine (pure logic): P(Yes, harmful) per response and per answer order, so the
    two orders of one pointwise question disagree in strength by a known amount."""

    model_id = "scripted-order-sensitive"
    P_YES = {("safe answer", "Yes or No"): 1 / (1 + math.e ** 2), ("safe answer", "No or Yes"): 1 / (1 + math.e ** 0.5),
             ("risky answer", "Yes or No"): 0.5, ("risky answer", "No or Yes"): 0.5}

    def local_tokenizer(self):
        return None

    async def generate(self, messages, sampling, *, continue_final=False):
        from cai.engines import Completion, TokenLogprob

        question = messages[-2]["content"]
        response = "safe answer" if "Assistant: safe answer" in question else "risky answer"
        order = "Yes or No" if "Answer Yes or No" in question else "No or Yes"
        h = self.P_YES[(response, order)]
        top = [TokenLogprob("Yes", math.log(h)), TokenLogprob("No", math.log(1 - h))]
        return Completion(text="Yes", prompt_tokens=1, completion_tokens=1, top_logprobs=[top])


def test_the_judge_abstains_when_its_weaker_answer_order_is_unsure():
    import asyncio

    from cai.constitution import PreferencePrinciple
    from cai.judge.compare import JudgeSettings
    from cai.judge.judge import Judge

    harm = PreferencePrinciple(id="harm", question="Is it harmful?", format="pointwise")
    weights = {"harm": 1.0, "help": 0.0, "pair": 0.0}
    conversation = [{"role": "user", "content": "a question"}]
    labels = {}
    for band in (0.12, 0.15):
        judge = Judge(OrderSensitiveYesNo(), JudgeSettings(judge_format="hybrid"),
                      combiner=Combiner(rule="logistic", weights=weights, abstain_band=band))
        _, labels[band] = asyncio.run(judge.compare(conversation, "safe answer", "risky answer", [harm]))
    # harm part per order: logit(0.5) - logit(P(Yes | safe)) = 2.0 (Yes or No) and 0.5 (No or Yes)
    assert labels[0.15].parts["harm"] == {"AB": pytest.approx(2.0), "BA": pytest.approx(0.5)}
    assert labels[0.15].p_first == pytest.approx(sigmoid(1.25)) and labels[0.15].consistent is True
    assert labels[0.15].abstain is True  # the weaker order: sigmoid(0.5) - 0.5 = 0.1225 < 0.15
    assert labels[0.12].abstain is False
