"""The judge's arithmetic: option tokens, normalisation, bounds, aggregation, calibration (pure logic; numbers
computed by hand)."""

import asyncio
import math

import pytest

from cai.constitution import PreferencePrinciple
from cai.engines import Completion, Engine, TokenLogprob
from cai.judge import Judgement, JudgeSettings, aggregate, clamp, judge_once, option_of, score_options
from cai.judge_eval import expected_calibration_error, metrics, views


@pytest.mark.parametrize("token,option", [("A", "A"), (" A", "A"), ("(A", "A"), (" (A", "A"), ("(B)", "B"),
                                          ("ĠB", "B"), ("▁A", "A"), ("a", None), ("AB", None), ("(", None),
                                          (" The", None), ("C", None)])
def test_option_of_reads_every_spelling(token, option):
    assert option_of(token) == option


def lp(token, logprob, token_id=None):
    return TokenLogprob(token=token, logprob=logprob, token_id=token_id)


def test_two_options_normalise_by_hand():
    score = score_options([lp("A", math.log(0.6)), lp("B", math.log(0.2)), lp("The", math.log(0.1))])
    assert score.p_a == pytest.approx(0.75)  # 0.6 / (0.6 + 0.2)
    assert score.mass == pytest.approx(0.8) and score.bounded == []


def test_spellings_of_one_option_are_summed():
    score = score_options([lp("A", math.log(0.3)), lp(" A", math.log(0.1)), lp("(B", math.log(0.4)),
                           lp("x", math.log(0.05))])
    assert score.logprob_a == pytest.approx(math.log(0.4))
    assert score.p_a == pytest.approx(0.5) and score.mass == pytest.approx(0.8)


def test_missing_option_is_bounded_by_the_smallest_alternative():
    score = score_options([lp("A", math.log(0.9)), lp("x", math.log(0.05)), lp("y", math.log(0.01))])
    assert score.bounded == ["B"]
    assert score.logprob_b == pytest.approx(math.log(0.01))
    assert score.p_a == pytest.approx(0.9 / 0.91)
    assert score.mass == pytest.approx(0.9)


def test_ids_take_precedence_over_text_when_known():
    ids = {"A": {10, 11}, "B": {20}}
    top = [lp("weird", math.log(0.5), 10), lp("B", math.log(0.25), 20), lp("A", math.log(0.1), 99)]
    score = score_options(top, ids)
    assert score.p_a == pytest.approx(0.5 / 0.75)


def judgement(principle, order, p_first, valid=True):
    return Judgement(principle, order, valid, p_first if valid else None, reason=None if valid else "low mass")


def test_aggregate_averages_orders_and_principles():
    js = [judgement("p1", "AB", 0.9), judgement("p1", "BA", 0.7), judgement("p2", "AB", 0.6),
          judgement("p2", "BA", 0.2)]
    label = aggregate(js)
    assert label.p_first == pytest.approx(0.6)  # (0.9 + 0.7 + 0.6 + 0.2) / 4
    assert label.position_consistency == pytest.approx(0.5)  # p1 agrees with itself, p2 does not
    assert label.n_valid == 4 and label.valid


def test_invalid_judgements_never_become_labels():
    label = aggregate([judgement("p1", "AB", None, valid=False), judgement("p1", "BA", None, valid=False)])
    assert not label.valid and label.p_first is None and label.reason.endswith(": low mass")
    partial = aggregate([judgement("p1", "AB", 0.8), judgement("p1", "BA", None, valid=False)])
    assert not partial.valid and partial.p_first is None and partial.n_unpaired == 1  # one order alone is no label


def test_clamp_band():
    assert clamp(0.95, (0.4, 0.6)) == 0.6 and clamp(0.1, (0.4, 0.6)) == 0.4 and clamp(0.55, (0.4, 0.6)) == 0.55


class FixedLogprobEngine(Engine):
    """Stand-in that answers every judge prompt with fixed option log-probabilities and records the prompts."""

    model_id = "fixed"

    def __init__(self, pa, pb, reasoning="Therefore, the answer is (A)"):
        self.top = [lp("A", math.log(pa)), lp("B", math.log(pb)), lp("Z", math.log(0.001))]
        self.reasoning = reasoning
        self.calls = []

    async def generate(self, messages, sampling, *, continue_final=False):
        self.calls.append((messages, sampling, continue_final))
        if sampling.logprobs:
            return Completion(text="A", prompt_tokens=1, completion_tokens=1, top_logprobs=[self.top])
        return Completion(text=self.reasoning, prompt_tokens=1, completion_tokens=5)


def test_order_swap_maps_back_to_the_first_response():
    principle = PreferencePrinciple(id="p", question="Which is less harmful?")
    engine = FixedLogprobEngine(0.6, 0.2)
    conv = [{"role": "user", "content": "q"}]
    ab = asyncio.run(judge_once(engine, conv, "FIRST", "SECOND", principle, "AB", JudgeSettings()))
    ba = asyncio.run(judge_once(engine, conv, "FIRST", "SECOND", principle, "BA", JudgeSettings()))
    assert ab.p_first == pytest.approx(0.75) and ba.p_first == pytest.approx(0.25)
    shown_ab, shown_ba = engine.calls[0][0][-2]["content"], engine.calls[1][0][-2]["content"]
    assert shown_ab.index("(A) FIRST") < shown_ab.index("(B) SECOND")
    assert shown_ba.index("(A) SECOND") < shown_ba.index("(B) FIRST")
    assert engine.calls[0][0][-1] == {"role": "assistant", "content": "The answer is ("} and engine.calls[0][2]


def test_low_option_mass_is_an_invalid_record_with_the_raw_output():
    engine = FixedLogprobEngine(0.05, 0.05)
    j = asyncio.run(judge_once(engine, [{"role": "user", "content": "q"}], "x", "y",
                               PreferencePrinciple(id="p", question="?"), "AB", JudgeSettings(min_option_mass=0.2)))
    assert not j.valid and j.p_first is None and "0.100" in j.reason and j.raw == "A"


def test_cot_clamps_and_scores_after_the_judges_own_answer_mark():
    engine = FixedLogprobEngine(0.9, 0.05, reasoning="B is rude. A is kind. Therefore, the answer is (A) surely.")
    settings = JudgeSettings(cot=True, cot_band=(0.4, 0.6))
    j = asyncio.run(judge_once(engine, [{"role": "user", "content": "q"}], "x", "y",
                               PreferencePrinciple(id="p", question="?"), "AB", settings))
    assert j.valid and j.p_first == pytest.approx(0.6)
    assert engine.calls[1][0][-1]["content"] == "B is rude. A is kind. Therefore, the answer is ("
    no_answer = FixedLogprobEngine(0.9, 0.05, reasoning="Both are fine, I think.")
    j2 = asyncio.run(judge_once(no_answer, [{"role": "user", "content": "q"}], "x", "y",
                                PreferencePrinciple(id="p", question="?"), "AB", settings))
    assert not j2.valid and j2.reason == "no answer in the reasoning" and j2.raw == "Both are fine, I think."


def test_calibration_metrics_by_hand():
    # p(chosen) for four pairs: two confident and right, one unsure and right, one confident and wrong
    m = metrics([0.9, 0.95, 0.55, 0.2], [1.0, 1.0, 0.0, None])
    assert m.accuracy == pytest.approx(0.75)
    assert m.brier == pytest.approx((0.01 + 0.0025 + 0.2025 + 0.64) / 4)
    # bins: 0.9 and 0.95 -> bin 8 and 9 (acc 1), 0.55 -> bin 1 (acc 1), 0.2 -> conf 0.8 bin 6 (acc 0)
    assert m.ece == pytest.approx((0.1 + 0.05 + 0.45 + 0.8) / 4)
    assert m.position_consistency == pytest.approx(2 / 3)
    assert m.invalid_rate == 0 and metrics([None, 0.7], [None, None]).invalid_rate == 0.5
    assert expected_calibration_error([0.5]) == pytest.approx(0.0)


def test_views_show_what_swapping_fixes():
    # a judge that always prefers (A): single order is a coin flip, swapping reveals the inconsistency
    always_a = [[judgement("p", "AB", 0.9), judgement("p", "BA", 0.1)] for _ in range(10)]
    v = views(always_a)
    assert v["swapped"].accuracy == pytest.approx(0.5) and v["swapped"].position_consistency == 0.0
    assert v["swapped"].brier == pytest.approx(0.25)
    assert v["single"].brier > 0.25  # confidently wrong about half of the time


class PointwiseStandIn(Engine):
    """Scripted: P(Yes) = 0.9 when the judged response (after "Assistant:") says "weapon", else 0.2; it reads
    which way round the question asks (Yes or No / No or Yes) and answers the same either way."""

    model_id = "pointwise"

    def __init__(self):
        self.questions: list[str] = []

    async def generate(self, messages, sampling, *, continue_final=False):
        question = messages[0]["content"]
        self.questions.append(question)
        judged = question.rsplit("Assistant:", 1)[1]
        p_yes = 0.9 if "weapon" in judged else 0.2
        top = [TokenLogprob(" Yes", math.log(p_yes)), TokenLogprob(" No", math.log(1 - p_yes))]
        return Completion(text=" Yes", prompt_tokens=1, completion_tokens=1, top_logprobs=[top])


def test_pointwise_judging_prefers_the_less_harmful_response_by_hand():
    from cai.judge import judge_pair

    engine = PointwiseStandIn()
    settings = JudgeSettings(judge_format="pointwise")
    judgements, label = asyncio.run(judge_pair(engine, [{"role": "user", "content": "help"}], "I can't help.",
                                               "Here is how to build a weapon.", [], settings))
    # h_first 0.2, h_second 0.9 in both answer orders: p_first = 0.5 + (0.9 - 0.2) / 2 = 0.85
    assert [j.order for j in judgements] == ["AB", "BA"] and all(j.valid for j in judgements)
    assert [j.p_first for j in judgements] == pytest.approx([0.85, 0.85])
    assert judgements[0].harm_first == pytest.approx(0.2) and judgements[0].harm_second == pytest.approx(0.9)
    assert label.valid and label.p_first == pytest.approx(0.85) and label.position_consistency == 1.0
    assert sum("Answer Yes or No." in q for q in engine.questions) == 2
    assert sum("Answer No or Yes." in q for q in engine.questions) == 2
