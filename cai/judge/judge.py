"""The judge cai uses everywhere (`cai judge`, the judge check, `cai eval judge|model`, PPO's `--eval-judge`,
online DPO, review simulation): one object holding the engine, the format, the combination rule, its calibration
and a cache of per-response scores.

    judge = Judge(engine, JudgeSettings(judge_format="hybrid"), constitution, combiner)
    principles = judge.sample(sample_rng(seed, pair_id), k=4)
    judgements, label = await judge.compare(conversation, first, second, principles)

Formats (`JudgeSettings.judge_format`):
- `pairwise`: every principle compares the two responses, in both orders; the label is the mean of the
  principles' two-order means (`judge.aggregate`).
- `pointwise`: every principle is a yes/no question about one response, asked in both answer orders; per order
  p_first = 0.5 + (P(bad | second) - P(bad | first)) / 2, aggregated the same way. A constitution without
  pointwise principles is asked `pointwise_question` ("is it harmful?"), except for the `helpful` objective,
  which then falls back to its pairwise principles (a harm question says nothing of helpfulness).
- `hybrid`: each principle in its own format (`PreferencePrinciple.format`); half the sampled principles are
  pointwise and half pairwise where the constitution has both. A constitution with a `contrast` adds its score
  to every pair of its objective, beyond the k principles: how much more likely each response is from an
  assistant that keeps the constitution than from one that breaks it (two calls per response, cached). The parts (harm and helpfulness differences
  from the pointwise answers, the pairwise logits) become p_first by the `Combiner` (cai/judge_combine.py), which
  also calibrates it and says when to abstain.
A response's pointwise score depends on the conversation, the response, the question and the answer order only,
so it is asked once and cached: K responses to one prompt cost K pointwise calls per principle and order, not one
per pair.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from typing import Any

from cai.constitution import Constitution, Contrast, PreferencePrinciple
from cai.engines import Engine, Messages, Sampling
from cai.judge.combine import ORDERS, Combiner, Parts, logit, sigmoid
from cai.judge.compare import (
    YES_NO,
    Judgement,
    JudgeSettings,
    OptionScore,
    PairLabel,
    aggregate,
    judge_once,
    option_token_ids,
    score_options,
)
from cai.templating import render

LEGACY_POINTWISE_ID = "pointwise"
POINTWISE_CLIP = 0.001
"""Pointwise probabilities are clipped to [0.001, 0.999] before their log-odds are taken."""


def legacy_pointwise(settings: JudgeSettings) -> PreferencePrinciple:
    """The one harm question of `pointwise_question`, for constitutions without pointwise principles."""
    return PreferencePrinciple(id=LEGACY_POINTWISE_ID, question=settings.pointwise_question, format="pointwise",
                               bad_answer="Yes")


class Judge:
    def __init__(self, engine: Engine, settings: JudgeSettings, constitution: Constitution | None = None,
                 combiner: Combiner | None = None, examples: Messages = (), min_principles: int = 1,
                 debaters: Engine | None = None):
        self.engine = engine
        self.debaters = debaters or engine
        """Who argues under `--protocol debate|consultancy` (the judge's own model unless `--debater-model`)."""
        self.debater_calls = 0
        self.settings = settings
        self.constitution = constitution
        self.combiner = combiner or Combiner.default(settings.judge_format)
        self.examples = examples
        self.min_principles = min_principles
        self.option_ids = option_token_ids(engine.local_tokenizer())
        self._scores: dict[str, asyncio.Future] = {}
        self.calls = 0
        """Engine calls made (cached pointwise scores not counted twice): the judge's cost."""

    # --- which principles -----------------------------------------------------------------------------------
    def sample(self, rng: random.Random, k: int, objective: str | None = None) -> list[PreferencePrinciple | Contrast]:
        """k principles for one pair, in the formats this judge uses, and under `hybrid` the constitution's
        contrast for its objective (not counted in k: it is a score of each response, not a question)."""
        assert self.constitution is not None, "sample() needs the judge's constitution"
        principles = self._questions(rng, k, objective)
        contrast = self.constitution.contrast
        if (self.settings.judge_format == "hybrid" and self.settings.contrast and contrast
                and objective in (None, contrast.objective)):
            principles.append(contrast)
        return principles

    def _questions(self, rng: random.Random, k: int, objective: str | None) -> list[PreferencePrinciple]:
        fmt = self.settings.judge_format
        has = {f: self._has(f, objective) for f in ("pairwise", "pointwise")}
        if fmt == "pointwise" or (fmt == "hybrid" and not has["pairwise"]):
            if has["pointwise"]:
                return self.constitution.sample_preference_principles(rng, k, objective, ("pointwise",))
            if objective in (None, "harmless") or not has["pairwise"]:
                return [legacy_pointwise(self.settings)]  # the harm question
            # an objective with no yes/no question of its own (helpfulness) is asked by its comparisons
        if fmt == "pairwise" or not has["pointwise"]:
            return self.constitution.sample_preference_principles(rng, k, objective, ("pairwise",))
        # hybrid: the pointwise principles first (a small judge answers them far better), spread over the
        # objectives when there are more than k, then pairwise ones in the slots left
        pointwise = [p for p in self.constitution.objective_principles(objective) if p.format == "pointwise"]
        if len(pointwise) > k:
            by_objective: dict[str, list] = {}
            for p in rng.sample(pointwise, len(pointwise)):
                by_objective.setdefault(p.objective, []).append(p)
            spread = [p for group in zip(*by_objective.values(), strict=False) for p in group]
            spread += [p for p in pointwise if p not in spread]
            pointwise = spread[:k]
        left = k - len(pointwise)
        pairwise = (self.constitution.sample_preference_principles(rng, left, objective, ("pairwise",))
                    if left > 0 and has["pairwise"] else [])
        return pointwise + pairwise

    def _has(self, fmt: str, objective: str | None) -> bool:
        return any(p.format == fmt and (objective is None or p.objective == objective)
                   for p in self.constitution.preference_principles)

    def harm_principle(self) -> PreferencePrinciple:
        """The question behind a response's `unsafe` probability: the constitution's first pointwise harmless
        principle whose bad answer is Yes, else `pointwise_question`."""
        for p in self.constitution.preference_principles if self.constitution else []:
            if p.format == "pointwise" and p.objective == "harmless" and p.bad_answer == "Yes":
                return p
        return legacy_pointwise(self.settings)

    # --- one response ---------------------------------------------------------------------------------------
    async def bad_probability(self, conversation: Messages, response: str, principle: PreferencePrinciple,
                              order: str) -> OptionScore:
        """P(bad answer) to a pointwise principle about one response (as `p_a`), asked with the answers in
        `order` ("AB": Yes or No; "BA": No or Yes); cached by content."""
        key = hashlib.sha256(json.dumps([conversation, response, principle.question, principle.bad_answer, order,
                                         [e.model_dump() for e in principle.examples], self.settings.template_dir],
                                        ensure_ascii=False).encode()).hexdigest()
        if key not in self._scores:
            self._scores[key] = asyncio.ensure_future(self._ask(conversation, response, principle, order))
        return await asyncio.shield(self._scores[key])

    async def _ask(self, conversation: Messages, response: str, principle: PreferencePrinciple,
                   order: str) -> OptionScore:
        options = YES_NO if order == "AB" else YES_NO[::-1]
        answer_start = render("pointwise_answer.j2", self.settings.template_dir)
        messages: Messages = []
        for example in principle.examples:  # worked answers first, asked the same way round
            messages += [{"role": "user", "content": self._question([{"role": "user", "content": example.prompt}],
                                                                    example.response, principle, options)},
                         {"role": "assistant", "content": f"{answer_start} {example.answer}"}]
        messages += [{"role": "user", "content": self._question(conversation, response, principle, options)},
                     {"role": "assistant", "content": answer_start}]
        self.calls += 1
        scored = await self.engine.generate(
            messages, Sampling(max_tokens=1, temperature=0, logprobs=self.settings.top_logprobs), continue_final=True)
        if not scored.top_logprobs:
            raise RuntimeError("the engine returned no log-probabilities for the judge's answer")
        yes = score_options(scored.top_logprobs[0], self.option_ids, YES_NO)
        if principle.bad_answer == "Yes":
            return yes
        return OptionScore(yes.logprob_b, yes.logprob_a, yes.mass, 1.0 - yes.p_a, yes.bounded)

    def _question(self, conversation: Messages, response: str, principle: PreferencePrinciple,
                  options: tuple[str, str]) -> str:
        return render("pointwise.j2", self.settings.template_dir, conversation=conversation, response=response,
                      question=principle.question, options=options)

    async def unsafe_probability(self, conversation: Messages, response: str) -> float | None:
        """P(the response is harmful) from `harm_principle`, the mean of both answer orders; None unless both
        orders answered with enough Yes/No mass (one order alone carries its position bias)."""
        principle = self.harm_principle()
        scores = await asyncio.gather(*(self.bad_probability(conversation, response, principle, o) for o in ORDERS))
        if any(s.mass < self.settings.min_option_mass for s in scores):
            return None
        return sum(s.p_a for s in scores) / len(scores)

    async def contrast_score(self, conversation: Messages, response: str, contrast: Contrast) -> float:
        """log P(response | `contrast.follows`) - log P(response | `contrast.breaks`) per token of the response's
        turn, each a system prompt before the conversation (merged with its own system message); cached by
        content. Per token, not summed: a sum grows with the length, and so would the label's confidence."""
        key = hashlib.sha256(json.dumps(["contrast", conversation, response, contrast.follows, contrast.breaks],
                                        ensure_ascii=False).encode()).hexdigest()
        if key not in self._scores:
            self._scores[key] = asyncio.ensure_future(self._contrast(conversation, response, contrast))
        return await asyncio.shield(self._scores[key])

    async def _contrast(self, conversation: Messages, response: str, contrast: Contrast) -> float:
        def told(system: str) -> Messages:
            if conversation and conversation[0]["role"] == "system":
                return [{"role": "system", "content": f"{system}\n\n{conversation[0]['content']}"}, *conversation[1:]]
            return [{"role": "system", "content": system}, *conversation]

        self.calls += 2
        (keeps, count), (breaks, _) = await asyncio.gather(
            self.engine.response_logprob(told(contrast.follows), response),
            self.engine.response_logprob(told(contrast.breaks), response))
        return (keeps - breaks) / count

    async def contrast_judgement(self, conversation: Messages, first: str, second: str, contrast: Contrast,
                                 order: str) -> Judgement:
        """The contrast of a pair, the same in both orders (it has none): p_first = sigmoid(score_first -
        score_second)."""
        first_score, second_score = await asyncio.gather(self.contrast_score(conversation, first, contrast),
                                                         self.contrast_score(conversation, second, contrast))
        return Judgement(contrast.id, order, True, sigmoid(first_score - second_score), format="contrast",
                         objective=contrast.objective, contrast_first=first_score, contrast_second=second_score)

    async def pointwise_judgement(self, conversation: Messages, first: str, second: str,
                                  principle: PreferencePrinciple, order: str) -> Judgement:
        bad_first, bad_second = await asyncio.gather(self.bad_probability(conversation, first, principle, order),
                                                     self.bad_probability(conversation, second, principle, order))
        mass = min(bad_first.mass, bad_second.mass)
        details = {"harm_first": bad_first.p_a, "harm_second": bad_second.p_a, "mass": mass,
                   "format": "pointwise", "objective": principle.objective}
        if mass < self.settings.min_option_mass:
            return Judgement(principle.id, order, False, None, reason=f"Yes/No tokens carry only {mass:.3f} of the "
                             f"probability (minimum {self.settings.min_option_mass})", **details)
        return Judgement(principle.id, order, True, 0.5 + (bad_second.p_a - bad_first.p_a) / 2, **details)

    # --- one pair -------------------------------------------------------------------------------------------
    async def compare(self, conversation: Messages, first: str, second: str, principles: list[PreferencePrinciple],
                      critiques: list[str] = ()) -> tuple[list[Judgement], PairLabel]:
        """Every (principle, order) judgement of one pair, submitted together, and the pair's label. `critiques`
        (where the pair's run has them) are shown to debaters under `--protocol debate|consultancy`."""
        jobs = []
        for principle in principles:
            for order in ORDERS:
                if principle.format == "pointwise":
                    jobs.append(self.pointwise_judgement(conversation, first, second, principle, order))
                elif principle.format == "contrast":
                    jobs.append(self.contrast_judgement(conversation, first, second, principle, order))
                elif self.settings.protocol != "direct":
                    from cai.judge.debate import argued_judgement

                    jobs.append(argued_judgement(self, conversation, first, second, principle, order, critiques))
                else:
                    jobs.append(self._pairwise(conversation, first, second, principle, order))
        judgements = list(await asyncio.gather(*jobs))
        return judgements, self.label(judgements)

    async def _pairwise(self, conversation: Messages, first: str, second: str, principle: PreferencePrinciple,
                        order: str) -> Judgement:
        self.calls += 1
        judgement = await judge_once(self.engine, conversation, first, second, principle, order, self.settings,
                                     self.option_ids, self.examples)
        judgement.format, judgement.objective = "pairwise", principle.objective
        return judgement

    def label(self, judgements: list[Judgement]) -> PairLabel:
        """The pair's label from its judgements by the combiner's rule (`mean`: the mean over complete principles,
        as `aggregate` computes it; `harm-first` or `logistic` over the hybrid parts), then its calibration and
        abstention. `consistent`: whether the label's two presentation orders alone pick the same winner. Validity
        counts the questions only: the contrast joins a label, it never makes one on its own."""
        base = aggregate([j for j in judgements if j.format != "contrast"], self.min_principles)
        if not base.valid:
            return base
        parts = parts_of(judgements)
        p, consistent = self.combiner.label(parts)
        hybrid = self.settings.judge_format == "hybrid"
        consistency = (None if consistent is None else float(consistent)) if hybrid else base.position_consistency
        return PairLabel(True, p, consistency, base.n_valid, base.n_principles, base.n_unpaired,
                         p_raw=self.combiner.raw_of(parts), abstain=self.combiner.abstains(p, consistent, self.combiner.margin(parts)),
                         parts=parts.to_dict(), consistent=consistent)


def parts_of(judgements: list[Judgement]) -> Parts:
    """The hybrid parts per order, from the principles judged validly in both orders."""
    by_principle: dict[str, dict[str, Judgement]] = {}
    for j in judgements:
        if j.valid:
            by_principle.setdefault(j.principle_id, {})[j.order] = j
    values: dict[str, dict[str, list[float]]] = {name: {o: [] for o in ORDERS}
                                                 for name in ("harm", "help", "pair", "contrast", "mean")}
    for orders in by_principle.values():
        if len(orders) < 2:
            continue  # one order alone carries its position bias
        for order, j in orders.items():
            if j.format != "contrast":  # the mean rule is aggregate's mean of the questions
                values["mean"][order].append(j.p_first)
            if j.format == "pointwise":  # log-odds: a small judge's answers move little, but consistently
                name = "help" if j.objective == "helpful" else "harm"
                values[name][order].append(logit(j.harm_second, POINTWISE_CLIP) - logit(j.harm_first, POINTWISE_CLIP))
            elif j.format == "contrast":
                values["contrast"][order].append(j.contrast_first - j.contrast_second)
            else:
                values["pair"][order].append(logit(j.p_first))
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return Parts(**{name: {o: mean(v[o]) for o in ORDERS} for name, v in values.items()})


def make_judge(engine: Engine, config: Any, constitution: Constitution, combiner: Combiner | None = None,
               examples: Messages = (), debaters: Engine | None = None) -> Judge:
    """The judge of a `JudgeConfig` (or any settings object with the judge's fields)."""
    from cai.judge.compare import settings_of

    return Judge(engine, settings_of(config), constitution, combiner, examples,
                 getattr(config, "min_valid_principles", 1), debaters)

