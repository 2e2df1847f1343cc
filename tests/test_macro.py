"""Macro-action PPO (cai/train/macro.py): macro GAE by hand for each way a macro's value is read (a trailing partial
macro included), `fixed:1` equal to token-level GAE, the cut positions of `ppl` and `parsing` on known sequences,
and a PPO run with `fixed:1` identical to today's PPO."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

from cai.train.macro import (
    macro_gae,
    macro_spans,
    parse_macro_action,
    parsing_spans,
    ppl_spans,
    random_spans,
    span_stats,
)
from cai.train.ppo_math import gae

sys.path.insert(0, str(Path(__file__).parent))
from tiny import WORDS, save, tiny_causal_lm, tiny_reward_model, tiny_tokenizer  # noqa: E402

# one response of 5 tokens (a sixth position is padding), cut fixed:2 -> macros {0, 1}, {2, 3}, {4}
REWARDS = torch.tensor([[0.1, -0.2, 0.0, 0.3, 1.0, 0.0]])
VALUES = torch.tensor([[0.5, 0.7, 0.2, 0.4, 0.9, 0.0]])
MASK = torch.tensor([[1.0, 1, 1, 1, 1, 0]])


@pytest.mark.parametrize("mode, expected_advantages, expected_returns", [
    # macro rewards -0.1, 0.3, 1.0 (sums); gamma 1, lambda 0.5
    # equal: V = 0.6, 0.3, 0.9. A2 = 1.0 - 0.9 = 0.1; A1 = (0.3 + 0.9 - 0.3) + 0.5 x 0.1 = 0.95;
    #        A0 = (-0.1 + 0.3 - 0.6) + 0.5 x 0.95 = 0.075; returns A + V = 0.675, 1.25, 1.0
    ("equal", [0.075, 0.95, 0.1], [0.675, 1.25, 1.0]),
    # unit (the macro's last token): V = 0.7, 0.4, 0.9. A1 = (0.3 + 0.9 - 0.4) + 0.05 = 0.85;
    #        A0 = (-0.1 + 0.4 - 0.7) + 0.425 = 0.025
    ("unit", [0.025, 0.85, 0.1], [0.725, 1.25, 1.0]),
    # position (weights 1, 2): V = 1.9 / 3, 1.0 / 3, 0.9. A1 = (0.3 + 0.9 - 1/3) + 0.05 = 0.916667;
    #        A0 = (-0.1 + 1/3 - 1.9/3) + 0.5 x 0.916667 = 0.058333
    ("position", [0.058333, 0.916667, 0.1], [0.691667, 1.25, 1.0]),
])
def test_macro_gae_by_hand_with_a_trailing_partial_macro(mode, expected_advantages, expected_returns):
    spans = macro_spans("fixed:2", [5])
    assert spans == [[0, 0, 1, 1, 2]]
    advantages, returns = macro_gae(REWARDS, VALUES, MASK, spans, gamma=1.0, lam=0.5, mode=mode)
    per_token = [expected_advantages[m] for m in spans[0]] + [0.0]  # every token gets its macro's; padding 0
    assert advantages[0].tolist() == pytest.approx(per_token, abs=1e-5)
    assert returns[0].tolist() == pytest.approx([expected_returns[m] for m in spans[0]] + [0.0], abs=1e-5)


def test_fixed_1_is_token_level_gae_for_every_value_mode():
    generator = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 7, generator=generator), torch.randn(3, 7, generator=generator)
    mask = torch.tensor([[1.0] * 7, [1.0] * 4 + [0.0] * 3, [1.0] * 1 + [0.0] * 6])
    rewards = rewards * mask
    expected = gae(rewards, values, mask, 0.9, 0.8)
    for mode in ("equal", "unit", "position"):
        got = macro_gae(rewards, values, mask, macro_spans("fixed:1", [7, 4, 1]), 0.9, 0.8, mode)
        assert torch.allclose(got[0], expected[0], atol=1e-6) and torch.allclose(got[1], expected[1], atol=1e-6)


def test_ppl_cuts_where_the_macros_perplexity_would_rise():
    nll = [2.0, 1.0, 3.5, 1.0, 1.0, 4.0]
    # threshold 0: 1.0 <= 2.0 stays (mean 1.5); 3.5 > 1.5 cuts; 1.0 and 1.0 stay (means 2.25, 1.83); 4.0 cuts
    assert ppl_spans(nll, 0.0) == [0, 0, 1, 1, 1, 2]
    # threshold 2: 3.5 is not above 1.5 + 2; 4.0 > mean(2, 1, 3.5, 1, 1) + 2 = 3.7 cuts
    assert ppl_spans(nll, 2.0) == [0, 0, 0, 0, 0, 1]
    assert ppl_spans([1.0] * 40, 0.0) == [0] * 32 + [1] * 8  # at most 32 tokens a macro


def test_parsing_cuts_after_sentence_and_clause_punctuation():
    texts = ["Sure", ",", " here", " is", " how", ".", " First", " step", "\n", "Done"]
    assert parsing_spans(texts) == [0, 0, 1, 1, 1, 1, 2, 2, 2, 3]


def test_parsing_cuts_on_the_default_models_tokens():
    from cai.train.modeling import load_tokenizer

    tokenizer = load_tokenizer(None)[0]
    ids = tokenizer("Sure, here is how. First step: mix it!", add_special_tokens=False)["input_ids"]
    texts = [tokenizer.decode([i]) for i in ids]
    spans = macro_spans("parsing", [len(ids)], token_texts=[texts])[0]
    cuts = [t + 1 for t in range(len(ids) - 1) if spans[t + 1] != spans[t]]
    # a new macro starts right after each of ",", "." and ":" (the "!" ends the text)
    assert [texts[c - 1].strip() for c in cuts] == [",", ".", ":"]


def test_random_spans_draw_lengths_from_the_list_and_cover_the_response():
    spans = random_spans(50, [2, 5], random.Random(3))
    lengths = [spans.count(m) for m in range(spans[-1] + 1)]
    assert len(spans) == 50 and all(n in (2, 5) for n in lengths[:-1]) and 1 <= lengths[-1] <= 5
    assert macro_spans("random:2,5", [50], seed=3) == [spans]
    assert span_stats([[0, 0, 1], [0, 1, 1, 2]]) == {"macro/mean_length": 7 / 5, "macro/per_response": 2.5}


@pytest.mark.parametrize("spec", ["fixed:0", "random:", "fixed:2,3", "words", "fixed:x", "ppl:3"])
def test_bad_macro_specs_are_refused(spec):
    with pytest.raises(ValueError, match="--macro-action"):
        parse_macro_action(spec)


def _ppo(tmp_path, name, **extra):
    from cai.train.ppo import prepare_ppo
    from cai.train.rl_config import PPOConfig

    tok = tiny_tokenizer()
    models = tmp_path / "models"
    if not models.exists():
        save(tiny_causal_lm(tok), tok, models / "policy")
        save(tiny_reward_model(tok, seed=1), tok, models / "rm")
        (models / "prompts.jsonl").write_text("".join(
            json.dumps({"id": f"p{i}", "prompt": f"how do i pick a lock {WORDS[35 + i]}"}) + "\n" for i in range(8)))
    return prepare_ppo(PPOConfig(model=str(models / "policy"), reward_model=str(models / "rm"),
                                 data=str(models / "prompts.jsonl"), eval_fraction=0.0, rollout_batch_size=4,
                                 batch_size=2, ppo_epochs=1, max_new_tokens=6, max_length=64, max_prompt_length=32,
                                 max_steps=3, progress=False, temperature=1.0, out=str(tmp_path / name), **extra))


@pytest.mark.model
def test_a_fixed_1_ppo_run_equals_todays_ppo_and_a_macro_shares_one_advantage(tmp_path):
    def metrics(name):
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "tokens_per_s"} for r in rows]

    _ppo(tmp_path, "today").train()
    _ppo(tmp_path, "fixed1", macro_action="fixed:1").train()
    assert metrics("fixed1") == metrics("today") and len(metrics("today")) == 3

    trainer = _ppo(tmp_path, "fixed3", macro_action="fixed:3", whiten_advantages=False, macro_value="position")
    exp = trainer.make_experience(trainer.train_examples[:4])
    for row, n in enumerate(exp.mask.sum(1).long().tolist()):
        advantages = exp.advantages[row, :n].tolist()
        for start in range(0, n, 3):
            assert advantages[start: start + 3] == pytest.approx([advantages[start]] * len(advantages[start:start + 3]))
    assert exp.macro["macro/mean_length"] > 1.0
    trainer.train()
    assert all("macro/per_response" in r for r in metrics("fixed3"))
