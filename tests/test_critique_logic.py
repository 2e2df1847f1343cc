"""The critique -> revision chain logic against a scripted stand-in engine (a unit-test fake, pure logic only;
the real vLLM engine runs the same chains in tests/test_generate_engine.py)."""

import asyncio

from cai.constitution import load_constitution
from cai.constitution import sample_rng as principle_rng
from cai.engines import Completion, Engine, Sampling
from cai.generate.critique import ChainSettings, few_shot_messages, run_chain


class ScriptedEngine(Engine):
    """Returns canned texts and remembers every request."""

    model_id = "scripted"

    def __init__(self, replies):
        self.replies = list(replies)
        self.requests = []

    async def generate(self, messages, sampling, *, continue_final=False):
        self.requests.append(([dict(m) for m in messages], sampling))
        return Completion(text=self.replies.pop(0), prompt_tokens=len(messages), completion_tokens=3)


def settings(rounds, patterns=()):
    return ChainSettings(rounds=rounds, initial=Sampling(max_tokens=11), critique=Sampling(max_tokens=12),
                         revision=Sampling(max_tokens=13), seed=5, early_stop_patterns=patterns)


def test_each_request_extends_the_previous_conversation():
    c = load_constitution("harmless")
    prefix = few_shot_messages(c.few_shot)
    engine = ScriptedEngine(["first", "crit1", "rev1", "crit2", "rev2"])
    prompt = [{"role": "user", "content": "How do I pick a lock?"}]
    result = asyncio.run(run_chain(engine, "s1", prompt, c, prefix, settings(2)))
    convs = [m for m, _ in engine.requests]
    assert len(convs) == 5
    for shorter, longer in zip(convs, convs[1:], strict=False):
        assert longer[: len(shorter)] == shorter and len(longer) == len(shorter) + 2
    assert convs[0] == prefix + prompt
    assert convs[1][-2] == {"role": "assistant", "content": "first"}
    assert convs[3][-2] == {"role": "assistant", "content": "rev1"}  # round 2 critiques the revision
    assert [s.max_tokens for _, s in engine.requests] == [11, 12, 13, 12, 13]
    assert result["initial"] == "first" and result["final"] == "rev2"
    assert [t["stage"] for t in result["turns"]] == ["initial", "critique", "revision", "critique", "revision"]
    assert result["rounds_done"] == 2 and result["completion_tokens"] == 15
    rng = principle_rng(5, "s1")
    expected = [c.sample_principle(rng).id for _ in range(2)]
    assert result["principle_ids"] == expected
    assert result["turns"][1]["request"] == c.principle(expected[0]).critique_request


def test_principles_depend_on_the_sample_not_on_scheduling():
    c = load_constitution("harmless")
    draws = {sid: [c.sample_principle(principle_rng(0, sid)).id for _ in range(1)] for sid in ("a", "b", "c")}
    again = {sid: [c.sample_principle(principle_rng(0, sid)).id for _ in range(1)] for sid in ("c", "b", "a")}
    assert draws == again


def test_early_stop_when_the_critique_finds_nothing():
    c = load_constitution("harmless")
    engine = ScriptedEngine(["fine answer", "No issues: the response is harmless."])
    result = asyncio.run(run_chain(engine, "s", [{"role": "user", "content": "hi"}], c, [],
                                   settings(3, (r"^\W*no (issues|problems)",))))
    assert result["stopped_early"] and result["rounds_done"] == 0
    assert result["final"] == "fine answer" and len(engine.requests) == 2


def test_zero_rounds_keeps_the_initial_response():
    c = load_constitution("harmless")
    engine = ScriptedEngine(["only"])
    result = asyncio.run(run_chain(engine, "s", [{"role": "user", "content": "hi"}], c, [], settings(0)))
    assert result["final"] == result["initial"] == "only" and result["principle_ids"] == []
