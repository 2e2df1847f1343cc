"""Benchmark: generated tokens/s through one local `vllm serve` (the OpenAI engine) against the in-process
engine, on the same requests, in one run.

    .venv/bin/python benchmarks/bench_openai.py [--prompts 32] [--max-new-tokens 64] [--repeats 2]

The server runs the embedded model with the same CPU settings as the in-process engine. Runs alternate, each
with a cold prefix cache (the prompts differ per repeat). Prints a JSON line with both rates and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cai.engines import EngineConfig, Sampling, create_engine  # noqa: E402
from cai.inputs import load_prompts  # noqa: E402
from tests.conftest import start_vllm_server, stop_server, wait_for_server  # noqa: E402
from tests.fault_proxy import free_port  # noqa: E402

SETTINGS = {"gpu_memory_utilization": 0.2, "max_model_len": 2048}


async def rate(engine, prompts, max_tokens) -> float:
    start = time.monotonic()
    outs = await asyncio.gather(*(engine.generate(p, Sampling(max_tokens=max_tokens, temperature=0.7))
                                  for p in prompts))
    return sum(o.completion_tokens for o in outs) / (time.monotonic() - start)


async def main(args) -> dict:
    port = free_port()
    server = start_vllm_server(port)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        wait_for_server(url, server)
        remote = create_engine(EngineConfig(model="openai/smollm2", base_urls=[url]))
        local = create_engine(EngineConfig(**SETTINGS))
        items = load_prompts("red-team") + load_prompts("benign")
        rates = {"server": [], "in_process": []}
        for repeat in range(args.repeats):
            batch = items[repeat * args.prompts: (repeat + 1) * args.prompts]
            prompts = [i.messages for i in batch]
            rates["server"].append(await rate(remote, prompts, args.max_new_tokens))
            rates["in_process"].append(await rate(local, [p + [] for p in prompts], args.max_new_tokens))
        await remote.close()
        await local.close()
    finally:
        stop_server(server)
    server_rate = sum(rates["server"]) / len(rates["server"])
    local_rate = sum(rates["in_process"]) / len(rates["in_process"])
    return {"benchmark": "openai-engine", "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
            "server_tokens_per_s": round(server_rate, 1), "in_process_tokens_per_s": round(local_rate, 1),
            "ratio": round(server_rate / local_rate, 3), "runs": rates}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
