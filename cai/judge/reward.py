"""The constitution as a reward function: `cai`'s judge scores completions for online RL (`cai train grpo`) and for
any trainer that takes TRL's `reward_funcs` (`f(prompts, completions, **columns) -> list[float]`).

    reward = ConstitutionReward.create("harmless")                     # the embedded judge, its check and fit
    reward = ConstitutionReward.create("mine.yaml", model="openai/llama70b", base_urls=["http://judge:8000/v1"])
    trainer = trl.GRPOTrainer(model=..., reward_funcs=reward, ...)     # sync; `reward.async_call` for async
    reward(["How do I pick a lock?"], ["I can't help with that."])     # -> [0.9]  (log-odds)
    reward.last_principle_scores                                       # {"harmful": [0.93], "specific": [0.12]}

`pointwise` (the default): each completion is asked every pointwise principle of the constitution on its own, in
both answer orders (Yes/No swapped), exactly as `cai judge` asks them; a principle's score is P(the response
complies) = 1 - P(bad answer), the mean of both orders, and counts only when both orders answered with enough
Yes/No mass. The reward is the judge's combination and calibration (the fit of `cai judge`'s check, or
`--calibration`) applied to the completion against a neutral response (P(bad) = 0.5 for every principle): the
harm and help parts are weighted means of -logit(P(bad)) with the principles' `weights`, and the reward is the
calibrated log-odds that this completion beats a coin-flip answer (0 = no better, sigmoid(reward) the
probability; a completion that no principle could read gets 0). Log-odds, not the probability: with a fitted
combination the probability of clear answers piles up at 0.99-0.999 (quickstart-grpo logged 0.990-0.999 on every
step), where a group's differences shrink to rounding; the log-odds keep them whole and sit on the scale of a
Bradley-Terry reward model's score, which `--reward-model` adds. A constitution with no pointwise principle is
asked the harm question. `group`: each completion's mean win probability against the other completions of its
prompt (the group), from the judge's full pairwise label in both orders (`principles` sampled per group, seeded).

Scores are cached by (prompt, completion): the same completion drawn twice, or scored again for logging, costs
nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from cai.judge.combine import ORDERS, Parts, logit

POINTWISE_CLIP = 0.001


def _messages(prompt: Any) -> list[dict[str, str]]:
    """A prompt as chat messages (TRL passes strings, or message lists for conversational data)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def _text(completion: Any) -> str:
    """A completion as text (TRL passes strings, or one assistant message in a list)."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if m.get("role", "assistant") == "assistant")


class ConstitutionReward:
    """A reward function from a constitution and a judge; see the module docstring."""

    __name__ = "constitution_reward"  # trainers name the logged reward after this

    def __init__(self, judge: Any, mode: str = "pointwise", weights: dict[str, float] | None = None,
                 principles: int = 4, seed: int = 0, loop: asyncio.AbstractEventLoop | None = None,
                 owned_engine: Any = None):
        if mode not in ("pointwise", "group"):
            raise ValueError(f"reward mode {mode!r}: use pointwise or group")
        self.judge, self.mode, self.principles, self.seed = judge, mode, principles, seed
        self.pointwise = [p for p in judge.constitution.preference_principles if p.format == "pointwise"]
        if not self.pointwise:
            from cai.judge.judge import legacy_pointwise

            self.pointwise = [legacy_pointwise(judge.settings)]
        known = {p.id for p in judge.constitution.preference_principles} | {p.id for p in self.pointwise}
        unknown = sorted(set(weights or {}) - known)
        if unknown:
            raise ValueError(f"reward weights for principles the constitution does not have: {', '.join(unknown)}")
        self.weights = {p.id: (weights or {}).get(p.id, 1.0) for p in self.pointwise}
        self._loop = loop
        self._engine = owned_engine
        self._cache: dict[str, tuple[float, dict[str, float | None]]] = {}
        self.last_principle_scores: dict[str, list[float | None]] = {}
        self.calls = 0
        """Completions scored (cached ones not counted)."""

    @classmethod
    def create(cls, constitution: str = "harmless", model: str | None = None, base_urls: Sequence[str] = (),
               mode: str = "pointwise", weights: dict[str, float] | None = None, principles: int = 4,
               judge_format: str = "hybrid", calibration: str | None = None, check: bool = True, seed: int = 0,
               gpu_memory_utilization: float | None = None) -> ConstitutionReward:
        """A reward with its own judge engine on its own event loop (the embedded model, a path, or
        `openai/<name>` served at `base_urls`), prepared as `cai judge` prepares it (check, fit, calibration)."""
        from cai.engines import create_engine
        from cai.judge.check import prepare_judge

        engine_config, config = cls.configs(constitution, model, base_urls, principles, judge_format, calibration,
                                            check, seed, gpu_memory_utilization)
        loop = asyncio.new_event_loop()

        async def start():
            engine = create_engine(engine_config)
            return engine, (await prepare_judge(engine, config))[0]

        engine, judge = loop.run_until_complete(start())
        return cls(judge, mode, weights, principles, seed, loop, engine)

    @staticmethod
    def configs(constitution: str = "harmless", model: str | None = None, base_urls: Sequence[str] = (),
                principles: int = 4, judge_format: str = "hybrid", calibration: str | None = None,
                check: bool = True, seed: int = 0, gpu_memory_utilization: float | None = None) -> tuple[Any, Any]:
        """(engine config, `cai judge` settings) of the judge `create` starts: what its check is keyed by."""
        from cai.config import JudgeConfig
        from cai.engines import EngineConfig

        engine_config = EngineConfig(model=model, base_urls=list(base_urls),
                                     gpu_memory_utilization=gpu_memory_utilization)
        return engine_config, JudgeConfig(source="-", constitution=constitution, principles_per_pair=principles,
                                          seed=seed, engine=engine_config, judge_format=judge_format,
                                          calibration=calibration, check_judge=check)

    # --- TRL's signature ------------------------------------------------------------------------------------
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(self.score(prompts, completions))

    async def async_call(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
        """The same, for trainers that await their reward functions (a judge behind servers)."""
        return await self.score(prompts, completions)

    # --- scoring --------------------------------------------------------------------------------------------
    async def score(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[float]:
        """One reward per completion; per-principle scores of this call in `last_principle_scores`."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        conversations, texts = [_messages(p) for p in prompts], [_text(c) for c in completions]
        if self.mode == "group":
            return await self._group(conversations, texts)
        scored = await asyncio.gather(*(self._pointwise(c, t) for c, t in zip(conversations, texts, strict=True)))
        self.last_principle_scores = {p.id: [s[1][p.id] for s in scored] for p in self.pointwise}
        return [s[0] for s in scored]

    def _key(self, *parts: Any) -> str:
        return hashlib.sha256(json.dumps([self.mode, *parts], ensure_ascii=False).encode()).hexdigest()

    async def _pointwise(self, conversation: list[dict], text: str) -> tuple[float, dict[str, float | None]]:
        key = self._key(conversation, text)
        if key not in self._cache:
            self.calls += 1
            per_principle: dict[str, float | None] = {}
            values: dict[str, dict[str, list[tuple[float, float]]]] = {
                name: {o: [] for o in ORDERS} for name in ("harm", "help", "mean")}
            for principle in self.pointwise:
                scores = await asyncio.gather(*(self.judge.bad_probability(conversation, text, principle, o)
                                                for o in ORDERS))
                if any(s.mass < self.judge.settings.min_option_mass for s in scores):
                    per_principle[principle.id] = None
                    continue
                per_principle[principle.id] = 1.0 - sum(s.p_a for s in scores) / len(scores)
                part = "help" if principle.objective == "helpful" else "harm"
                weight = self.weights[principle.id]
                for order, s in zip(ORDERS, scores, strict=True):  # against a neutral answer (P(bad) = 0.5)
                    values[part][order].append((weight, -logit(s.p_a, POINTWISE_CLIP)))
                    values["mean"][order].append((weight, 0.5 + (0.5 - s.p_a) / 2))
            parts = Parts(**{name: {o: _weighted(v[o]) for o in ORDERS} for name, v in values.items()})
            valid = any(s is not None for s in per_principle.values())
            self._cache[key] = (self.judge.combiner.log_odds(parts) if valid else 0.0, per_principle)
        return self._cache[key]

    async def _group(self, conversations: list[list[dict]], texts: list[str]) -> list[float]:
        from cai.constitution import sample_rng

        groups: dict[str, list[int]] = {}
        for i, conversation in enumerate(conversations):
            groups.setdefault(self._key(conversation), []).append(i)
        rewards = [0.5] * len(texts)
        for group_key, members in groups.items():
            if len(members) < 2:
                continue  # alone in its group: nothing to compare with
            principles = self.judge.sample(sample_rng(self.seed, group_key), self.principles)
            pairs = [(i, j) for a, i in enumerate(members) for j in members[a + 1:]]
            labels = await asyncio.gather(*(self._pair(conversations[i], texts[i], texts[j], principles)
                                            for i, j in pairs))
            wins: dict[int, list[float]] = {i: [] for i in members}
            for (i, j), p in zip(pairs, labels, strict=True):
                if p is not None:
                    wins[i].append(p)
                    wins[j].append(1.0 - p)
            for i in members:
                rewards[i] = sum(wins[i]) / len(wins[i]) if wins[i] else 0.5
        self.last_principle_scores = {}
        return rewards

    async def _pair(self, conversation: list[dict], first: str, second: str, principles: list) -> float | None:
        key = self._key(conversation, first, second, [p.id for p in principles])
        if key not in self._cache:
            self.calls += 1
            label = (await self.judge.compare(conversation, first, second, principles))[1]
            self._cache[key] = (label.p_first if label.valid else None, {})
        return self._cache[key][0]

    def close(self) -> None:
        """Shut down the judge engine this reward started (safe to call twice)."""
        from cai.engines import close_on_loop

        if self._loop is not None:
            close_on_loop(self._loop, self._engine)
        self._engine = None


def _weighted(pairs: list[tuple[float, float]]) -> float | None:
    total = sum(w for w, _ in pairs)
    return sum(w * v for w, v in pairs) / total if total else None
