"""Benchmark: `cai train dpo` training tokens/s and peak memory against TRL's `DPOTrainer` on the same data,
model and settings (TRL is needed only here: `.venv/bin/pip install --no-deps trl==1.16.0`).

    .venv/bin/python benchmarks/bench_train.py [--pairs 32] [--steps 8] [--batch-size 4] [--repeats 1]

Each run trains in its own subprocess (so peak RSS is its own): the embedded SmolLM2-135M in float32, the
shipped labelled pairs, sigmoid DPO with beta 0.1, the same batch size, steps, learning rate and max length.
Three runs:
- `trl`: TRL as it ships (a frozen reference copy scored every step; its DPOConfig turns gradient checkpointing on);
- `cai`: cai as it ships (the reference scored once before training, `--reference precompute`; no gradient
  checkpointing). The reference pass is timed and counted: it does the same forward passes TRL does per step;
- `cai-like-trl`: cai set up as TRL is (`--reference copy --gradient-checkpointing`).
Tokens are counted once, from the tokenized pairs each step consumed; time is the wall time of training plus,
for `cai`, its reference pass (model loading excluded). Prints one JSON line with every run and the ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def pairs_file(n: int, folder: Path) -> Path:
    rows = (REPO / "prompts" / "judge-eval.jsonl").read_text().splitlines()[:n]
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def run_cai(args, data: Path, out: Path) -> dict:
    from cai.train import dpo
    from cai.train.config import DPOConfig

    reference_seconds = []
    timed = dpo.precompute_reference

    def precompute(*a, **k):
        start = time.monotonic()
        timed(*a, **k)
        reference_seconds.append(time.monotonic() - start)

    dpo.precompute_reference = precompute
    like_trl = args.impl == "cai-like-trl"
    config = DPOConfig(data=str(data), out=str(out), batch_size=args.batch_size, max_steps=args.steps,
                       learning_rate=1e-5, beta=0.1, max_length=256, max_prompt_length=128,
                       reference="copy" if like_trl else "precompute", gradient_checkpointing=like_trl,
                       progress=False)
    trainer = dpo.prepare_dpo(config)
    start = time.monotonic()
    last = trainer.train()
    # the loop's own clock, as TRL's train() does not save a model at the end and this one does
    return {"seconds": last["tokens"] / last["tokens_per_s"] + sum(reference_seconds),
            "reference_pass_seconds": sum(reference_seconds), "with_save_seconds": time.monotonic() - start,
            "tokens": last["tokens"]}


def run_trl(args, data: Path, out: Path) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from cai.models import resolve_model

    path = resolve_model(None)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    dataset = datasets.load_dataset("json", data_files=str(data), split="train").select_columns(
        ["prompt", "chosen", "rejected"])
    config = DPOConfig(output_dir=str(out), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                       learning_rate=1e-5, beta=0.1, max_length=256, loss_type=["sigmoid"], report_to="none",
                       save_strategy="no", logging_steps=1, bf16=False, seed=0, lr_scheduler_type="linear",
                       gradient_accumulation_steps=1, dataloader_num_workers=0, disable_tqdm=True)
    trainer = DPOTrainer(model=model, ref_model=None, args=config, train_dataset=dataset, processing_class=tokenizer)
    start = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - start
    return {"seconds": seconds, "trl_num_tokens": trainer.state.num_input_tokens_seen or None}


def count_tokens(args, data: Path) -> int:
    """Tokens the `steps` x `batch_size` pairs carry (prompt + chosen, prompt + rejected), same for both."""
    from transformers import AutoTokenizer

    from cai.models import resolve_model
    from cai.train.data import Truncation, load_rows, tokenize_preferences

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(None))
    examples, _ = tokenize_preferences(load_rows(str(data), kind="dpo"), tokenizer, Truncation(256, 128))
    per_pair = sum(2 * len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples)
    return round(per_pair / len(examples) * args.steps * args.batch_size)


def child(args) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = pairs_file(args.pairs, Path(tmp))
        result = (run_trl if args.impl == "trl" else run_cai)(args, data, Path(tmp) / "out")
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print("RESULT " + json.dumps(result), flush=True)


def main(args) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tokens = count_tokens(args, pairs_file(args.pairs, Path(tmp)))
    runs: dict[str, list[dict]] = {"trl": [], "cai": [], "cai-like-trl": []}
    for _ in range(args.repeats):
        for impl in runs:
            cmd = [sys.executable, __file__, "--impl", impl, "--pairs", str(args.pairs), "--steps", str(args.steps),
                   "--batch-size", str(args.batch_size)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
            result["tokens_per_s"] = tokens / result["seconds"]
            runs[impl].append(result)

    def mean(impl, key):
        return sum(r[key] for r in runs[impl]) / len(runs[impl])

    def peak(impl):
        return max(r["peak_rss_gib"] for r in runs[impl])

    summary = {"benchmark": "train-dpo", "device": "cpu", "pairs": args.pairs, "steps": args.steps,
               "batch_size": args.batch_size, "tokens": tokens}
    for impl in runs:
        summary[f"{impl}_tokens_per_s"] = round(mean(impl, "tokens_per_s"), 1)
        summary[f"{impl}_peak_rss_gib"] = round(peak(impl), 2)
    for impl in ("cai", "cai-like-trl"):
        summary[f"{impl}_speed_ratio"] = round(mean(impl, "tokens_per_s") / mean("trl", "tokens_per_s"), 3)
        summary[f"{impl}_rss_minus_trl_gib"] = round(peak(impl) - peak("trl"), 2)
    return {**summary, "runs": runs}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--impl", choices=["cai", "cai-like-trl", "trl"], help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.impl:
        child(parsed)
    else:
        print(json.dumps(main(parsed)))
