"""Benchmark: `cai train grpo` against `cai train ppo` (peak memory, seconds per step) and against TRL's
GRPOTrainer (completion tokens per second), on the embedded model, in one run.

    .venv/bin/python benchmarks/bench_grpo.py [--steps 4] [--max-new-tokens 32]

1. A reward model is trained first on the shipped labelled pairs (`prompts/judge-eval.jsonl`, 20 steps).
2. GRPO vs PPO, same reward model, same prompts (red-team), same number of completions per step (8: PPO 8 prompts
   x 1, GRPO 2 prompts x 4), same max_new_tokens, batch size and learning rate, each trainer's default passes
   (PPO 4 epochs with a value head and a frozen reference; GRPO 1 pass, beta 0, no reference, no value model).
   Each run is its own process, timed by `/usr/bin/time` (peak RSS) and its metrics (seconds per step, steps 2 on,
   the first carrying warm-up).
3. GRPO vs TRL 1.16's GRPOTrainer with the same `ConstitutionReward` (embedded judge, no check, a second vLLM
   engine): G = 4, 8 completions per step, the same max_completion_length, steps, learning rate and seed;
   completion tokens per second over the training loop (the reward's engine start-up excluded for both).
Prints one JSON line and writes benchmarks/results/grpo.json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def timed(command: list[str], log: Path) -> tuple[float, float]:
    """Run a command under /usr/bin/time: (peak RSS in GiB, wall seconds)."""
    started = time.monotonic()
    with open(log, "w") as out:
        done = subprocess.run(["/usr/bin/time", "-v", *command], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    text = log.read_text()
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:6])} ... failed:\n{text[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return peak_kb / 2**20, time.monotonic() - started


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def common(args: argparse.Namespace) -> list[str]:
    return ["--data", "red-team", "--eval-fraction", "0", "--rollout-batch-size", "8", "--batch-size", "4",
            "--max-new-tokens", str(args.max_new_tokens), "--max-length", "192", "--max-prompt-length", "96",
            "--max-steps", str(args.steps), "--learning-rate", "2e-6", "--seed", "0", "--no-progress"]


def ppo_vs_grpo(args: argparse.Namespace, tmp: Path) -> dict:
    rm = tmp / "rm"
    timed([PYTHON, "-m", "cai", "train", "rm", "--data", str(REPO / "prompts" / "judge-eval.jsonl"), "--out", str(rm),
           "--max-steps", "20", "--batch-size", "4", "--max-length", "256", "--max-prompt-length", "128",
           "--no-progress"], tmp / "rm.log")
    results = {}
    runs = {"ppo": ["ppo", "--reward-model", str(rm)],
            "grpo": ["grpo", "--reward-model", str(rm), "--no-constitution-reward", "--num-generations", "4"]}
    for name, task in runs.items():
        out = tmp / name
        peak, wall = timed([PYTHON, "-m", "cai", "train", *task, "--out", str(out), *common(args)], tmp / f"{name}.log")
        steps = [r["time/step_s"] for r in metrics(out) if "time/step_s" in r][1:]
        results[name] = {"peak_rss_gib": round(peak, 3), "wall_s": round(wall, 1),
                         "seconds_per_step": round(sum(steps) / len(steps), 2)}
    results["grpo_vs_ppo"] = {
        "peak_memory": round(results["grpo"]["peak_rss_gib"] / results["ppo"]["peak_rss_gib"], 3),
        "seconds_per_step": round(results["grpo"]["seconds_per_step"] / results["ppo"]["seconds_per_step"], 3)}
    return results


TRL_SCRIPT = '''
import json, sys, time
import trl
from datasets import Dataset
from cai.inputs import load_prompts
from cai.judge.reward import ConstitutionReward
from cai.models import resolve_model


def main():  # vLLM starts its engine process by spawning: the script must be importable without side effects
    steps, tokens_max, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    reward = ConstitutionReward.create("harmless", check=False, gpu_memory_utilization=0.15)
    items = [i for i in load_prompts("red-team") if hasattr(i, "messages")][:64]
    args = trl.GRPOConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=8, num_generations=4,
                          max_completion_length=tokens_max, logging_steps=1, report_to="none", use_cpu=True,
                          learning_rate=2e-6, save_strategy="no", seed=0, temperature=1.0, beta=0.0)
    trainer = trl.GRPOTrainer(model=resolve_model(None), reward_funcs=reward, args=args,
                              train_dataset=Dataset.from_list([{"prompt": i.messages} for i in items]))
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    lengths = [r["completions/mean_length"] for r in trainer.state.log_history if "completions/mean_length" in r]
    print("RESULT", json.dumps({"seconds": seconds, "tokens": sum(lengths) * 8}))
    reward.close()


if __name__ == "__main__":
    main()
'''


def cai_vs_trl(args: argparse.Namespace, tmp: Path) -> dict:
    out = tmp / "cai-grpo"
    started = time.monotonic()
    timed([PYTHON, "-m", "cai", "train", "grpo", "--out", str(out), "--num-generations", "4", "--no-judge-check",
           "--judge-gpu-memory-utilization", "0.15", "--temperature", "1.0", *common(args)], tmp / "cai-grpo.log")
    rows = [r for r in metrics(out) if "completions/mean_length" in r]
    seconds = sum(r["time/step_s"] for r in rows)
    cai = {"tokens": sum(r["completions/mean_length"] * 8 for r in rows), "seconds": seconds,
           "wall_s": round(time.monotonic() - started, 1)}
    script = tmp / "trl_grpo.py"
    script.write_text(TRL_SCRIPT)
    log = tmp / "trl.log"
    timed([PYTHON, str(script), str(args.steps), str(args.max_new_tokens), str(tmp / "trl")], log)
    trl = json.loads(next(line for line in log.read_text().splitlines() if line.startswith("RESULT"))[7:])
    for run in (cai, trl):
        run["tokens_per_s"] = round(run["tokens"] / run["seconds"], 2)
    return {"cai": cai, "trl": trl, "cai_vs_trl_tokens_per_s": round(cai["tokens_per_s"] / trl["tokens_per_s"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    path = REPO / "benchmarks" / "results" / "grpo.json"
    with tempfile.TemporaryDirectory() as tmp:
        results = {"steps": args.steps, "max_new_tokens": args.max_new_tokens,
                   "memory_and_time": ppo_vs_grpo(args, Path(tmp))}
        path.write_text(json.dumps(results, indent=2) + "\n")  # kept if the second part fails
        results["throughput"] = cai_vs_trl(args, Path(tmp))
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
