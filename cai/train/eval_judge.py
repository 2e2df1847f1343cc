"""The AI judge inside a training run's evaluation: how often the constitution's judge prefers the policy's
held-out answers now over its answers at step 0 (`cai train ppo --eval-judge default|MODEL`).

Beside the proxy reward at each evaluation this shows over-optimisation (Gao et al. 2022): a reward-model score
that keeps climbing while the judge's win-rate stalls or falls. The judge runs on its own engine and event loop
in the training process (both orders, `principles` principles per comparison, the same seed per prompt).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any


class EvalJudge:
    def __init__(self, model: str, baseline_file: Path, constitution: str = "harmless", principles: int = 2,
                 seed: int = 0, gpu_memory_utilization: float | None = None):
        from cai.constitution import load_constitution
        from cai.engines import EngineConfig, create_engine

        self.loop = asyncio.new_event_loop()
        config = EngineConfig(model=None if model == "default" else model,
                              gpu_memory_utilization=gpu_memory_utilization)

        async def start():
            return create_engine(config)

        self.engine = self.loop.run_until_complete(start())
        self.constitution = load_constitution(constitution)
        self.principles, self.seed, self.baseline_file = principles, seed, baseline_file

    def baseline(self, prompts: list[list[dict]], answers: list[str]) -> list[str] | None:
        """The step-0 answers (kept on disk, so a resumed run compares with the same ones); the first call stores
        `answers` and returns None."""
        if self.baseline_file.is_file():
            return json.loads(self.baseline_file.read_text())["answers"]
        self.baseline_file.write_text(json.dumps({"prompts": prompts, "answers": answers}))
        return None

    def win_rate(self, prompts: list[list[dict]], answers: list[str], baseline: list[str]) -> dict[str, float]:
        from cai.constitution import sample_rng
        from cai.judge import JudgeSettings, judge_pair, option_token_ids

        ids = option_token_ids(self.engine.local_tokenizer())
        principles = self.constitution.objective_principles("harmless") if any(
            p.objective == "harmless" for p in self.constitution.preference_principles) else None

        async def one(i: int):
            rng = sample_rng(self.seed, f"eval-judge/{i}")
            chosen = (rng.sample(principles, min(self.principles, len(principles))) if principles else
                      self.constitution.sample_preference_principles(rng, self.principles))
            return (await judge_pair(self.engine, prompts[i], answers[i], baseline[i], chosen, JudgeSettings(),
                                     ids))[1]

        async def run():
            return await asyncio.gather(*(one(i) for i in range(len(answers))))

        labels = [label for label in self.loop.run_until_complete(run()) if label.valid]
        if not labels:
            return {}
        return {"eval/judge_win_rate": sum(label.p_first for label in labels) / len(labels),
                "eval/judge_valid": float(len(labels))}

    def close(self) -> None:
        """Shut the engine down (safe to call twice)."""
        if self.engine is not None:
            self.loop.run_until_complete(self.engine.close())
            self.engine = None
        if not self.loop.is_closed():
            self.loop.close()


def response_strings(tokenizer: Any, batch: dict) -> list[str]:
    """Each rollout's response text from exactly its own tokens."""
    lengths = batch["response_mask"].sum(1).long().tolist()
    return [tokenizer.decode(batch["response_ids"][i, :n].tolist(), skip_special_tokens=True).strip()
            for i, n in enumerate(lengths)]
