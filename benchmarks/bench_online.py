"""Benchmark: online iterative DPO against offline DPO on the same label budget, judged by the same judge.

    .venv/bin/python benchmarks/bench_online.py [--prompts 16] [--rounds 2] [--samples 3] [--steps-per-round 8]

- offline: `cai train online-dpo --rounds 1` over all the training prompts: K samples per prompt from the starting
  model, every pair judged, one DPO run of rounds x steps-per-round steps (classic offline RLAIF);
- online: `--rounds R` over the same prompts split across the rounds (fresh ones each round): each round samples
  from the current policy, so the labels follow the policy; steps-per-round DPO steps per round.
Both judge N x K(K-1)/2 pairs and train the same number of steps from the same starting model and seed. Then the
judge compares each final model's held-out answers with the same starting-model answers (both orders, the same
principles), and the benchmark prints each win-rate with its 95% bootstrap interval (one JSON line, also written to
benchmarks/results/online.json). On the 135M default both will be near 0.5: the point is that the comparison
runs end to end; use recipes/gpu-online-8b.yaml's settings with `--model` and `--judge-model` for a real one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def train(out: Path, args: argparse.Namespace, rounds: int, steps: int) -> float:
    command = [sys.executable, "-m", "cai", "train", "online-dpo", "--rounds", str(rounds),
               "--prompts-per-round", str(args.prompts // rounds), "--limit", str(args.prompts + args.heldout),
               "--heldout-prompts", str(args.heldout), "--samples-per-prompt", str(args.samples),
               "--principles", str(args.principles), "--max-steps-per-round", str(steps), "--pairing", "all",
               "--max-new-tokens", str(args.max_new_tokens), "--batch-size", "4", "--max-length", "256",
               "--max-prompt-length", "128", "--learning-rate", str(args.learning_rate), "--no-progress",
               "--out", str(out)]
    if args.model:
        command += ["--model", args.model]
    if args.judge_model:
        command += ["--judge-model", args.judge_model]
    started = time.monotonic()
    subprocess.run(command, check=True, cwd=REPO)
    return time.monotonic() - started


async def compare(answers: dict[str, list[dict]], start: list[dict], heldout_ids: list[str], args) -> dict:
    from cai.config import JudgeConfig
    from cai.constitution import sample_rng
    from cai.engines import EngineConfig, create_engine
    from cai.evaluate.model import bootstrap_interval
    from cai.inputs import load_prompts
    from cai.judge.check import prepare_judge

    items = {i.id: i for i in load_prompts("red-team", limit=args.prompts + args.heldout) if hasattr(i, "messages")}
    config = JudgeConfig(source="-", principles_per_pair=args.principles, engine=EngineConfig(model=args.judge_model))
    judge = create_engine(config.engine)
    try:
        judging = (await prepare_judge(judge, config))[0]  # `cai judge`'s judge: its format, check and calibration
        results = {}
        for name, rows in answers.items():
            async def one(row, base):
                item = items[row["id"]]
                principles = judging.sample(sample_rng(0, f"{item.id}/bench"), args.principles)
                return (await judging.compare(item.messages, row["text"], base["text"], principles))[1]

            by_id = {r["id"]: r for r in start}
            labels = await asyncio.gather(*(one(r, by_id[r["id"]]) for r in rows if r["id"] in heldout_ids))
            wins = [label.p_first for label in labels if label.valid]
            low, high = bootstrap_interval(wins, 2000, 0) if wins else (None, None)
            results[name] = {"win_rate_vs_start": sum(wins) / len(wins) if wins else None, "ci95": [low, high],
                             "valid": len(wins)}
        return results
    finally:
        await judge.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=16, help="training prompts (split across online rounds)")
    parser.add_argument("--heldout", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--samples", type=int, default=3, help="K samples per prompt")
    parser.add_argument("--principles", type=int, default=2)
    parser.add_argument("--steps-per-round", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--learning-rate", type=float, default=5e-6)
    parser.add_argument("--model", default=None)
    parser.add_argument("--judge-model", default=None)
    args = parser.parse_args()
    pairs = args.prompts * args.samples * (args.samples - 1) // 2
    result: dict = {"training_prompts": args.prompts, "samples_per_prompt": args.samples, "judged_pairs": pairs,
                    "rounds": args.rounds, "dpo_steps": args.rounds * args.steps_per_round}
    with tempfile.TemporaryDirectory() as tmp:
        offline, online = Path(tmp) / "offline", Path(tmp) / "online"
        result["offline_seconds"] = round(train(offline, args, 1, args.rounds * args.steps_per_round), 1)
        result["online_seconds"] = round(train(online, args, args.rounds, args.steps_per_round), 1)
        read = lambda path: [json.loads(line) for line in path.read_text().splitlines()]  # noqa: E731
        heldout = json.loads((offline / "online_manifest.json").read_text())["heldout"]
        answers = {"offline": read(offline / "heldout" / "round-1.jsonl"),
                   "online": read(online / "heldout" / f"round-{args.rounds}.jsonl")}
        result.update(asyncio.run(compare(answers, read(offline / "heldout" / "start.jsonl"), heldout, args)))
        result["online_per_round"] = [{k: r[k] for k in ("round", "label_confidence", "kl_to_start")}
                                      for r in read(online / "metrics.jsonl")]
    (REPO / "benchmarks" / "results" / "online.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
