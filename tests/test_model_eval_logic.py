"""`cai eval model`'s arithmetic with numbers worked out by hand: the bootstrap interval, which letter means
"refuses" in each option order, and which model's answer the win-rate favours. The engines here are scripted
stand-ins (pure logic: they read the rendered question and answer with fixed log-probabilities)."""

from __future__ import annotations

import asyncio
import json
import math
import re

import pytest

from cai.engines import Completion, Engine, TokenLogprob
from cai.evaluate import model as model_eval
from cai.evaluate.model import EvalConfig, bootstrap_interval, evaluate_models, refusal_probability
from cai.judge.compare import JudgeSettings


def letter_answer(p_a: float) -> Completion:
    """One scored answer position with P(A) = p_a and nothing else in the top-k."""
    top = [TokenLogprob("A", math.log(p_a)), TokenLogprob("B", math.log(1 - p_a))]
    return Completion(text="A" if p_a >= 0.5 else "B", prompt_tokens=1, completion_tokens=1, top_logprobs=[top])


class ScriptedJudge(Engine):
    """Says the option holding `favoured` text is right with probability `p`."""

    model_id = "scripted-judge"

    def __init__(self, favoured: str, p: float):
        self.favoured, self.p = favoured, p
        self.questions: list[str] = []

    async def generate(self, messages, sampling, *, continue_final=False):
        question = messages[-2]["content"]
        self.questions.append(question)
        option_a = re.search(r"\(A\) (.*?)\n\n\(B\)", question, re.S).group(1)
        return letter_answer(self.p if self.favoured in option_a else 1 - self.p)

    async def close(self):
        pass


class ScriptedModel(Engine):
    def __init__(self, name: str):
        self.model_id = name

    async def generate(self, messages, sampling, *, continue_final=False):
        return Completion(text=f"answer from {self.model_id}", prompt_tokens=3, completion_tokens=4)

    async def close(self):
        pass


def test_bootstrap_interval_by_hand():
    assert bootstrap_interval([0.7] * 10, 1000) == pytest.approx((0.7, 0.7))
    # two prompts scoring 0 and 1: resampled means are 0, 0.5 or 1 with chances 1/4, 1/2, 1/4, so the 2.5th and
    # 97.5th percentiles of 4000 draws are 0 and 1
    assert bootstrap_interval([0.0, 1.0], 4000) == (0.0, 1.0)
    # four prompts at 1 and none else: no resample can differ
    assert bootstrap_interval([1.0, 1.0, 1.0, 1.0], 500) == (1.0, 1.0)


def test_refusal_letter_follows_the_option_order():
    conversation = [{"role": "user", "content": "How do I bake bread?"}]
    settings = JudgeSettings()
    # a judge that always says "A" at 0.9: P(refuse) is 0.9 when A is "refuses", 0.1 when A is "helps" -> 0.5
    always_a = ScriptedJudge(favoured="", p=0.9)
    assert asyncio.run(refusal_probability(always_a, conversation, "Sure.", settings, None)) == pytest.approx(0.5)
    # a judge that recognises the refusal option at 0.8 in either position: 0.8 in both orders -> 0.8
    sees_refusal = ScriptedJudge(favoured="It refuses", p=0.8)
    assert asyncio.run(refusal_probability(sees_refusal, conversation, "No.", settings, None)) == pytest.approx(0.8)


def test_win_rate_favours_the_trained_models_answer_not_the_first_shown(tmp_path, monkeypatch):
    engines = {"base-model": ScriptedModel("base-model"), "trained-model": ScriptedModel("trained-model"),
               "judge-model": ScriptedJudge(favoured="answer from trained-model", p=0.9)}
    monkeypatch.setattr(model_eval, "_engine", lambda config, shared: (engines[config.model], False))
    config = EvalConfig(trained="trained-model", base="base-model", harmful_limit=3, benign_limit=2,
                        judge={"model": "judge-model"}, principles_per_pair=2, bootstrap=200, check_judge=False,
                        judge_format="pairwise")  # the scripted judge answers comparisons only
    results = asyncio.run(evaluate_models(config, tmp_path))
    # each comparison: order AB shows trained as (A): 0.9; order BA shows it as (B): 1 - 0.1 = 0.9
    assert results["harmlessness"]["win_rate"] == pytest.approx(0.9)
    assert results["harmlessness"]["ci95"] == pytest.approx([0.9, 0.9])
    assert results["harmlessness"]["hard_win_share"] == 1.0 and results["harmlessness"]["valid"] == 3
    assert results["harmlessness"]["position_consistency"] == 1.0
    # the refusal question never contains a model's name: this judge answers 0.1 for "A" either way -> 0.5
    assert results["over_refusal"]["trained"]["mean_p_refusal"] == pytest.approx(0.5)
    assert results["mean_length_tokens"] == {"base": 4.0, "trained": 4.0}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["harmlessness"]["win_rate"] == pytest.approx(0.9)
    examples = json.loads((tmp_path / "examples.json").read_text())
    assert all(e["trained"] == "answer from trained-model" and e["p_trained_better"] == pytest.approx(0.9)
               for e in examples)


def test_helpfulness_win_rate_uses_the_helpful_principles_on_benign_prompts(tmp_path, monkeypatch):
    from cai.constitution import load_constitution

    judge = ScriptedJudge(favoured="answer from trained-model", p=0.8)
    engines = {"base-model": ScriptedModel("base-model"), "trained-model": ScriptedModel("trained-model"),
               "judge-model": judge}
    monkeypatch.setattr(model_eval, "_engine", lambda config, shared: (engines[config.model], False))
    config = EvalConfig(trained="trained-model", base="base-model", harmful_limit=3, benign_limit=2,
                        judge={"model": "judge-model"}, principles_per_pair=2, bootstrap=200, check_judge=False,
                        judge_format="pairwise")  # the scripted judge answers comparisons only
    results = asyncio.run(evaluate_models(config, tmp_path))
    helpful = results["helpfulness"]
    assert helpful["win_rate"] == pytest.approx(0.8) and helpful["valid"] == 2 and helpful["principles"] == "helpful"
    assert results["harmlessness"]["principles"] == "harmless"
    principles = load_constitution("harmless").preference_principles
    asked = lambda objective: sum(q.count(p.question) for q in judge.questions  # noqa: E731
                                  for p in principles if p.objective == objective)
    # helpful: 2 benign prompts x 2 principles x 2 orders; harmless: 3 harmful prompts x 2 x 2
    assert (asked("helpful"), asked("harmless")) == (8, 12)

    no_helpful = tmp_path / "c.yaml"
    no_helpful.write_text("name: c\nprinciples: [{id: p, critique_request: c, revision_request: r}]\n"
                          "preference_principles: [{id: a, question: 'Which is less harmful?'}]\n")
    results = asyncio.run(evaluate_models(config.model_copy(update={"constitution": str(no_helpful)}), tmp_path))
    assert results["helpfulness"]["win_rate"] is None and "objective: helpful" in results["helpfulness"]["reason"]
    assert results["harmlessness"]["win_rate"] == pytest.approx(0.8)


class ScriptedYesNo(Engine):
    """Pointwise: P(Yes, harmful) is 0.2 for the trained model's answer and 0.6 for any other, in either answer
    order; comparisons with lettered options get 0.5 (no preference)."""

    model_id = "scripted-yes-no"

    async def generate(self, messages, sampling, *, continue_final=False):
        question = messages[-2]["content"]
        if "(A)" in question:
            return letter_answer(0.5)
        h = 0.2 if "answer from trained-model" in question else 0.6
        top = [TokenLogprob("Yes", math.log(h)), TokenLogprob("No", math.log(1 - h))]
        return Completion(text="Yes", prompt_tokens=1, completion_tokens=1, top_logprobs=[top])

    async def close(self):
        pass


def test_eval_model_reads_harm_pointwise_when_asked(tmp_path, monkeypatch):
    engines = {"base-model": ScriptedModel("base-model"), "trained-model": ScriptedModel("trained-model"),
               "judge-model": ScriptedYesNo()}
    monkeypatch.setattr(model_eval, "_engine", lambda config, shared: (engines[config.model], False))
    config = EvalConfig(trained="trained-model", base="base-model", harmful_limit=3, benign_limit=2,
                        judge={"model": "judge-model"}, bootstrap=200, check_judge=False, judge_format="pointwise")
    results = asyncio.run(evaluate_models(config, tmp_path))
    # each order: p(trained better) = 0.5 + (h_base - h_trained) / 2 = 0.5 + (0.6 - 0.2) / 2 = 0.7
    assert results["harmlessness"]["win_rate"] == pytest.approx(0.7)
    assert results["harmlessness"]["judge_format"] == "pointwise"
    # helpfulness by the constitution's pointwise helpful principles, whose bad answer is No: P(bad) is
    # 1 - 0.2 = 0.8 for the trained answer and 1 - 0.6 = 0.4 for the base's -> 0.5 + (0.4 - 0.8) / 2 = 0.3
    assert results["helpfulness"]["win_rate"] == pytest.approx(0.3)
