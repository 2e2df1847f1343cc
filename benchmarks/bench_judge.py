"""Benchmark: `cai` judgements/s against a plain vLLM call over the same prompts with max_tokens=1, in one run.

    .venv/bin/python benchmarks/bench_judge.py [--pairs 16] [--principles 2] [--repeats 2]

Judging is prefill-only: every (pair, principle, order) is one forward pass. The baseline renders exactly the
prompts `cai` sends and submits them all at once straight to `AsyncLLM.generate` with one output token and
top-20 log-probabilities; `cai` runs `judge_pair` for every pair concurrently (template rendering, option-token
scoring, aggregation included). Same engine, prefix cache reset before each run, runs alternating.
Prints a JSON line with judgements/s of each and the ratio (target >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

from cai.constitution import load_constitution
from cai.engines import EngineConfig, create_engine
from cai.judge import JudgeSettings, judge_messages, judge_pair, option_token_ids
from cai.pairs import pairs_from_file
from cai.resources import data_dir


def jobs(pairs, constitution, principles_per_pair):
    for pair in pairs:
        principles = constitution.sample_preference_principles(random.Random(f"0:{pair.id}"), principles_per_pair)
        yield pair, principles


async def plain(engine, work, settings) -> tuple[int, float]:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=0, logprobs=settings.top_logprobs)
    prompts = []
    for pair, principles in work:
        for p in principles:
            for a, b in ((pair.first, pair.second), (pair.second, pair.first)):
                messages = judge_messages(pair.prompt, p, a, b, settings)
                messages.append({"role": "assistant", "content": "The answer is ("})
                prompts.append(engine.render(messages, continue_final=True))

    async def one(i, ids):
        async for _ in engine._engine.generate({"prompt_token_ids": ids}, params, request_id=f"plain-{i}"):
            pass

    start = time.monotonic()
    await asyncio.gather(*(one(i, ids) for i, ids in enumerate(prompts)))
    return len(prompts), time.monotonic() - start


async def with_cai(engine, work, settings, option_ids) -> tuple[int, float]:
    start = time.monotonic()
    results = await asyncio.gather(*(judge_pair(engine, pair.prompt, pair.first, pair.second, principles, settings,
                                                option_ids) for pair, principles in work))
    return sum(len(j) for j, _ in results), time.monotonic() - start


async def main(args: argparse.Namespace) -> dict:
    engine = create_engine(EngineConfig(max_model_len=2048))
    constitution = load_constitution("harmless")
    pairs, _ = pairs_from_file(data_dir("prompts") / "judge-eval.jsonl", args.pairs)
    work = list(jobs(pairs, constitution, args.principles))
    settings = JudgeSettings()
    option_ids = option_token_ids(engine.tokenizer)
    await plain(engine, work[:2], settings)  # warm-up
    rates = {"plain": [], "cai": []}
    for _ in range(args.repeats):
        await engine._engine.reset_prefix_cache()
        n, seconds = await plain(engine, work, settings)
        rates["plain"].append(n / seconds)
        await engine._engine.reset_prefix_cache()
        n, seconds = await with_cai(engine, work, settings, option_ids)
        rates["cai"].append(n / seconds)
    await engine.close()
    plain_rate = sum(rates["plain"]) / len(rates["plain"])
    cai_rate = sum(rates["cai"]) / len(rates["cai"])
    return {"benchmark": "judge", "judgements": len(work) * args.principles * 2,
            "plain_vllm_judgements_per_s": round(plain_rate, 2), "cai_judgements_per_s": round(cai_rate, 2),
            "ratio": round(cai_rate / plain_rate, 3), "runs": rates}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--principles", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
