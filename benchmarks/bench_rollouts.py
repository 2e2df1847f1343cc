"""Benchmark: rollout sampling on vLLM (`VLLMRollouts`, what `cai train ppo --rollouts vllm` and `cai train
online-dpo` use) against `model.generate` (`TransformersRollouts`, PPO's default), and the two ways to give the
vLLM engine new weights.

    .venv/bin/python benchmarks/bench_rollouts.py [--prompts 32] [--max-new-tokens 64] [--repeats 2]

Same model (the embedded SmolLM2-135M unless --model), same red-team prompts, same length cap, same sampling
(temperature 0.7, full vocabulary), float32. Tokens are the response tokens each sampler returned (up to and
including the end token); time is the wall time of `generate` (engine start and model loading excluded, both
printed). Then the weight sync after a PPO step: `inplace` (save the policy, `reload_weights` in the running
engine) against `reload` (save, start a fresh engine). Prints one JSON line, the ratio from this one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch

    from cai.inputs import PromptItem, load_prompts
    from cai.train.config import TrainConfig
    from cai.train.modeling import load_causal_lm, load_tokenizer
    from cai.train.rollouts import TransformersRollouts
    from cai.train.vllm_rollouts import VLLMRollouts

    torch.manual_seed(0)
    tokenizer, path = load_tokenizer(args.model)
    items = [i for i in load_prompts("red-team", limit=args.prompts) if isinstance(i, PromptItem)]
    prompts = [tokenizer.apply_chat_template(i.messages, add_generation_prompt=True, tokenize=True,
                                             return_dict=False) for i in items]
    policy = load_causal_lm(path, TrainConfig(data="-", out="-"), torch.float32).eval()

    def timed(sampler) -> dict:
        rates, lengths = [], []
        for _ in range(args.repeats):
            started = time.monotonic()
            out = sampler.generate(prompts)
            seconds = time.monotonic() - started
            tokens = sum(len(r) for r in out)
            rates.append(tokens / seconds)
            lengths.append(tokens / len(out))
        return {"tokens_per_s": statistics.fmean(rates), "runs": [round(r, 1) for r in rates],
                "mean_response_tokens": statistics.fmean(lengths)}

    result: dict = {"model": args.model or "SmolLM2-135M-Instruct (embedded)", "prompts": len(prompts),
                    "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                    "threads": torch.get_num_threads()}
    result["transformers"] = timed(TransformersRollouts(policy, tokenizer, args.max_new_tokens, args.temperature))
    settings = {"gpu_memory_utilization": 0.3, "max_model_len": 1024}
    started = time.monotonic()
    vllm = VLLMRollouts(path, tokenizer, args.max_new_tokens, args.temperature, engine_settings=settings,
                        policy=policy)
    result["vllm_engine_start_s"] = round(time.monotonic() - started, 1)
    try:
        vllm.generate(prompts[:2])  # first request warms the engine up
        result["vllm"] = timed(vllm)
        with torch.no_grad():  # a changed policy, as after a PPO step
            for p in policy.parameters():
                p.add_(1e-4 * torch.randn_like(p))
        vllm.sync_weights(policy)
        vllm.sync_weights(policy)
        result["sync_inplace_s"] = round(statistics.fmean(vllm.sync_seconds), 2)
        vllm.sync, vllm.sync_seconds = "reload", []
        vllm.sync_weights(policy)
        result["sync_reload_s"] = round(vllm.sync_seconds[0], 2)
    finally:
        vllm.close()
    result["vllm_over_transformers"] = round(result["vllm"]["tokens_per_s"] / result["transformers"]["tokens_per_s"], 2)
    result["reload_over_inplace"] = round(result["sync_reload_s"] / max(result["sync_inplace_s"], 1e-9), 1)
    out = REPO / "benchmarks" / "results" / "rollouts.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
