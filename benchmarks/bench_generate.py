"""Benchmark: `cai generate` generated tokens/s against plain vLLM calls doing the same work, in one run.

    .venv/bin/python benchmarks/bench_generate.py [--prompts 32] [--max-new-tokens 64] [--repeats 2]

The baseline is what a hand-written script does with vLLM: the same conversations (few-shot prefix, prompt,
critique request, revision request), sent as one batch per stage straight to `AsyncLLM.generate`, waiting for
each stage to finish before the next. `cai generate` runs each sample as its own chain with no stage barrier.
Both use the same engine instance (prefix cache reset between runs) and sampling settings; the runs alternate
so that machine noise hits both. Prints a JSON line with tokens/s of each and the ratio (target >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time

from cai.config import GenerateConfig
from cai.constitution import load_constitution, sample_rng
from cai.engines import EngineConfig, create_engine
from cai.generate.critique import few_shot_messages
from cai.generate.run import generate
from cai.inputs import load_prompts
from cai.templating import render


async def plain_vllm(engine, prompts, constitution, prefix, max_tokens, seed) -> tuple[int, float]:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.7, top_p=0.95)
    counter = iter(range(10**9))

    async def one(conversation):
        final = None
        async for out in engine._engine.generate({"prompt_token_ids": engine.render(conversation)}, params,
                                                 request_id=f"plain-{next(counter)}"):
            final = out
        return final.outputs[0]

    start = time.monotonic()
    conversations = [prefix + item.messages for item in prompts]
    principles = [constitution.sample_principle(sample_rng(seed, item.id), tuple(item.tags)) for item in prompts]
    tokens = 0
    stages = [("critique.j2", None), ("revision.j2", None)]
    outputs = await asyncio.gather(*(one(c) for c in conversations))  # stage 1: initial responses
    tokens += sum(len(o.token_ids) for o in outputs)
    for template, _ in stages:  # stages 2 and 3, each waiting for the previous one
        conversations = [
            c + [{"role": "assistant", "content": o.text.strip()},
                 {"role": "user", "content": render(template, principle=p)}]
            for c, o, p in zip(conversations, outputs, principles, strict=True)
        ]
        outputs = await asyncio.gather(*(one(c) for c in conversations))
        tokens += sum(len(o.token_ids) for o in outputs)
    return tokens, time.monotonic() - start


async def main(args: argparse.Namespace) -> dict:
    engine = create_engine(EngineConfig(max_model_len=2048))
    constitution = load_constitution("harmless")
    prefix = few_shot_messages(constitution.few_shot)
    prompts = load_prompts("red-team", limit=args.prompts)
    await plain_vllm(engine, prompts[:4], constitution, prefix, 8, 0)  # warm-up
    results = {"plain": [], "cai": []}
    for repeat in range(args.repeats):
        await engine._engine.reset_prefix_cache()
        tokens, seconds = await plain_vllm(engine, prompts, constitution, prefix, args.max_new_tokens, repeat)
        results["plain"].append(tokens / seconds)
        await engine._engine.reset_prefix_cache()
        with tempfile.TemporaryDirectory() as out:
            config = GenerateConfig(limit=args.prompts, rounds=1, seed=repeat, output_dir=out, run_name="bench",
                                    temperature=0.7, top_p=0.95, max_new_tokens={
                                        "initial": args.max_new_tokens, "critique": args.max_new_tokens,
                                        "revision": args.max_new_tokens})
            summary = await generate(config, engine=engine, progress=False)
        results["cai"].append(summary.tokens_per_second)
    await engine.close()
    plain = sum(results["plain"]) / len(results["plain"])
    cai = sum(results["cai"]) / len(results["cai"])
    return {"benchmark": "generate", "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
            "plain_vllm_tokens_per_s": round(plain, 1), "cai_tokens_per_s": round(cai, 1),
            "ratio": round(cai / plain, 3), "runs": results}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
