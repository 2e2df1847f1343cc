"""Benchmark: macro-action PPO (`--macro-action fixed:5` and `ppl`) against token-level PPO (`fixed:1`): how many
PPO steps each needs to reach token-level PPO's final held-out proxy reward, at what KL, over several seeds.

    .venv/bin/python benchmarks/bench_macro.py [--steps 12] [--seeds 0,1,2] [--eval-steps 2]

One reward model is trained first on the shipped labelled pairs (`prompts/judge-eval.jsonl`, the embedded model
with a scalar head); every PPO run then starts from the embedded model with that reward model, the bundled
red-team prompts (a quarter held out), the same settings and step budget, and differs only in `--macro-action`
and the seed. PPO evaluates every `--eval-steps` steps on the held-out prompts (`eval/objective/scores`, and
`eval/objective/kl` to the reference). Per seed, the target is token-level PPO's last held-out score; a macro
variant's "steps to target" is the first evaluation step whose held-out score reaches it (None: not within the
budget), reported with its KL beside token-level PPO's final KL. Prints one JSON line and writes
benchmarks/results/macro.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("fixed:1", "fixed:5", "ppl")


def train_reward_model(out: Path, steps: int) -> str:
    from cai.train.config import RewardConfig
    from cai.train.run import run_training

    config = RewardConfig(data=str(REPO / "prompts" / "judge-eval.jsonl"), out=str(out), max_steps=steps,
                          batch_size=4, learning_rate=2e-5, max_length=256, max_prompt_length=128, progress=False)
    final = run_training("rm", config)
    print(f"reward model: {steps} steps, final {json.dumps({k: round(v, 3) for k, v in final.items()})}", flush=True)
    return str(out)


def ppo_run(reward_model: str, macro: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    from cai.train.ppo import prepare_ppo
    from cai.train.rl_config import PPOConfig

    started = time.monotonic()
    trainer = prepare_ppo(PPOConfig(
        reward_model=reward_model, data="red-team", eval_fraction=0.25, eval_steps=args.eval_steps,
        eval_samples=2, max_steps=args.steps, rollout_batch_size=8, batch_size=4, ppo_epochs=2, max_new_tokens=32,
        max_length=192, max_prompt_length=96, learning_rate=3e-6, temperature=1.0, seed=seed, macro_action=macro,
        save_steps=0, progress=False, out=str(out)))
    trainer.train()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [{"step": r["step"], "score": r["eval/objective/scores"], "kl": r["eval/objective/kl"]}
             for r in rows if "eval/objective/scores" in r]
    macro_lengths = [r["macro/mean_length"] for r in rows if "macro/mean_length" in r]
    return {"evals": evals, "seconds": round(time.monotonic() - started, 1),
            "mean_macro_length": statistics.fmean(macro_lengths) if macro_lengths else 1.0}


def steps_to(target: float, evals: list[dict]) -> dict:
    reached = next((e for e in evals if e["step"] > 0 and e["score"] >= target), None)
    return {"steps": reached["step"] if reached else None, "kl": reached["kl"] if reached else None}


def summary(values: list[float | None]) -> dict:
    got = [v for v in values if v is not None]
    return {"mean": statistics.fmean(got) if got else None, "min": min(got) if got else None,
            "max": max(got) if got else None, "reached": f"{len(got)} of {len(values)}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="PPO steps per run (the budget)")
    parser.add_argument("--eval-steps", type=int, default=2, help="evaluate on the held-out prompts this often")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rm-steps", type=int, default=40, help="reward model training steps")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {"steps": args.steps, "eval_steps": args.eval_steps, "seeds": seeds, "runs": {}}
    out = REPO / "benchmarks" / "results" / "macro.json"
    with tempfile.TemporaryDirectory() as tmp:
        reward_model = train_reward_model(Path(tmp) / "rm", args.rm_steps)
        for seed in seeds:
            for macro in VARIANTS:
                run = ppo_run(reward_model, macro, seed, args, Path(tmp) / f"{macro.replace(':', '')}-{seed}")
                results["runs"][f"{macro}/seed{seed}"] = run
                out.write_text(json.dumps(results, indent=2) + "\n")  # each finished run kept on disk
                print(f"{macro} seed {seed}: {run['seconds']} s, evals {run['evals']}", flush=True)
    per_variant: dict = {}
    for macro in VARIANTS[1:]:
        reached = []
        for seed in seeds:
            token = results["runs"][f"fixed:1/seed{seed}"]["evals"]
            target = token[-1]["score"]
            reached.append({**steps_to(target, results["runs"][f"{macro}/seed{seed}"]["evals"]),
                            "target": target, "token_level_steps": token[-1]["step"], "token_level_kl": token[-1]["kl"]})
        per_variant[macro] = {"per_seed": reached, "steps_to_target": summary([r["steps"] for r in reached]),
                              "kl_at_target": summary([r["kl"] for r in reached]),
                              "mean_macro_length": statistics.fmean(results["runs"][f"{macro}/seed{s}"]
                                                                    ["mean_macro_length"] for s in seeds)}
    results["comparison"] = per_variant
    results["token_level_final"] = {"score": summary([results["runs"][f"fixed:1/seed{s}"]["evals"][-1]["score"]
                                                      for s in seeds]),
                                    "kl": summary([results["runs"][f"fixed:1/seed{s}"]["evals"][-1]["kl"]
                                                   for s in seeds])}
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"comparison": {m: {k: v for k, v in c.items() if k != "per_seed"} for m, c in per_variant.items()},
                      "token_level_final": results["token_level_final"]}))


if __name__ == "__main__":
    main()
