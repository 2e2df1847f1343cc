"""Benchmark: judge throughput in labels per second for the pairwise, pointwise and hybrid formats on the same pairs,
in one run, beside a plain vLLM baseline.

    .venv/bin/python benchmarks/bench_judge.py [--pairs 32] [--principles 4] [--repeats 2] [--samples 4]
                                               [--prompts 6] [--out results.json]

Judging is prefill-only: every judgement is one forward pass with one output token. Each format labels the same
shipped check pairs with the same number of principles per pair through `cai`'s `Judge` (template rendering,
option-token scoring, per-response caching, combination included), counting its engine calls. The baseline
renders the pairwise prompts `cai` sends and submits them straight to `AsyncLLM.generate` (max_tokens=1, top-20
log-probabilities): how close `cai`'s pairwise judging comes to the engine's own speed. The prefix cache is reset
before each run; formats alternate within each repeat.

A pointwise principle asks about each response alone, so its cost per label depends on how many pairs share a
response. The check pairs share none (2 responses, 1 pair per prompt). `--samples K` adds the setting of
`cai judge --strategy sampled --pairing all`: K responses sampled by the model for each of `--prompts` red-team
prompts, every pair among them labelled (K(K-1)/2 pairs per prompt), each format on the same pairs. Prints (and
with --out writes) one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from cai.config import JudgeConfig
from cai.constitution import load_constitution, sample_rng
from cai.engines import EngineConfig, create_engine
from cai.judge.compare import JudgeSettings, judge_messages, settings_of
from cai.judge.judge import Judge
from cai.judge.pairs import pairs_from_file
from cai.resources import data_dir

FORMATS = ("pairwise", "pointwise", "hybrid")


async def plain(engine, pairs, principles_per_pair: int, constitution) -> tuple[int, float]:
    """The pairwise prompts of `cai`, straight into the engine: (judgements, seconds)."""
    from vllm import SamplingParams

    settings = JudgeSettings()
    params = SamplingParams(max_tokens=1, temperature=0, logprobs=settings.top_logprobs)
    judge = Judge(engine, settings, constitution)
    prompts = []
    for pair in pairs:
        for p in judge.sample(sample_rng(0, pair.id), principles_per_pair):
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


async def with_cai(engine, pairs, principles_per_pair: int, constitution, judge_format: str) -> dict:
    """Every pair labelled by a fresh `Judge` of `judge_format` (an empty cache): labels/s and calls per label."""
    settings = settings_of(JudgeConfig(source="-", judge_format=judge_format))
    judge = Judge(engine, settings, constitution)
    start = time.monotonic()
    labels = await asyncio.gather(*(judge.compare(p.prompt, p.first, p.second,
                                                  judge.sample(sample_rng(0, p.id), principles_per_pair))
                                    for p in pairs))
    seconds = time.monotonic() - start
    valid = sum(label.valid for _, label in labels)
    return {"labels": len(pairs), "valid": valid, "seconds": seconds, "calls": judge.calls}


async def sampled_setting(engine, prompts: int, samples: int) -> list:
    """All pairs among `samples` responses the model samples for each of the first `prompts` red-team prompts."""
    from cai.engines import Sampling
    from cai.judge.pairs import sampled_pairs

    rows = [json.loads(line) for line in (data_dir("prompts") / "red-team.jsonl").read_text().splitlines()][:prompts]
    pairs = []
    for row in rows:
        messages = [{"role": "user", "content": row["prompt"]}]
        completions = await asyncio.gather(*(engine.generate(messages, Sampling(max_tokens=96, temperature=1.0))
                                             for _ in range(samples)))
        pairs += sampled_pairs(row["id"], messages, [c.text for c in completions], "all")
    return pairs


def summary(rows: list[dict]) -> dict:
    seconds = sum(r["seconds"] for r in rows)
    return {"labels_per_s": round(sum(r["labels"] for r in rows) / seconds, 3),
            "calls_per_label": round(sum(r["calls"] for r in rows) / sum(r["labels"] for r in rows), 2),
            "calls_per_s": round(sum(r["calls"] for r in rows) / seconds, 2)}


async def main(args: argparse.Namespace) -> dict:
    engine = create_engine(EngineConfig(max_model_len=2048))
    constitution = load_constitution("harmless")
    pairs, _ = pairs_from_file(data_dir("prompts") / "judge-eval.jsonl", args.pairs)
    await with_cai(engine, pairs[:2], args.principles, constitution, "hybrid")  # warm-up
    sampled = await sampled_setting(engine, args.prompts, args.samples) if args.samples else []
    settings = [*FORMATS, *(f"sampled-{f}" for f in FORMATS if sampled)]
    runs: dict[str, list] = {"plain": [], **{name: [] for name in settings}}
    for _ in range(args.repeats):
        await engine._engine.reset_prefix_cache()
        n, seconds = await plain(engine, pairs, args.principles, constitution)
        runs["plain"].append({"judgements": n, "seconds": seconds})
        for judge_format in FORMATS:
            await engine._engine.reset_prefix_cache()
            runs[judge_format].append(await with_cai(engine, pairs, args.principles, constitution, judge_format))
            if sampled:
                await engine._engine.reset_prefix_cache()
                runs[f"sampled-{judge_format}"].append(
                    await with_cai(engine, sampled, args.principles, constitution, judge_format))
    await engine.close()
    result = {"benchmark": "judge", "pairs": len(pairs), "principles_per_pair": args.principles,
              "repeats": args.repeats, "runs": runs}
    plain_rate = sum(r["judgements"] for r in runs["plain"]) / sum(r["seconds"] for r in runs["plain"])
    result["plain_vllm_judgements_per_s"] = round(plain_rate, 2)
    for judge_format in FORMATS:
        result[judge_format] = summary(runs[judge_format])
    if sampled:
        result["sampled"] = {"prompts": args.prompts, "samples_per_prompt": args.samples, "pairs": len(sampled),
                             **{f: summary(runs[f"sampled-{f}"]) for f in FORMATS}}
    result["pairwise"]["calls_per_s_vs_plain"] = round(result["pairwise"]["calls_per_s"] / plain_rate, 3)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--principles", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4, help="responses per prompt in the sampled setting (0: off)")
    parser.add_argument("--prompts", type=int, default=6, help="red-team prompts in the sampled setting")
    parser.add_argument("--out", help="also write the result as JSON here")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
