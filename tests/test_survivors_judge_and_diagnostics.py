"""Tests that kill the mutants `make mutate` left alive in the judge's single comparison (cai/judge/compare.py)
and the evaluation statistics (cai/evaluate/diagnostics.py), issue 26. Pure logic: a scripted engine and a
four-word tokenizer stand in for vLLM; every expected number is worked out in the comments."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import pytest

from cai.constitution import JudgeExample, PreferencePrinciple
from cai.engines import Completion, Engine, TokenLogprob
from cai.evaluate.diagnostics import (
    _sigmoid,
    length_bias,
    length_controlled_win_rate,
    pearson,
    wilson_interval,
)
from cai.judge.compare import (
    YES_NO,
    Judgement,
    JudgeSettings,
    aggregate,
    judge_examples,
    judge_messages,
    judge_once,
    option_of,
    option_token_ids,
    score_options,
    settings_of,
)


def lp(token, p, token_id=None):
    return TokenLogprob(token=token, logprob=math.log(p), token_id=token_id)


# --- diagnostics ------------------------------------------------------------------------------------------------
def test_wilson_interval_of_one_trial_and_of_all_successes():
    # n = 1, 1 success: z^2 = 3.8415; centre = (1 + z^2/2) / (1 + z^2) = 2.92073 / 4.84146 = 0.60327;
    # half = z sqrt(z^2/4) / (1 + z^2) = 1.95996 * 0.97999 / 4.84146 = 0.39673 -> (0.20654, 1.0)
    low, high = wilson_interval(1, 1)
    assert low == pytest.approx(0.20654, abs=1e-5) and high == pytest.approx(1.0)
    assert wilson_interval(0, 0) is None and wilson_interval(3, -1) is None
    assert wilson_interval(0, 4)[0] == 0.0 and wilson_interval(4, 4)[1] <= 1.0


def test_the_sigmoid_is_safe_at_both_extremes():
    # each branch keeps exp() of a non-positive number: exp(800) would overflow
    assert _sigmoid(800.0) == 1.0 and _sigmoid(-800.0) == 0.0
    assert _sigmoid(0.0) == 0.5 and _sigmoid(math.log(3)) == pytest.approx(0.75)


def test_pearson_of_two_points_and_of_unequal_lists():
    assert pearson([1.0, 2.0], [3.0, 5.0]) == pytest.approx(1.0)
    assert pearson([1.0, 2.0], [5.0, 3.0]) == pytest.approx(-1.0)
    assert pearson([1.0], [2.0]) is None and pearson([1.0, 1.0], [2.0, 3.0]) is None  # no spread, no correlation
    # (1,2,3) against (2,1,4): sxy = (-1)(-1/3) + 0 + (1)(5/3) = 2, sxx = 2, syy = 14/3 -> 2 / sqrt(28/3) = 0.65465
    assert pearson([1.0, 2.0, 3.0], [2.0, 1.0, 4.0]) == pytest.approx(0.654654, abs=1e-6)
    with pytest.raises(ValueError):
        pearson([1.0, 2.0, 3.0], [1.0, 2.0])


def test_length_bias_counts_one_token_longer_as_longer_and_a_tie_as_half():
    # diffs +1, 0, -1, -3: longer share (1 + 0.5 + 0 + 0) / 4 = 0.375
    bias = length_bias([0.9, 0.5, 0.4, 0.1], [11, 10, 9, 7], [10, 10, 10, 10])
    assert bias["chosen_longer_share"] == pytest.approx(0.375) and bias["pairs"] == 4
    assert bias["p_length_correlation"] == pytest.approx(pearson([0.9, 0.5, 0.4, 0.1], [1, 0, -1, -3]))
    assert length_bias([], [], []) == {"chosen_longer_share": None, "p_length_correlation": None, "pairs": 0}
    with pytest.raises(ValueError):
        length_bias([0.5], [10, 11], [10])


def test_the_length_controlled_fit_of_two_points_by_hand():
    # d = +1, -1: sample std sqrt(2) -> x = tanh(+-1/sqrt 2) = +-0.608873; two points, two parameters: an exact fit,
    # a + b x = logit 0.9 = 2.197225 and a - b x = logit 0.3 = -0.847298 -> a = 0.674963, b = 2.500107
    fit = length_controlled_win_rate([0.9, 0.3], [1.0, -1.0])
    assert fit["length_controlled_win_rate"] == pytest.approx(1 / (1 + math.exp(-0.674963)), abs=1e-5)
    assert fit["length_coefficient"] == pytest.approx(2.500107, abs=1e-4)


def test_newtons_method_needs_only_a_handful_of_steps():
    """The exact Hessian converges quadratically: eight steps give the fit of two thousand (a wrong curvature or a
    wrong sign in the update would still be far off after eight)."""
    p = [0.9, 0.8, 0.3, 0.6, 0.2, 0.7]
    d = [40.0, 35.0, -5.0, 30.0, 20.0, 45.0]  # mostly longer: the cross term of the curvature is far from 0
    full, short = length_controlled_win_rate(p, d), length_controlled_win_rate(p, d, steps=8)
    assert short["length_controlled_win_rate"] == pytest.approx(full["length_controlled_win_rate"], abs=1e-9)
    assert short["length_coefficient"] == pytest.approx(full["length_coefficient"], abs=1e-8)
    # and it is a fit: the gradient at the answer is zero
    std = math.sqrt(sum((v - sum(d) / 6) ** 2 for v in d) / 5)  # the sample std
    x = [math.tanh(v / std) for v in d]
    a = math.log(full["length_controlled_win_rate"] / (1 - full["length_controlled_win_rate"]))
    q = [_sigmoid(a + full["length_coefficient"] * xi) for xi in x]
    assert abs(sum(qi - pi for qi, pi in zip(q, p, strict=True))) < 1e-9
    assert abs(sum((qi - pi) * xi for qi, pi, xi in zip(q, p, x, strict=True))) < 1e-9


def test_the_length_controlled_fit_of_nothing_and_of_certain_wins():
    empty = length_controlled_win_rate([], [])
    assert math.isnan(empty["length_controlled_win_rate"]) and math.isnan(empty["length_coefficient"])
    # every comparison won with certainty: the curvature vanishes as a grows; the fit stops there, near 1
    certain = length_controlled_win_rate([1.0, 1.0, 1.0], [3.0, -2.0, 1.0])
    assert certain["length_controlled_win_rate"] > 0.999 and math.isfinite(certain["length_coefficient"])
    with pytest.raises(ValueError):
        length_controlled_win_rate([0.5, 0.6], [1.0])


# --- the judge's comparison: options, scores and aggregation ----------------------------------------------------
@pytest.mark.parametrize("token,options,expected", [
    (" no", YES_NO, "No"), ("NO", YES_NO, "No"), (" yes", YES_NO, "Yes"), ("YES)", YES_NO, "Yes"),
    ("AX", ("A", "B"), None), ("XA", ("A", "B"), None), ("a", ("A", "B"), None), ("Noo", YES_NO, None)])
def test_yes_no_in_any_case_but_letters_only_as_written(token, options, expected):
    assert option_of(token, options) == expected


def test_option_ids_are_read_from_the_tokenizers_own_vocabulary():
    class FourWords:  # stand-in tokenizer: GPT-2 style "Ġ" for a leading space
        def get_vocab(self):
            return {"A": 1, "ĠA": 2, "(B": 3, "Ġyes": 4, "No": 5, "x": 6, "ĠAB": 7}

        def convert_tokens_to_string(self, tokens):
            return "".join(tokens).replace("Ġ", " ")

    assert option_token_ids(FourWords()) == {"A": {1, 2}, "B": {3}, "Yes": {4}, "No": {5}}
    assert option_token_ids(FourWords(), ("A", "B")) == {"A": {1, 2}, "B": {3}}
    assert option_token_ids(None) is None


def test_scores_by_text_when_no_ids_are_given_and_by_id_with_partial_maps():
    # ids on the alternatives but no id map: matched by text, A 0.6 / B 0.2 -> 0.75
    score = score_options([lp("A", 0.6, 10), lp("B", 0.2, 20), lp("x", 0.1, 30)], None)
    assert score.p_a == pytest.approx(0.75) and score.mass == pytest.approx(0.8)
    # a map that knows only A's ids: B is absent, bounded by the smallest alternative (0.1); its bound is not mass
    score = score_options([lp("A", 0.6, 10), lp("B", 0.2, 20), lp("x", 0.1, 30)], {"A": {10}})
    assert score.bounded == ["B"] and score.mass == pytest.approx(0.6) and score.p_a == pytest.approx(0.6 / 0.7)
    # A absent: its bound does not count as mass either
    score = score_options([lp("B", 0.5), lp("x", 0.2)])
    assert score.bounded == ["A"] and score.mass == pytest.approx(0.5) and score.p_a == pytest.approx(0.2 / 0.7)


def judgement(principle, order, p_first, valid=True, reason=None):
    return Judgement(principle, order, valid, p_first if valid else None, reason=reason)


def test_aggregate_counts_unpaired_judgements_and_says_why_a_pair_has_no_label():
    js = [judgement("p1", "AB", 0.8), judgement("p1", "BA", 0.6), judgement("p2", "AB", 0.7),
          judgement("p2", "BA", None, valid=False, reason="too little mass"), judgement("p3", "AB", None, False),
          judgement("p3", "BA", None, False)]
    label = aggregate(js)  # one complete principle (p1), one unpaired valid judgement (p2 AB)
    assert (label.valid, label.n_valid, label.n_principles, label.n_unpaired) == (True, 3, 1, 1)
    assert label.p_first == pytest.approx(0.7) and label.position_consistency == 1.0
    refused = aggregate(js, min_principles=2)
    assert refused.valid is False and refused.p_first is None and refused.position_consistency is None
    assert (refused.n_valid, refused.n_principles, refused.n_unpaired) == (3, 1, 1)
    assert refused.reason == ("1 of 3 principles judged validly in both orders (minimum 2): invalid; "
                              "too little mass")
    quiet = aggregate([judgement("p1", "AB", 0.8), judgement("p1", "BA", 0.6)], min_principles=3)
    assert quiet.reason == "1 of 1 principles judged validly in both orders (minimum 3)"
    none = aggregate([judgement("p1", "AB", None, False)], min_principles=0)
    assert none.reason == "0 of 1 principles judged validly in both orders (minimum 1): invalid"


def test_exactly_one_half_is_no_vote_for_the_first_response():
    # AB 0.5 does not pick the first response, BA 0.6 does: the orders disagree; 0.5 against 0.4 agree
    assert aggregate([judgement("p", "AB", 0.5), judgement("p", "BA", 0.6)]).position_consistency == 0.0
    assert aggregate([judgement("p", "AB", 0.6), judgement("p", "BA", 0.5)]).position_consistency == 0.0
    assert aggregate([judgement("p", "AB", 0.5), judgement("p", "BA", 0.4)]).position_consistency == 1.0


# --- the judge's comparison on a scripted engine ----------------------------------------------------------------
class Scripted(Engine):
    """Stand-in engine: every scoring call returns the given alternatives; reasoning calls return `reasoning`."""

    model_id = "scripted"

    def __init__(self, top, reasoning=""):
        self.top, self.reasoning, self.calls = top, reasoning, []

    async def generate(self, messages, sampling, *, continue_final=False):
        self.calls.append((messages, sampling, continue_final))
        if sampling.logprobs:
            return Completion(text="A", prompt_tokens=1, completion_tokens=1, top_logprobs=[self.top] if self.top
                              else [])
        return Completion(text=self.reasoning, prompt_tokens=1, completion_tokens=5)


PRINCIPLE = PreferencePrinciple(id="kind", question="Which response is kinder?")
CONVERSATION = [{"role": "user", "content": "Say something."}]


def run(engine, settings=None, order="AB", option_ids=None, examples=(), arguments=()):
    settings = settings or JudgeSettings()
    return asyncio.run(judge_once(engine, CONVERSATION, "FIRST", "SECOND", PRINCIPLE, order, settings,
                                  option_ids=option_ids, examples=examples, arguments=arguments))


def test_a_comparison_asks_for_one_greedy_token_with_its_top_alternatives():
    engine = Scripted([lp("A", 0.6, 10), lp("B", 0.2, 20)])
    j = run(engine, JudgeSettings(top_logprobs=7))
    (messages, sampling, continue_final), = engine.calls
    assert (sampling.max_tokens, sampling.temperature, sampling.logprobs, continue_final) == (1, 0, 7, True)
    assert messages[-1] == {"role": "assistant", "content": "The answer is ("}
    assert messages[-2]["role"] == "user" and "Which response is kinder?" in messages[-2]["content"]
    assert (j.principle_id, j.order, j.valid, j.p_first, j.p_a) == ("kind", "AB", True, pytest.approx(0.75),
                                                                     pytest.approx(0.75))
    assert j.logprob_a == pytest.approx(math.log(0.6)) and j.mass == pytest.approx(0.8) and j.raw == "A"
    # option ids are used when given: token 20 is A's here, so A = 0.2 and B = 0.6
    swapped = run(Scripted([lp("A", 0.6, 10), lp("B", 0.2, 20)]), option_ids={"A": {20}, "B": {10}})
    assert swapped.p_a == pytest.approx(0.25)


def test_option_mass_exactly_at_the_minimum_is_enough_and_below_it_is_an_invalid_record():
    at = run(Scripted([lp("A", 0.15), lp("B", 0.05), lp("x", 0.7)]), JudgeSettings(min_option_mass=0.2))
    assert at.valid and at.p_first == pytest.approx(0.75)
    below = run(Scripted([lp("A", 0.1), lp("B", 0.05), lp("x", 0.7)]), JudgeSettings(min_option_mass=0.2),
                order="BA")
    assert (below.principle_id, below.order, below.valid, below.p_first) == ("kind", "BA", False, None)
    assert below.reason == "option tokens carry only 0.150 of the probability (minimum 0.2)"
    assert below.p_a == pytest.approx(2 / 3) and below.raw == "A" and below.mass == pytest.approx(0.15)


def test_no_log_probabilities_is_an_engine_error_not_a_label():
    with pytest.raises(RuntimeError, match="^the engine returned no log-probabilities for the judge's answer$"):
        run(Scripted([]))


def test_chain_of_thought_reasons_greedily_within_its_budget_and_records_a_missing_answer():
    engine = Scripted([lp("A", 0.9), lp("B", 0.05)], reasoning="No idea.")
    j = run(engine, JudgeSettings(cot=True, cot_max_tokens=33), order="BA")
    (messages, sampling, _), = engine.calls
    assert (sampling.max_tokens, sampling.temperature, sampling.logprobs) == (33, 0, None)
    assert "step by step" in messages[-1]["content"] and "(A) SECOND" in messages[-1]["content"]
    assert (j.principle_id, j.order, j.valid, j.p_first, j.raw) == ("kind", "BA", False, None, "No idea.")
    answered = Scripted([lp("A", 0.9), lp("B", 0.05)], reasoning="So the answer is (B).")
    j = run(answered, JudgeSettings(cot=True, cot_band=(0.4, 0.6)))
    assert j.valid and j.p_a == 0.6 and j.p_first == 0.6 and j.raw == "So the answer is (B)."


def test_demonstrations_come_first_and_arguments_reach_the_prompt():
    example = JudgeExample(prompt="Hi?", response_a="Hello!", response_b="Go away.", question="Which is kinder?",
                           answer="A")
    shown = judge_examples([example], JudgeSettings())
    assert [m["role"] for m in shown] == ["user", "assistant"]
    assert shown[1] == {"role": "assistant", "content": "The answer is (A)"}
    assert shown[0]["content"] == judge_messages([{"role": "user", "content": "Hi?"}],
                                                 {"id": "example", "question": "Which is kinder?"}, "Hello!",
                                                 "Go away.", JudgeSettings())[0]["content"]
    assert "Human: Hi?" in shown[0]["content"] and "(A) Hello!" in shown[0]["content"]
    assert "(B) Go away." in shown[0]["content"] and "Which is kinder?" in shown[0]["content"]
    assert judge_examples([], JudgeSettings()) == []
    second = JudgeExample(prompt="Bye?", response_a="Whatever.", response_b="Goodbye, take care!",
                          question="Which is kinder?", answer="B")
    both = judge_examples([example, second], JudgeSettings())
    assert both[:2] == shown and [m["role"] for m in both] == ["user", "assistant"] * 2
    assert "Human: Bye?" in both[2]["content"] and both[3]["content"] == "The answer is (B)"
    engine = Scripted([lp("A", 0.6), lp("B", 0.2)])
    run(engine, examples=shown, arguments=[{"side": "A", "text": "A is warm."}])
    messages = engine.calls[0][0]
    assert messages[:2] == shown and messages[2]["role"] == "user" and len(messages) == 4
    assert "Argument for (A): A is warm." in messages[2]["content"]


def test_a_template_folder_of_ones_own_changes_the_question_and_the_answer_start(tmp_path):
    (tmp_path / "judge.j2").write_text("Q: {{ principle.question }} {{ response_a }} | {{ response_b }}"
                                       "{% if cot %} think{% endif %}{% for a in arguments %} [{{ a.text }}]"
                                       "{% endfor %}")
    (tmp_path / "judge_answer.j2").write_text("My pick: (")
    settings = JudgeSettings(template_dir=str(tmp_path))
    engine = Scripted([lp("A", 0.6), lp("B", 0.2)])
    run(engine, settings, arguments=[{"side": "B", "text": "because"}])
    messages = engine.calls[0][0]
    assert messages == [{"role": "user", "content": "Q: Which response is kinder? FIRST | SECOND [because]"},
                        {"role": "assistant", "content": "My pick: ("}]
    example = JudgeExample(prompt="p", response_a="a", response_b="b", question="q?", answer="B")
    assert judge_examples([example], settings) == [{"role": "user", "content": "Q: q? a | b"},
                                                   {"role": "assistant", "content": "My pick: (B)"}]


def test_settings_of_reads_every_judging_field():
    config = SimpleNamespace(top_logprobs=5, min_option_mass=0.3, cot=True, cot_max_tokens=64, cot_band=(0.3, 0.7),
                             judge_format="hybrid", pointwise_question="Is it rude?", templates="/t",
                             protocol="debate", debate_max_tokens=40)
    assert settings_of(config) == JudgeSettings(top_logprobs=5, min_option_mass=0.3, cot=True, cot_max_tokens=64,
                                                cot_band=(0.3, 0.7), template_dir="/t", judge_format="hybrid",
                                                pointwise_question="Is it rude?", protocol="debate",
                                                debate_max_tokens=40)
    older = SimpleNamespace(**{k: v for k, v in vars(config).items() if k not in ("protocol", "debate_max_tokens")})
    assert settings_of(older).protocol == "direct" and settings_of(older).debate_max_tokens == 96
