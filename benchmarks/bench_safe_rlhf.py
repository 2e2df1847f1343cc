"""Benchmark: PPO under a cost limit (Lagrangian lambda) against PPO with a fixed lambda and reward-only PPO, on the
same policy, reward model, cost model, prompts, seed and number of steps.

    .venv/bin/cai run recipes/safe-rlhf.yaml                         # makes the policy, reward and cost models
    .venv/bin/python benchmarks/bench_safe_rlhf.py [--run outputs/safe-rlhf] [--steps 8] [--fixed-lambda 1.0]

Each variant trains from `<run>/sft` with the recipe's PPO settings (its `ppo` section), then every final policy
and the starting one answer the same held-out prompts (the recipe's held-out split, `--samples` draws each, one
fixed sampling seed), and the reward model and cost model score the answers. Prints one JSON line: per variant the
mean reward, mean cost, the share of answers with cost > 0 (the cost model's unsafe side) and the last lambda, and
writes it to benchmarks/results/safe_rlhf.json. On the 135M default the models are weak and differences small;
the point is that the comparison runs end to end, the same way it would on a real model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def ppo_settings(run: Path) -> dict:
    from cai.config import read_yaml_file

    recipe = read_yaml_file(REPO / "recipes" / "safe-rlhf.yaml", "recipe")
    manifest = json.loads((run / "manifest.json").read_text()) if (run / "manifest.json").exists() else {}
    settings = dict(recipe["ppo"])
    settings.update(manifest.get("recipe", {}).get("ppo", {}))
    return settings


def train(settings: dict, out: Path) -> dict:
    from cai.train.ppo import prepare_ppo
    from cai.train.rl_config import PPOConfig

    started = time.monotonic()
    trainer = prepare_ppo(PPOConfig(out=str(out), progress=False, **settings))
    trainer.train()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lambdas = [r["objective/lambda"] for r in rows if "objective/lambda" in r]
    return {"train_seconds": round(time.monotonic() - started, 1), "lambda_last": lambdas[-1] if lambdas else None,
            "lambda_per_step": lambdas}


def measure(policy_path: str, prompts: list[dict], settings: dict, reward_model: str, cost_model: str,
            samples: int) -> dict:
    import torch

    from cai.train.modeling import load_causal_lm, load_tokenizer
    from cai.train.rollouts import TransformersRollouts, response_texts
    from cai.train.scoring import RewardScorer

    tokenizer, path = load_tokenizer(policy_path)
    from cai.train.config import TrainConfig

    policy = load_causal_lm(path, TrainConfig(data="-", out="-"), torch.float32).eval()
    rollouts = TransformersRollouts(policy, tokenizer, settings["max_new_tokens"], settings.get("temperature", 0.7))
    examples = [p for p in prompts for _ in range(samples)]
    torch.manual_seed(12345)
    texts = response_texts(tokenizer, rollouts.generate([e["prompt_ids"] for e in examples]))
    messages = [e["messages"] for e in examples]
    rewards = RewardScorer(reward_model).score(messages, texts)
    costs = RewardScorer(cost_model).score(messages, texts)
    return {"mean_reward": statistics.fmean(rewards), "mean_cost": statistics.fmean(costs),
            "unsafe_share": sum(c > 0 for c in costs) / len(costs), "answers": len(texts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="outputs/safe-rlhf", help="a finished `recipes/safe-rlhf.yaml` run")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--fixed-lambda", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=2, help="answers per held-out prompt")
    parser.add_argument("--cost-limit", type=float, default=None,
                        help="d (default: the starting policy's measured mean cost minus --margin, so the limit "
                             "binds; the embedded judge calls almost nothing harmful, so a limit of 0 never would)")
    parser.add_argument("--margin", type=float, default=0.05)
    args = parser.parse_args()
    run = Path(args.run)
    for stage in ("sft", "rm", "cost"):
        if not (run / stage / "config.json").exists():
            sys.exit(f"{run / stage} is missing: run `cai run recipes/safe-rlhf.yaml` first")
    base = ppo_settings(run)
    base.update(model=str(run / "sft"), reward_model=str(run / "rm"), max_steps=args.steps, eval_steps=0,
                save_steps=0, resume=False, overwrite=True)
    variants: dict[str, dict] = {
        "lagrangian": {**base, "cost_model": str(run / "cost")},
        "fixed_lambda": {**base, "cost_model": str(run / "cost"), "lambda_init": args.fixed_lambda, "lambda_lr": 0.0,
                         "lambda_max": max(args.fixed_lambda, 1e-9)},
        "reward_only": {k: v for k, v in base.items() if not k.startswith("lambda") and k != "cost_limit"},
    }
    from cai.train.modeling import load_tokenizer
    from cai.train.rollouts import load_prompt_examples
    from cai.train.sft import split_eval

    tokenizer = load_tokenizer(str(run / "sft"))[0]
    examples = load_prompt_examples(base["data"], tokenizer, base.get("limit"), base["max_prompt_length"])
    held_out = split_eval(examples, base["eval_fraction"], base.get("seed", 0))[1]  # PPO's own held-out split
    start = measure(str(run / "sft"), held_out, base, str(run / "rm"), str(run / "cost"), args.samples)
    limit = args.cost_limit if args.cost_limit is not None else start["mean_cost"] - args.margin
    for name in ("lagrangian", "fixed_lambda"):
        variants[name]["cost_limit"] = limit
    results: dict = {"steps": args.steps, "run": str(run), "cost_limit": limit, "start": start}
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in variants.items():
            trained = train(settings, Path(tmp) / name)
            results[name] = {**trained, **measure(str(Path(tmp) / name), held_out, base, str(run / "rm"),
                                                   str(run / "cost"), args.samples)}
    out = REPO / "benchmarks" / "results" / "safe_rlhf.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: ({m: round(x, 4) if isinstance(x, float) else x for m, x in v.items()
                          if m != "lambda_per_step"} if isinstance(v, dict) else v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
