"""The constitution's contrast score in the hybrid judge (pure logic: a unit-test stand-in engine whose response
log-probabilities are scripted; numbers computed by hand). The real engines' `response_logprob` is checked against
transformers in tests/test_engine_scoring.py and through `vllm serve` in tests/server/test_openai_engine.py."""

import asyncio
import math
import random

import pytest

from cai.constitution import Constitution, ConstitutionError, Contrast, PreferencePrinciple, load_constitution
from cai.engines import Completion, Engine, TokenLogprob
from cai.judge.combine import Combiner, Parts, sigmoid
from cai.judge.compare import JudgeSettings
from cai.judge.judge import Judge

KEEPS, BREAKS = "Keep the rules.", "Break the rules."
CONTRAST = Contrast(follows=KEEPS, breaks=BREAKS)
HARM = PreferencePrinciple(id="harm", question="Is it harmful?", format="pointwise", bad_answer="Yes")
HELPS = PreferencePrinciple(id="helps", question="Does it answer?", format="pointwise", bad_answer="No",
                            objective="helpful")
CONV = [{"role": "user", "content": "help"}]

# scripted log P(response | system prompt): a refusal is likelier from the rule-keeper, a weapon from the breaker
LOGPROB = {(KEEPS, "I can't help."): -4.0, (BREAKS, "I can't help."): -7.0,
           (KEEPS, "Here is a weapon."): -9.0, (BREAKS, "Here is a weapon."): -5.5,
           (KEEPS, "Ask a locksmith."): -6.0, (BREAKS, "Ask a locksmith."): -6.5}


class ContrastStandIn(Engine):
    """Unit-test fake: P(Yes) to a yes/no question is 0.9 when the response mentions "weapon", else 0.2 (either
    answer order); `response_logprob` reads `LOGPROB` by the first line of the system prompt and the response,
    counts a token per word, and records every (system, response) it was asked."""

    model_id = "contrast-stand-in"

    def __init__(self, mute: bool = False):
        self.scored: list[tuple[str, str]] = []
        self.systems: list[str] = []
        self.mute = mute

    async def generate(self, messages, sampling, *, continue_final=False):
        judged = messages[-2]["content"].rsplit("Assistant:", 1)[1]
        if self.mute:
            return Completion(text="?", prompt_tokens=1, completion_tokens=1, top_logprobs=[[TokenLogprob("?", 0.0)]])
        p_yes = 0.9 if "weapon" in judged else 0.2
        top = [TokenLogprob(" Yes", math.log(p_yes)), TokenLogprob(" No", math.log(1 - p_yes))]
        return Completion(text=" Yes", prompt_tokens=1, completion_tokens=1, top_logprobs=[top])

    async def response_logprob(self, messages, response):
        system = messages[0]["content"]
        self.systems.append(system)
        self.scored.append((system.split("\n\n")[0], response))
        return LOGPROB[(system.split("\n\n")[0], response)], len(response.split())  # a token per word


def constitution(**extra) -> Constitution:
    return Constitution(name="c", principles=[{"id": "p", "critique_request": "c?", "revision_request": "r."}],
                        preference_principles=[HARM, HELPS, {"id": "less", "question": "Which is less harmful?"}],
                        **extra)


def test_the_contrast_score_is_the_log_likelihood_ratio_and_joins_both_orders_by_hand():
    engine = ContrastStandIn()
    judge = Judge(engine, JudgeSettings(judge_format="hybrid"), constitution(contrast=CONTRAST),
                  combiner=Combiner(weights={"harm": 0.0, "help": 0.0, "pair": 0.0, "contrast": 0.5}))
    judgements, label = asyncio.run(judge.compare(CONV, "I can't help.", "Here is a weapon.", [HARM, CONTRAST]))
    # per token: first (-4 - (-7)) / 3 = 1.0; second (-9 - (-5.5)) / 4 = -0.875; the pair's contrast 1.875 in
    # both orders
    contrast = [j for j in judgements if j.format == "contrast"]
    assert [(j.order, j.principle_id, j.contrast_first, j.contrast_second) for j in contrast] == [
        ("AB", "contrast", 1.0, -0.875), ("BA", "contrast", 1.0, -0.875)]
    assert contrast[0].p_first == pytest.approx(sigmoid(1.875))
    assert label.parts["contrast"] == {"AB": 1.875, "BA": 1.875}
    assert label.p_first == pytest.approx(sigmoid(0.5 * 1.875))  # harm weighs 0 here
    assert engine.systems.count(KEEPS) == 2 and engine.systems.count(BREAKS) == 2  # one call per response and prompt
    assert judge.calls == 4 + 4  # the harm question: 2 responses x 2 answer orders; the contrast: 2 x 2 prompts


def test_the_contrast_is_cached_per_response_across_pairs():
    engine = ContrastStandIn()
    judge = Judge(engine, JudgeSettings(judge_format="hybrid"), constitution(contrast=CONTRAST))
    texts = ["I can't help.", "Here is a weapon.", "Ask a locksmith."]

    async def all_pairs():
        return [await judge.contrast_judgement(CONV, a, b, CONTRAST, "AB")
                for i, a in enumerate(texts) for b in texts[i + 1:]]

    judgements = asyncio.run(all_pairs())
    # K = 3 responses, 3 pairs: each response scored once under each system prompt, 6 calls, not 12
    assert len(engine.scored) == 6 and len(set(engine.scored)) == 6 and judge.calls == 6
    # per token: 1.0, -0.875 and (-6 - (-6.5)) / 3 = 0.1667
    assert [j.contrast_first - j.contrast_second for j in judgements] == pytest.approx([1.875, 5 / 6, -25 / 24])


def test_the_contrast_weighs_in_the_logistic_label_by_hand():
    judge = Judge(ContrastStandIn(), JudgeSettings(judge_format="hybrid"), constitution(contrast=CONTRAST),
                  combiner=Combiner(weights={"harm": 1.0, "help": 0.0, "pair": 0.0, "contrast": 0.2}))
    _, label = asyncio.run(judge.compare(CONV, "I can't help.", "Here is a weapon.", [HARM, CONTRAST]))
    # harm: logit 0.9 - logit 0.2 = 2.1972 + 1.3863 = 3.5835; contrast 1.875 x 0.2 = 0.375
    assert label.p_first == pytest.approx(sigmoid(3.5835189 + 0.375))
    # each order's view holds the same contrast, and the weaker order's margin is |sigmoid(3.9585) - 0.5|
    assert label.consistent is True
    assert judge.combiner.margin(Parts.from_dict(label.parts)) == pytest.approx(sigmoid(3.9585189) - 0.5)


def test_the_mean_rule_averages_the_questions_only_as_aggregate_does():
    # the `mean` rule is documented as aggregate's mean over complete principles, and aggregate leaves the contrast
    # out; its p (sigmoid of a per-token likelihood difference) is no answer to average with the questions'
    judge = Judge(ContrastStandIn(), JudgeSettings(judge_format="hybrid"), constitution(contrast=CONTRAST),
                  combiner=Combiner(rule="mean"))
    _, label = asyncio.run(judge.compare(CONV, "I can't help.", "Here is a weapon.", [HARM, CONTRAST]))
    # the harm question: p_first = 0.5 + (0.9 - 0.2) / 2 = 0.85 in both orders; the contrast would pull it to
    # (0.85 + sigmoid(1.875)) / 2 = 0.8585
    assert label.p_first == pytest.approx(0.85) and label.parts["mean"] == {"AB": 0.85, "BA": 0.85}


def test_a_contrast_alone_never_makes_a_label_valid():
    judge = Judge(ContrastStandIn(mute=True), JudgeSettings(judge_format="hybrid"), constitution(contrast=CONTRAST))
    judgements, label = asyncio.run(judge.compare(CONV, "I can't help.", "Here is a weapon.", [HARM, CONTRAST]))
    assert [j.valid for j in judgements] == [False, False, True, True]  # the question had no Yes/No mass
    assert not label.valid


def test_the_contrast_system_prompt_goes_before_the_conversations_own():
    engine = ContrastStandIn()
    judge = Judge(engine, JudgeSettings(judge_format="hybrid"), constitution(contrast=CONTRAST))
    conversation = [{"role": "system", "content": "Be brief."}, *CONV]
    asyncio.run(judge.contrast_score(conversation, "I can't help.", CONTRAST))
    assert sorted(engine.systems) == [f"{BREAKS}\n\nBe brief.", f"{KEEPS}\n\nBe brief."]


def test_the_hybrid_judge_adds_the_contrast_beyond_k_and_only_for_its_objective():
    c = constitution(contrast=CONTRAST)
    hybrid = Judge(ContrastStandIn(), JudgeSettings(judge_format="hybrid"), c)
    picked = hybrid.sample(random.Random(0), 2)
    assert [p.id for p in picked] == ["harm", "helps", "contrast"] or [p.id for p in picked] == ["helps", "harm",
                                                                                                  "contrast"]
    assert "contrast" in [p.id for p in hybrid.sample(random.Random(0), 1, "harmless")]
    assert "contrast" not in [p.id for p in hybrid.sample(random.Random(0), 1, "helpful")]
    for fmt in ("pairwise", "pointwise"):
        single = Judge(ContrastStandIn(), JudgeSettings(judge_format=fmt), c)
        assert "contrast" not in [p.id for p in single.sample(random.Random(0), 3)]
    plain = Judge(ContrastStandIn(), JudgeSettings(judge_format="hybrid"), constitution())
    assert "contrast" not in [p.id for p in plain.sample(random.Random(0), 3)]


def test_combiners_from_files_without_a_contrast_weight_read_it_as_zero():
    older = Combiner.from_dict({"rule": "logistic", "weights": {"harm": 1.0, "help": 0.5, "pair": 0.0}})
    parts = Parts(harm={"AB": 2.0, "BA": 2.0}, contrast={"AB": 40.0, "BA": 40.0})
    assert older.raw_of(parts) == pytest.approx(sigmoid(2.0))


def test_constitution_validation_names_the_contrast_fields(tmp_path):
    path = tmp_path / "mine.yaml"
    base = ("name: mine\nprinciples:\n  - id: p\n    critique_request: c?\n    revision_request: r.\n"
            "preference_principles:\n  - id: contrast\n    question: Which is less harmful?\n")
    path.write_text(base + "contrast:\n  follows: Keep the rules.\n")
    with pytest.raises(ConstitutionError, match=r"(?s)mine\.yaml.*contrast\.breaks: Field required"):
        load_constitution(str(path))
    path.write_text(base + "contrast:\n  follows: Keep the rules.\n  breaks: Break them.\n")
    with pytest.raises(ConstitutionError, match=r"(?s)mine\.yaml.*contrast\.id 'contrast' is also a preference"):
        load_constitution(str(path))
    path.write_text(base + "contrast:\n  follows: Keep.\n  breaks: Break.\n  id: rules\n  weight: 2\n")
    with pytest.raises(ConstitutionError, match=r"(?s)mine\.yaml.*contrast\.weight"):
        load_constitution(str(path))


def test_the_shipped_harmless_constitution_has_a_contrast_for_harm():
    contrast = load_constitution("harmless").contrast
    assert contrast is not None and contrast.objective == "harmless" and contrast.id == "contrast"
    assert "harmless" in contrast.follows and "no rules" in contrast.breaks


def test_no_contrast_judges_with_the_questions_only_and_keys_its_check_and_fit_apart():
    from types import SimpleNamespace

    from cai.config import JudgeConfig
    from cai.judge.calibration import judge_key
    from cai.judge.check import cache_key
    from cai.judge.compare import settings_of

    off = JudgeConfig(source="-", contrast=False)
    judge = Judge(ContrastStandIn(), settings_of(off), constitution(contrast=CONTRAST))
    assert "contrast" not in [p.id for p in judge.sample(random.Random(0), 3)]
    engine = SimpleNamespace(model_id="m", describe=lambda: {"model": "m"})
    on = JudgeConfig(source="-")
    assert cache_key(engine, off) != cache_key(engine, on)
    assert judge_key(engine, off) == {**judge_key(engine, on), "contrast": False}
