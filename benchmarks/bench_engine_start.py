"""Benchmark: vLLM on the CPU with the model in the engine's own process (`uni`, cai's CPU default) against vLLM's
default there (a separate worker process, `mp`): engine start time, sampling and judge-style scoring, in one run.

    .venv/bin/python benchmarks/bench_engine_start.py [--repeats 2] [--prompts 32]

Each try runs in a fresh Python process (the executor is chosen when vLLM starts), alternating the two settings.
Prints a JSON line with the medians and the ratios uni / mp.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_try(prompts: int) -> dict:
    """Runs inside the child process: start an engine, sample, score; report seconds and rates."""
    sys.path.insert(0, str(ROOT))
    from cai.engines import EngineConfig, Sampling, create_engine
    from cai.inputs import load_prompts

    start = time.monotonic()
    engine = create_engine(EngineConfig())
    started = time.monotonic() - start
    items = load_prompts("red-team") + load_prompts("benign")
    chats = [i.messages for i in items[:prompts]]

    async def work() -> tuple[float, float]:
        t0 = time.monotonic()
        outs = await asyncio.gather(*(engine.generate(c, Sampling(max_tokens=64, temperature=0.7)) for c in chats))
        sampled = sum(o.completion_tokens for o in outs) / (time.monotonic() - t0)
        long_chats = [c[:-1] + [{**c[-1], "content": c[-1]["content"] + " " + o.text + "\nIs this harmful? Yes or No."}]
                      for c, o in zip(chats, outs, strict=True)]
        t1 = time.monotonic()
        scored = await asyncio.gather(*(engine.generate(c, Sampling(max_tokens=1, temperature=0.0, logprobs=5))
                                        for c in long_chats))
        prefill = sum(o.prompt_tokens for o in scored) / (time.monotonic() - t1)
        await engine.close()
        return sampled, prefill

    sampled, prefill = asyncio.run(work())
    return {"start_s": round(started, 1), "sample_tokens_per_s": round(sampled, 1),
            "score_prompt_tokens_per_s": round(prefill, 1)}


def run_child(mode: str, prompts: int) -> dict:
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0" if mode == "uni" else "1"}
    out = subprocess.run([sys.executable, __file__, "--child", "--prompts", str(prompts)], env=env,
                         capture_output=True, text=True, check=True, timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_try(args.prompts)))
        return
    runs: dict[str, list[dict]] = {"mp": [], "uni": []}
    for _ in range(args.repeats):
        for mode in runs:
            runs[mode].append(run_child(mode, args.prompts))
    medians = {mode: {key: statistics.median(r[key] for r in tries) for key in tries[0]} for mode, tries in runs.items()}
    ratios = {key: round(medians["uni"][key] / medians["mp"][key], 3) for key in medians["mp"]}
    print(json.dumps({"benchmark": "engine-start", "prompts": args.prompts, "medians": medians,
                      "ratios_uni_over_mp": ratios, "runs": runs}))


if __name__ == "__main__":
    main()
