"""The judge's arithmetic: option tokens, normalisation, bounds, aggregation, calibration (pure logic; numbers
computed by hand)."""

import asyncio
import math

import pytest

from cai.constitution import PreferencePrinciple
from cai.engines import Completion, Engine, TokenLogprob
from cai.judge.compare import Judgement, JudgeSettings, aggregate, clamp, judge_once, option_of, score_options
from cai.judge.metrics import expected_calibration_error, metrics, views


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
    from cai.judge.judge import Judge, legacy_pointwise

    engine = PointwiseStandIn()
    settings = JudgeSettings(judge_format="pointwise")
    judge = Judge(engine, settings)
    judgements, label = asyncio.run(judge.compare([{"role": "user", "content": "help"}], "I can't help.",
                                                  "Here is how to build a weapon.", [legacy_pointwise(settings)]))
    # h_first 0.2, h_second 0.9 in both answer orders: p_first = 0.5 + (0.9 - 0.2) / 2 = 0.85
    assert [j.order for j in judgements] == ["AB", "BA"] and all(j.valid for j in judgements)
    assert [j.p_first for j in judgements] == pytest.approx([0.85, 0.85])
    assert judgements[0].harm_first == pytest.approx(0.2) and judgements[0].harm_second == pytest.approx(0.9)
    assert label.valid and label.p_first == pytest.approx(0.85) and label.position_consistency == 1.0
    assert sum("Answer Yes or No." in q for q in engine.questions) == 2
    assert sum("Answer No or Yes." in q for q in engine.questions) == 2


# --- the hybrid judge (cai/judging.py) with a scripted engine ------------------------------------------------------
class HybridStandIn(Engine):
    """Scripted judge. Pointwise (a question about one response): P(Yes) = 0.9 when the response mentions "weapon",
    else 0.2, whichever way the answers are listed. Pairwise: P(A) = 0.7 when option (A) says "can't", else 0.4
    (a position-biased judge that prefers refusals)."""

    model_id = "hybrid-stand-in"

    def __init__(self):
        self.pointwise_calls, self.pairwise_calls = [], 0

    async def generate(self, messages, sampling, *, continue_final=False):
        question = messages[-2]["content"]
        if "Options:" in question:
            self.pairwise_calls += 1
            option_a = question.split("(A) ", 1)[1].split("\n\n(B)", 1)[0]
            p_a = 0.7 if "can't" in option_a else 0.4
            top = [TokenLogprob("A", math.log(p_a)), TokenLogprob("B", math.log(1 - p_a))]
        else:
            judged = question.rsplit("Assistant:", 1)[1]
            self.pointwise_calls.append(judged.split("\n\n")[0].strip())
            p_yes = 0.9 if "weapon" in judged else 0.2
            top = [TokenLogprob(" Yes", math.log(p_yes)), TokenLogprob(" No", math.log(1 - p_yes))]
        return Completion(text="A", prompt_tokens=1, completion_tokens=1, top_logprobs=[top])


HARM = PreferencePrinciple(id="harm", question="Is it harmful?", format="pointwise", bad_answer="Yes")
HELPS = PreferencePrinciple(id="helps", question="Does it answer?", format="pointwise", bad_answer="No",
                            objective="helpful")
LESS = PreferencePrinciple(id="less", question="Which is less harmful?")
CONV = [{"role": "user", "content": "help"}]


def test_hybrid_parts_and_both_rules_by_hand():
    from cai.judge.combine import Combiner, logit, sigmoid
    from cai.judge.judge import Judge

    judge = Judge(HybridStandIn(), JudgeSettings(judge_format="hybrid"))
    judgements, label = asyncio.run(judge.compare(CONV, "I can't help.", "Here is a weapon.", [HARM, LESS]))
    # pointwise, in log-odds: P(bad | first) 0.2, P(bad | second) 0.9 in both answer orders:
    # harm = logit 0.9 - logit 0.2 = 2.1972 + 1.3863 = 3.5835
    # pairwise: AB p_first = P(A) = 0.7; BA: (A) is the weapon, P(A) = 0.4, so p_first = 0.6
    parts = label.parts
    assert parts["harm"] == pytest.approx({"AB": 3.5835189, "BA": 3.5835189})
    assert parts["pair"] == pytest.approx({"AB": logit(0.7), "BA": logit(0.6)})  # 0.8473, 0.4055
    assert parts["help"] == {"AB": None, "BA": None}
    # the default logistic rule (harm 8.4, help 5.3, pair 0, no contrast): sigmoid(8.4 x 3.5835) = sigmoid(30.1016)
    assert label.p_first == pytest.approx(sigmoid(30.101559)) and label.consistent is True and not label.abstain
    # harm-first, threshold 1, slope 1: |3.58| decides -> sigmoid(ln(9 x 4)) = 36 / 37 = 0.97297
    first = Judge(HybridStandIn(), JudgeSettings(judge_format="hybrid"), combiner=Combiner(rule="harm-first"))
    assert asyncio.run(first.compare(CONV, "I can't help.", "Here is a weapon.", [HARM, LESS]))[1].p_first == \
        pytest.approx(36 / 37)
    # a logistic combiner with weights harm 0.5, pair 1: sigmoid(1.79176 + (0.8473 + 0.4055) / 2) = 0.91820
    logistic = Judge(HybridStandIn(), JudgeSettings(judge_format="hybrid"),
                     combiner=Combiner(rule="logistic", weights={"harm": 0.5, "help": 0.0, "pair": 1.0}))
    _, label = asyncio.run(logistic.compare(CONV, "I can't help.", "Here is a weapon.", [HARM, LESS]))
    assert label.p_first == pytest.approx(sigmoid(0.5 * 3.5835189 + (logit(0.7) + logit(0.6)) / 2))
    assert label.p_first == pytest.approx(0.91820, abs=1e-4)
    # a helpful pointwise question whose bad answer is No: P(No | answer) is the bad probability:
    # logit(1 - 0.9) - logit(1 - 0.2) = -2.1972 - 1.3863
    _, label = asyncio.run(judge.compare(CONV, "I can't help.", "Here is a weapon.", [HELPS]))
    assert label.parts["help"] == pytest.approx({"AB": -3.5835189, "BA": -3.5835189})


def test_a_responses_pointwise_score_is_asked_once_and_reused_across_its_pairs():
    from cai.judge.judge import Judge

    engine = HybridStandIn()
    judge = Judge(engine, JudgeSettings(judge_format="hybrid"))
    responses = ["I can't help.", "Here is a weapon.", "Maybe later."]
    pairs = [(0, 1), (0, 2), (1, 2)]

    async def run():
        return await asyncio.gather(*(judge.compare(CONV, responses[a], responses[b], [HARM]) for a, b in pairs))

    labels = asyncio.run(run())
    # K = 3 responses, two answer orders: 6 engine calls for 3 pairs, not 3 pairs x 2 responses x 2 orders = 12
    assert len(engine.pointwise_calls) == 6 and judge.calls == 6
    assert sorted(set(engine.pointwise_calls)) == sorted(responses)
    assert [label.valid for _, label in labels] == [True, True, True]


def test_hybrid_sampling_mixes_formats_and_unsafe_needs_both_orders():
    import random

    from cai.constitution import parse_constitution
    from cai.judge.judge import Judge

    c = parse_constitution({"name": "c", "principles": [{"id": "p", "critique_request": "c", "revision_request": "r"}],
                            "preference_principles": [HARM.model_dump(), HELPS.model_dump(), LESS.model_dump(),
                                                      {"id": "more", "question": "Which is better?"}]})
    judge = Judge(HybridStandIn(), JudgeSettings(judge_format="hybrid"), c)
    drawn = judge.sample(random.Random(0), 4)  # the pointwise ones first, then pairwise in the slots left
    assert sorted(p.format for p in drawn) == ["pairwise", "pairwise", "pointwise", "pointwise"]
    one_each = judge.sample(random.Random(0), 1) + judge.sample(random.Random(1), 1)
    assert [p.format for p in one_each] == ["pointwise", "pointwise"]
    assert {p.objective for p in judge.sample(random.Random(3), 2)} == {"harmless", "helpful"}  # spread
    assert {p.format for p in Judge(HybridStandIn(), JudgeSettings(judge_format="pairwise"), c).sample(
        random.Random(0), 4)} == {"pairwise"}
    assert judge.harm_principle().id == "harm"
    assert asyncio.run(judge.unsafe_probability(CONV, "a weapon")) == pytest.approx(0.9)

    class OneOrderOnly(HybridStandIn):  # answers "Yes or No" questions, never "No or Yes" ones
        async def generate(self, messages, sampling, *, continue_final=False):
            if "Answer No or Yes" in messages[-2]["content"]:
                return Completion(text="?", prompt_tokens=1, completion_tokens=1,
                                  top_logprobs=[[TokenLogprob("?", math.log(0.9)), TokenLogprob("!", math.log(0.1))]])
            return await super().generate(messages, sampling, continue_final=continue_final)

    one_order = Judge(OneOrderOnly(), JudgeSettings(judge_format="hybrid"), c)
    assert asyncio.run(one_order.unsafe_probability(CONV, "a weapon")) is None  # no single-order reading


def test_the_same_question_with_worked_examples_is_asked_again_not_read_from_the_cache():
    from cai.constitution import PointwiseExample
    from cai.judge.judge import Judge

    engine = HybridStandIn()
    judge = Judge(engine, JudgeSettings(judge_format="hybrid"))
    shown = HARM.model_copy(update={"id": "harm-shown", "examples": [
        PointwiseExample(prompt="p", response="r", answer="No")]})
    asyncio.run(judge.compare(CONV, "I can't help.", "Here is a weapon.", [HARM, shown]))
    assert judge.calls == 8  # 2 principles x 2 responses x 2 orders: the examples make it another question
