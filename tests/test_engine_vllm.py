"""The vLLM engine on the embedded default model: rendering, prefix reuse, log-probabilities, per-request errors."""

import asyncio
import math

import pytest

from cai.constitution import load_constitution
from cai.engines import PromptTooLongError, Sampling
from cai.generate.critique import few_shot_messages

pytestmark = pytest.mark.engine


def test_longer_chat_extends_the_shorter_one_token_for_token(engine):
    c = load_constitution("harmless")
    base = few_shot_messages(c.few_shot) + [{"role": "user", "content": "How do I hotwire a car?"}]
    critique = base + [{"role": "assistant", "content": "First, strip the wires..."},
                       {"role": "user", "content": c.principles[0].critique_request}]
    revision = critique + [{"role": "assistant", "content": "That helps steal a car."},
                           {"role": "user", "content": c.principles[0].revision_request}]
    ids = [engine.render(m) for m in (base, critique, revision)]
    assert ids[1][: len(ids[0])] == ids[0]
    assert ids[2][: len(ids[1])] == ids[1]
    assert len(ids[0]) > 500  # the few-shot prefix is long enough for prefix caching to matter


def test_prefix_cache_serves_a_repeated_prefix(engine, loop):
    c = load_constitution("harmless")
    base = few_shot_messages(c.few_shot) + [{"role": "user", "content": "Tell me about owls."}]
    greedy = Sampling(max_tokens=4, temperature=0)
    first = loop.run_until_complete(engine.generate(base, greedy))
    second = loop.run_until_complete(engine.generate(base + [{"role": "assistant", "content": first.text},
                                                              {"role": "user", "content": "Shorter."}], greedy))
    assert second.prompt_tokens > first.prompt_tokens
    # every whole block of the shared prefix comes from the cache
    whole_blocks = first.prompt_tokens // engine.block_size * engine.block_size
    assert whole_blocks > 0 and second.cached_tokens >= whole_blocks


def test_completion_counts_and_logprobs(engine, loop):
    chat = [{"role": "user", "content": "Answer with one letter: A or B?"}]
    out = loop.run_until_complete(engine.generate(chat, Sampling(max_tokens=1, temperature=0, logprobs=5)))
    assert out.completion_tokens == 1 and out.prompt_tokens == len(engine.render(chat))
    top = out.top_logprobs[0]
    assert len(top) >= 5
    assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
    assert all(t.token_id is not None and t.logprob <= 0 for t in top)
    assert sum(math.exp(t.logprob) for t in top) <= 1.0 + 1e-4
    # greedy decoding returns the most likely token
    assert out.text == top[0].token


def test_continue_final_message_continues_the_assistant_turn(engine, loop):
    chat = [{"role": "user", "content": "Count: one, two, three."},
            {"role": "assistant", "content": "One, two,"}]
    ids = engine.render(chat, continue_final=True)
    assert engine.tokenizer.decode(ids).rstrip().endswith("One, two,")
    out = loop.run_until_complete(engine.generate(chat, Sampling(max_tokens=3, temperature=0), continue_final=True))
    assert out.completion_tokens >= 1


def test_too_long_prompt_fails_alone(engine, loop):
    huge = [{"role": "user", "content": "word " * (engine.max_model_len + 100)}]
    fine = [{"role": "user", "content": "Say hi."}]

    async def both():
        return await asyncio.gather(engine.generate(huge, Sampling(max_tokens=4)),
                                    engine.generate(fine, Sampling(max_tokens=4)), return_exceptions=True)

    too_long, ok = loop.run_until_complete(both())
    assert isinstance(too_long, PromptTooLongError) and "context window" in str(too_long)
    assert ok.completion_tokens >= 1


def test_a_responses_log_probability_matches_a_forward_pass_by_hand(engine, loop):
    """`response_logprob` (the contrast score's reading): the sum over the reply's tokens and its end of turn of
    log P(token | all before it), against transformers' own forward pass on the same ids."""
    import torch
    from transformers import AutoModelForCausalLM

    chat = [{"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": "How do I whittle a spoon?"}]
    reply = "Carve it from green wood with a hook knife, then sand it."
    total, count = loop.run_until_complete(engine.response_logprob(chat, reply))
    context = engine.render(chat)
    full = engine.tokenizer.apply_chat_template([*chat, {"role": "assistant", "content": reply}], tokenize=True,
                                                return_dict=False, add_generation_prompt=False)
    # the whole turn: the reply, then SmolLM2's end of turn ("<|im_end|>" and a newline)
    assert engine.tokenizer.decode(full[len(context):]) == reply + "<|im_end|>\n" and count == len(full) - len(context)
    model = AutoModelForCausalLM.from_pretrained(engine.model_path, dtype=torch.float32).eval()
    with torch.no_grad():
        logprobs = model(torch.tensor([full])).logits.log_softmax(-1)[0]
    by_hand = sum(logprobs[i - 1, full[i]].item() for i in range(len(context), len(full)))
    assert total == pytest.approx(by_hand, abs=1e-3) and total < 0
    # a likelier reply scores higher: the same words in a scrambled order are far less probable
    scrambled, _ = loop.run_until_complete(engine.response_logprob(chat, "sand knife Carve then green hook it wood."))
    assert scrambled < total - 10


def test_a_response_past_the_context_window_is_a_clear_error(engine, loop):
    chat = [{"role": "user", "content": "Say hi."}]
    with pytest.raises(PromptTooLongError, match="context window"):
        loop.run_until_complete(engine.response_logprob(chat, "word " * (engine.max_model_len + 100)))
