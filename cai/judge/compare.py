"""The AI judge's single comparison: a multiple-choice prompt scored by the option tokens' log-probabilities
(the `Judge` that combines comparisons and per-response questions into labels is in cai/judging.py).

A comparison renders `prompts/templates/judge.j2` (the conversation, one preference principle, responses (A) and
(B)), starts the judge's answer with "The answer is (" and asks the engine for one token with its top
log-probabilities. The option tokens are every vocabulary entry that reads as the letter ("A", " A", "(A", ...);
p_A = exp(lA) / (exp(lA) + exp(lB)), where lA is the log of the summed probability of A's tokens.
In chain-of-thought mode the judge first writes its reasoning; the letter after its "answer is (" is scored and
the probability clamped into a band. A judgement whose options carry too little probability mass, or whose
reasoning has no answer, is invalid and never becomes a label.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from cai.constitution import PreferencePrinciple
from cai.engines import Engine, Messages, Sampling, TokenLogprob
from cai.templating import render

OPTIONS = ("A", "B")
YES_NO = ("Yes", "No")
_ANSWER_MARK = re.compile(r"answer is:?\s*\(?", re.IGNORECASE)


def option_of(token: str, options: tuple[str, ...] = OPTIONS) -> str | None:
    """The option a token spells ("A", " A", "(A", " (A)" -> "A"; " yes" -> "Yes"), or None."""
    core = token.replace("Ġ", " ").replace("▁", " ").strip().strip("()").strip()
    return next((o for o in options if core == o or (len(o) > 1 and core.lower() == o.lower())), None)


def option_token_ids(tokenizer: Any, options: tuple[str, ...] = OPTIONS + YES_NO) -> dict[str, set[int]] | None:
    """Every vocabulary id that decodes to an option, found from the tokenizer itself (None without one)."""
    if tokenizer is None:
        return None
    found: dict[str, set[int]] = {o: set() for o in options}
    for token, token_id in tokenizer.get_vocab().items():
        option = option_of(tokenizer.convert_tokens_to_string([token]), options)
        if option is not None:
            found[option].add(token_id)
    return found


@dataclass
class OptionScore:
    """What one scored answer position says about the two options."""

    logprob_a: float
    logprob_b: float
    mass: float
    """exp(lA) + exp(lB): how much of the judge's probability went to an option at all."""
    p_a: float
    bounded: list[str]
    """Options absent from the top-k, whose log-probability is bounded by the k-th best instead."""


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def score_options(top: list[TokenLogprob], option_ids: dict[str, set[int]] | None = None,
                  options: tuple[str, str] = OPTIONS) -> OptionScore:
    """Normalised probabilities of two options (p_a: the first) from one position's top-k alternatives.

    Tokens are matched by id when ids are known and given, else by their text. An option missing from the top-k
    gets the smallest top-k log-probability, an upper bound on its true value.
    """
    per_option: dict[str, list[float]] = {o: [] for o in options}
    for alt in top:
        if option_ids is not None and alt.token_id is not None:
            option = next((o for o in options if alt.token_id in option_ids.get(o, ())), None)
        else:
            option = option_of(alt.token, options)
        if option is not None:
            per_option[option].append(alt.logprob)
    floor = min(alt.logprob for alt in top)
    bounded = [o for o in options if not per_option[o]]
    la, lb = (_logsumexp(per_option[o]) if per_option[o] else floor for o in options)
    mass = (math.exp(la) if per_option[options[0]] else 0.0) + (math.exp(lb) if per_option[options[1]] else 0.0)
    p_a = 1.0 / (1.0 + math.exp(lb - la))
    return OptionScore(logprob_a=la, logprob_b=lb, mass=mass, p_a=p_a, bounded=bounded)


@dataclass(frozen=True)
class JudgeSettings:
    top_logprobs: int = 20
    min_option_mass: float = 0.2
    """Below this, the judge did not answer with an option: the judgement is invalid."""
    cot: bool = False
    cot_max_tokens: int = 256
    cot_band: tuple[float, float] = (0.4, 0.6)
    """Chain-of-thought probabilities are clamped into this band (the CAI paper used 40-60%)."""
    template_dir: str | None = None
    judge_format: str = "pairwise"
    """`pairwise`, `pointwise` or `hybrid` (each principle in its own format): see cai/judging.py."""
    pointwise_question: str = "Is the assistant's response harmful, unethical or dangerous?"
    protocol: str = "direct"
    """`direct`, `consultancy` or `debate` (cai/judge/debate.py): what the judge hears before it answers."""
    contrast: bool = True
    """Hybrid: add the constitution's contrast score (`Judge.contrast_score`) where it has one."""
    debate_max_tokens: int = 96


def settings_of(config: Any) -> JudgeSettings:
    """The judging settings of a `JudgeConfig` (or any settings object with the judge's fields)."""
    return JudgeSettings(top_logprobs=config.top_logprobs, min_option_mass=config.min_option_mass, cot=config.cot,
                         cot_max_tokens=config.cot_max_tokens, cot_band=config.cot_band,
                         judge_format=config.judge_format, pointwise_question=config.pointwise_question,
                         template_dir=config.templates, protocol=getattr(config, "protocol", "direct"),
                         debate_max_tokens=getattr(config, "debate_max_tokens", 96),
                         contrast=getattr(config, "contrast", True))


@dataclass
class Judgement:
    """One (pair, principle, order) comparison."""

    principle_id: str
    order: str
    """"AB": the pair's first response was shown as (A); "BA": it was shown as (B)."""
    valid: bool
    p_first: float | None
    """Probability that the pair's first response is better, in this order (None when invalid)."""
    p_a: float | None = None
    logprob_a: float | None = None
    logprob_b: float | None = None
    mass: float | None = None
    reason: str | None = None
    raw: str = ""
    harm_first: float | None = None
    """Pointwise judging: P(the bad answer) about the first response (is it harmful? ...), asked in this order."""
    harm_second: float | None = None
    contrast_first: float | None = None
    """Contrast judging: the first response's contrast score (`Judge.contrast_score`, in nats)."""
    contrast_second: float | None = None
    format: str = "pairwise"
    objective: str = "harmless"
    arguments: list[dict[str, str]] | None = None
    """Debate or consultancy: the arguments the judge heard ({side, text}), in the first presentation's order."""
    argument_p_a: list[float] | None = None
    """Debate or consultancy: P(A) in each argument order (debate: A's argument first, then B's)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge_messages(conversation: Messages, principle: PreferencePrinciple, response_a: str, response_b: str,
                   settings: JudgeSettings, examples: Messages = (), arguments: list[dict[str, str]] = ()) -> Messages:
    question = render("judge.j2", settings.template_dir, conversation=conversation, principle=principle,
                      response_a=response_a, response_b=response_b, cot=settings.cot, arguments=list(arguments))
    return [*examples, {"role": "user", "content": question}]


def clamp(p: float, band: tuple[float, float]) -> float:
    return min(max(p, band[0]), band[1])


async def judge_once(engine: Engine, conversation: Messages, first: str, second: str,
                     principle: PreferencePrinciple, order: str, settings: JudgeSettings,
                     option_ids: dict[str, set[int]] | None = None, examples: Messages = (),
                     arguments: list[dict[str, str]] = ()) -> Judgement:
    """Judge one order of one pair under one principle (after `arguments`, when debaters argued)."""
    a, b = (first, second) if order == "AB" else (second, first)
    messages = judge_messages(conversation, principle, a, b, settings, examples, arguments)
    answer_start = render("judge_answer.j2", settings.template_dir)
    raw = ""
    if settings.cot:
        reasoning = await engine.generate(messages, Sampling(max_tokens=settings.cot_max_tokens, temperature=0))
        raw = reasoning.text
        marks = list(_ANSWER_MARK.finditer(raw))
        if not marks:
            return Judgement(principle.id, order, False, None, reason="no answer in the reasoning", raw=raw)
        answer_start = raw[: marks[-1].start()] + "answer is ("  # the letter after the judge's own "answer is (" is scored
    scored = await engine.generate([*messages, {"role": "assistant", "content": answer_start}],
                                   Sampling(max_tokens=1, temperature=0, logprobs=settings.top_logprobs),
                                   continue_final=True)
    raw = raw or scored.text
    if not scored.top_logprobs:
        raise RuntimeError("the engine returned no log-probabilities for the judge's answer")
    score = score_options(scored.top_logprobs[0], option_ids)
    details = {"p_a": score.p_a, "logprob_a": score.logprob_a, "logprob_b": score.logprob_b, "mass": score.mass}
    if score.mass < settings.min_option_mass:
        return Judgement(principle.id, order, False, None, reason=f"option tokens carry only {score.mass:.3f} of "
                         f"the probability (minimum {settings.min_option_mass})", raw=raw, **details)
    p_a = clamp(score.p_a, settings.cot_band) if settings.cot else score.p_a
    details["p_a"] = p_a
    return Judgement(principle.id, order, True, p_a if order == "AB" else 1.0 - p_a, raw=raw, **details)


@dataclass
class PairLabel:
    """The aggregate of a pair's judgements: every sampled principle, each in both orders."""

    valid: bool
    p_first: float | None
    position_consistency: float | None
    """Share of complete principles whose two orders agree on the winner."""
    n_valid: int
    """Valid judgements, paired or not."""
    n_principles: int = 0
    """Principles with both orders valid: the ones the label averages."""
    n_unpaired: int = 0
    """Valid judgements whose other order was invalid, left out so their position bias does not leak in."""
    reason: str | None = None
    p_raw: float | None = None
    """The label before calibration."""
    abstain: bool = False
    """Too close to 0.5, or its presentation orders disagree: kept out of training by default."""
    parts: dict | None = None
    """The parts the label was combined from (cai/judge_combine.py), so it can be recomputed."""
    consistent: bool | None = None
    """Whether each presentation order alone picks the same winner (None: unknown)."""


def aggregate(judgements: list[Judgement], min_principles: int = 1) -> PairLabel:
    """Mean over principles of each principle's two-order mean.

    A principle counts only when both its orders are valid: one order alone carries the judge's position bias.
    With fewer than `min_principles` complete principles the pair is invalid (never a label).
    """
    by_principle: dict[str, dict[str, float]] = {}
    for j in judgements:
        if j.valid:
            by_principle.setdefault(j.principle_id, {})[j.order] = j.p_first
    complete = [v for v in by_principle.values() if len(v) == 2]
    n_valid = sum(len(v) for v in by_principle.values())
    unpaired = n_valid - 2 * len(complete)
    if len(complete) < max(1, min_principles):
        total = len({j.principle_id for j in judgements})
        reasons = sorted({j.reason or "invalid" for j in judgements if not j.valid})
        reason = (f"{len(complete)} of {total} principles judged validly in both orders (minimum "
                  f"{max(1, min_principles)})" + (f": {'; '.join(reasons)}" if reasons else ""))
        return PairLabel(False, None, None, n_valid, len(complete), unpaired, reason=reason)
    p_first = sum((v["AB"] + v["BA"]) / 2 for v in complete) / len(complete)
    consistency = sum((v["AB"] > 0.5) == (v["BA"] > 0.5) for v in complete) / len(complete)
    return PairLabel(True, p_first, consistency, n_valid, len(complete), unpaired)


def judge_examples(constitution_examples: list, settings: JudgeSettings) -> Messages:
    """The constitution's judge demonstrations as chat turns, rendered like live comparisons."""
    messages: Messages = []
    for ex in constitution_examples:
        principle = {"id": "example", "question": ex.question}
        messages += judge_messages([{"role": "user", "content": ex.prompt}], principle, ex.response_a,
                                   ex.response_b, JudgeSettings(template_dir=settings.template_dir))
        messages.append({"role": "assistant",
                         "content": render("judge_answer.j2", settings.template_dir) + ex.answer + ")"})
    return messages
