"""The bundled trainer on a CUDA GPU: reward model, PPO and DPO end to end, float32 against bfloat16 speed (a
ratio measured in the same run), and PPO resume exactness on the GPU.

    python benchmarks/device_trainer_check.py --config-dir .device/smollm2 --out results/

Meant for a GPU machine without a model hub: the policy is SmolLM2-135M's architecture and tokenizer with fresh
random weights (the 64 MiB that travel to the lent GPU do not hold the real weights), so what it shows is that
every code path runs on CUDA, how fast, and that the losses move; not what the model learns.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch


def build_model(config_dir: Path, out: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir), dtype=torch.float32)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(out)
    for name in ("generation_config.json", "chat_template.jinja"):
        if (config_dir / name).exists():
            shutil.copy(config_dir / name, out / name)
    return out


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> tuple[float, object]:
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ppo-steps", type=int, default=6)
    parser.add_argument("--rollout", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dpo-steps", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU allowed: check the script itself")
    args = parser.parse_args()
    from cai.train.config import DPOConfig, RewardConfig
    from cai.train.ppo import prepare_ppo
    from cai.train.rl_config import PPOConfig
    from cai.train.run import run_training

    assert torch.cuda.is_available() or args.smoke, "no CUDA device"
    rm_epochs, batch = (1, 4) if args.smoke else (4, 16)
    bf16 = torch.cuda.is_available()  # bfloat16 is far slower than float32 on CPUs without native support
    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    model = str(build_model(args.config_dir, work / "model"))
    report: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                    "torch": torch.__version__}

    rm_out = work / "rm"
    seconds, _ = timed(lambda: run_training("rm", RewardConfig(
        model=model, data="prompts/judge-eval.jsonl", out=str(rm_out), batch_size=8, epochs=rm_epochs,
        learning_rate=1e-4, eval_fraction=0.2, max_length=256, max_prompt_length=128, bf16=bf16, progress=False)))
    rows = [r for r in metrics(rm_out) if "loss" in r]
    report["rm"] = {"seconds": round(seconds, 1), "steps": len(rows), "first_loss": rows[0]["loss"],
                    "last_loss": rows[-1]["loss"], "tokens_per_s": rows[-1]["tokens_per_s"],
                    "eval": {k: v for k, v in metrics(rm_out)[-1].items() if k.startswith("eval/")}}

    ppo = dict(model=model, reward_model=str(rm_out), data="red-team", eval_fraction=0.1,
               rollout_batch_size=args.rollout, batch_size=batch, gradient_accumulation_steps=2, ppo_epochs=2,
               max_new_tokens=args.max_new_tokens, max_length=256, max_prompt_length=128, learning_rate=1e-5,
               max_steps=args.ppo_steps, save_steps=2, progress=False)
    for name, bf16 in (("ppo_fp32", False), ("ppo_bf16", True)):
        out = work / name
        seconds, _ = timed(lambda out=out, bf16=bf16: prepare_ppo(PPOConfig(out=str(out), bf16=bf16, **ppo)).train())
        steps = [r for r in metrics(out) if "objective/scores" in r]
        finite = all(all(v == v and abs(v) != float("inf") for v in r.values() if isinstance(v, float))
                     for r in steps)
        report[name] = {"seconds": round(seconds, 1), "steps": len(steps), "all_finite": finite,
                        "step_s": [round(r["time/step_s"], 2) for r in steps],
                        "rollout_s": [round(r["time/rollout_s"], 2) for r in steps],
                        "tokens_per_s": steps[-1]["tokens_per_s"],
                        "last": {k: steps[-1][k] for k in ("objective/kl", "objective/scores", "policy/approxkl",
                                                            "policy/clipfrac", "val/loss", "policy/entropy")},
                        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                        if torch.cuda.is_available() else None}
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    report["ppo_bf16_vs_fp32_step_time"] = round(
        sum(report["ppo_bf16"]["step_s"][1:]) / sum(report["ppo_fp32"]["step_s"][1:]), 3)

    resumed = work / "ppo_resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(work / "ppo_fp32" / "checkpoints" / "step-2", resumed / "checkpoints" / "step-2")
    prepare_ppo(PPOConfig(out=str(resumed), resume=True, **ppo)).train()
    from safetensors.torch import load_file

    a = load_file(str(work / "ppo_fp32" / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    report["ppo_resume_max_abs_diff"] = max((a[k].float() - b[k].float()).abs().max().item() for k in a)

    dpo = dict(model=model, data="prompts/judge-eval.jsonl", batch_size=8, max_steps=args.dpo_steps,
               max_length=256, max_prompt_length=128, learning_rate=5e-6, progress=False)
    for name, bf16 in (("dpo_fp32", False), ("dpo_bf16", True)):
        out = work / name
        seconds, _ = timed(lambda out=out, bf16=bf16: run_training("dpo", DPOConfig(out=str(out), bf16=bf16, **dpo)))
        rows = [r for r in metrics(out) if "loss" in r]
        report[name] = {"seconds": round(seconds, 1), "tokens_per_s": rows[-1]["tokens_per_s"],
                        "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"]}
    report["dpo_bf16_vs_fp32_tokens_per_s"] = round(report["dpo_bf16"]["tokens_per_s"] /
                                                    report["dpo_fp32"]["tokens_per_s"], 3)
    (args.out / "device_trainer_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
