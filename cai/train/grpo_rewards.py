"""The rewards a `cai train grpo` run adds up: the constitution's judge (`cai/judge/reward.py`) and any reward
models (`--reward-model`), each with its weight (`--reward-weights`, the constitution's first).

    rewards = Rewards.from_config(config)
    total, by_source, by_principle = rewards.score(prompts, texts)   # lists per completion
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Score = Callable[[list[list[dict]], list[str]], list[float]]


class Rewards:
    def __init__(self, sources: list[tuple[str, Score, float]], constitution: Any = None):
        self.sources = sources
        self.constitution = constitution
        """The `ConstitutionReward` among the sources, whose per-principle scores are logged."""

    @classmethod
    def from_config(cls, config: Any) -> Rewards:
        from cai.train.scoring import make_scorer

        sources: list[tuple[str, Score, float]] = []
        weights = list(config.reward_weights or [1.0] * (int(config.constitution_reward) + len(config.reward_model)))
        constitution = None
        if config.constitution_reward:
            from cai.judge.reward import ConstitutionReward

            constitution = ConstitutionReward.create(mode=config.reward_mode, weights=config.weights_by_principle,
                                                     **judge_options(config))
            sources.append(("constitution", constitution, weights.pop(0)))
        for i, path in enumerate(config.reward_model):
            scorer = make_scorer(path, batch_size=config.batch_size, trust_remote_code=config.trust_remote_code)
            sources.append((f"rm-{i}", scorer.score, weights.pop(0)))
        return cls(sources, constitution)

    def score(self, prompts: list[list[dict]], texts: list[str]) -> tuple[list[float], dict[str, list[float]],
                                                                           dict[str, list[float | None]]]:
        """The weighted sum per completion, each source's own scores, and the judge's per-principle scores."""
        by_source = {name: list(score(prompts, texts)) for name, score, _ in self.sources}
        total = [sum(weight * by_source[name][i] for name, _, weight in self.sources) for i in range(len(texts))]
        principles = dict(self.constitution.last_principle_scores) if self.constitution is not None else {}
        return total, by_source, principles

    def describe(self) -> dict[str, Any]:
        return {name: {"weight": weight, **({"judge": self.constitution.judge.engine.model_id,
                                              "mode": self.constitution.mode,
                                              "principles": sorted(self.constitution.weights)}
                                             if name == "constitution" else {})}
                for name, _, weight in self.sources}

    def close(self) -> None:
        if self.constitution is not None:
            self.constitution.close()


def judge_options(config: Any) -> dict[str, Any]:
    """The constitution reward's judge, as `ConstitutionReward.create` and `.configs` take it."""
    return dict(constitution=config.constitution, model=config.judge, base_urls=config.judge_base_urls,
                principles=config.reward_principles, judge_format=config.judge_format,
                calibration=config.judge_calibration, check=config.judge_check, seed=config.seed,
                gpu_memory_utilization=config.judge_gpu_memory_utilization)
