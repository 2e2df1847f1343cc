"""The AI judge inside a training run's evaluation: how often the constitution's judge prefers the policy's
held-out answers now over its answers at step 0 (`cai train ppo --eval-judge default|MODEL`).

Beside the proxy reward at each evaluation this shows over-optimisation (Gao et al. 2022): a reward-model score
that keeps climbing while the judge's win-rate stalls or falls. The judge is `cai judge`'s (its format, its cached
check and the combination fitted there, or a calibration file), on its own engine and event loop in the training
process (`principles` principles per comparison, the same seed per prompt).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any


class EvalJudge:
    def __init__(self, model: str, baseline_file: Path, constitution: str = "harmless", principles: int = 2,
                 seed: int = 0, gpu_memory_utilization: float | None = None, judge_format: str = "hybrid",
                 calibration: str | None = None, check: bool = True):
        from cai.config import JudgeConfig
        from cai.engines import EngineConfig, create_engine
        from cai.judge.check import prepare_judge

        self.loop = asyncio.new_event_loop()
        engine_config = EngineConfig(model=None if model == "default" else model,
                                     gpu_memory_utilization=gpu_memory_utilization)
        config = JudgeConfig(source="-", constitution=constitution, principles_per_pair=principles, seed=seed,
                             engine=engine_config, judge_format=judge_format, calibration=calibration,
                             check_judge=check)

        async def start():
            engine = create_engine(engine_config)
            return engine, *(await prepare_judge(engine, config))

        self.engine, self.judge, quality, self.source = self.loop.run_until_complete(start())
        self.quality = None if quality is None else {k: v for k, v in quality.items() if k != "combiner"}
        self.principles, self.seed, self.baseline_file = principles, seed, baseline_file

    def describe(self) -> dict[str, Any]:
        """What the evaluation judge is, for the run's manifest: model, format, calibration and its check."""
        return {"model": self.engine.model_id, "format": self.judge.settings.judge_format,
                "calibration": self.source, "combiner": self.judge.combiner.to_dict(), "check": self.quality}

    def baseline(self, prompts: list[list[dict]], answers: list[str]) -> list[str] | None:
        """The step-0 answers (kept on disk, so a resumed run compares with the same ones); the first call stores
        `answers` and returns None."""
        if self.baseline_file.is_file():
            return json.loads(self.baseline_file.read_text())["answers"]
        self.baseline_file.write_text(json.dumps({"prompts": prompts, "answers": answers}))
        return None

    def against_step_zero(self, examples: list[dict], answers: list[str]) -> dict[str, float]:
        """The held-out answers' win-rate against the step-0 ones; at step 0 the answers are stored and {} returned."""
        prompts = [e["messages"] for e in examples]
        baseline = self.baseline(prompts, answers)
        return {} if baseline is None else self.win_rate(prompts, answers, baseline)

    def win_rate(self, prompts: list[list[dict]], answers: list[str], baseline: list[str]) -> dict[str, float]:
        from cai.constitution import sample_rng

        objective = "harmless" if any(p.objective == "harmless"
                                      for p in self.judge.constitution.preference_principles) else None

        async def one(i: int):
            principles = self.judge.sample(sample_rng(self.seed, f"eval-judge/{i}"), self.principles, objective)
            return (await self.judge.compare(prompts[i], answers[i], baseline[i], principles))[1]

        async def run():
            return await asyncio.gather(*(one(i) for i in range(len(answers))))

        labels = [label for label in self.loop.run_until_complete(run()) if label.valid]
        if not labels:
            return {}
        return {"eval/judge_win_rate": sum(label.p_first for label in labels) / len(labels),
                "eval/judge_valid": float(len(labels))}

    def close(self) -> None:
        """Shut the engine down (safe to call twice)."""
        from cai.engines import close_on_loop

        close_on_loop(self.loop, self.engine)
        self.engine = None


def response_strings(tokenizer: Any, batch: dict) -> list[str]:
    """Each rollout's response text from exactly its own tokens."""
    lengths = batch["response_mask"].sum(1).long().tolist()
    return [tokenizer.decode(batch["response_ids"][i, :n].tolist(), skip_special_tokens=True).strip()
            for i, n in enumerate(lengths)]


def eval_judge_for(config: Any, out: Path, main_process: bool, has_examples: bool) -> EvalJudge | None:
    """A sampling trainer's `--eval-judge` (PPO, GRPO): on the main process, when there are held-out prompts."""
    if not (config.eval_judge and has_examples and main_process):
        return None
    return EvalJudge(config.eval_judge, out / "eval_judge_baseline.json", config.eval_judge_constitution,
                     seed=config.seed, gpu_memory_utilization=config.eval_judge_gpu_memory_utilization,
                     judge_format=config.eval_judge_format, calibration=config.eval_judge_calibration,
                     check=config.eval_judge_check)
