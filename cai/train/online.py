"""`cai train online-dpo`: online iterative RLAIF. Each round samples from the policy being trained (on vLLM),
has the constitution's AI judge label those samples, and trains DPO on them against the starting model.

    cai train online-dpo --prompts red-team --rounds 3 --samples-per-prompt 4 --principles 2 \\
        --max-steps-per-round 20 --out outputs/online

Round r (folder OUT/round-r/):
1. the vLLM engine serves round r-1's weights (the starting model for r = 1), loaded in place or by a restart;
2. `cai judge --strategy sampled` samples K responses per prompt of the round's share (fresh prompts each round
   unless `--reuse-prompts`) and judges all K(K-1)/2 pairs (both orders, principle ensemble, soft labels) into
   OUT/round-r/judge/ (the run store: a killed round resumes its samples and judgements);
3. pairs.jsonl: best vs worst response per prompt by mean win probability (`--pairing best-worst`) or all;
4. DPO from round r-1's policy with the starting model as reference (`reference_model`), into
   OUT/round-r/model/ (checkpointed; a killed round resumes there);
5. held-out prompts are answered by the new model and judged against round r-1's and the starting model's
   answers; with the label confidence, answer lengths, a KL estimate to the starting model and the DPO metrics
   this is one row of OUT/metrics.jsonl, and OUT/round-r/round.json marks the round finished (never redone).
The last round's model is copied into OUT.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from cai.config import JudgeConfig
from cai.engines import Engine, SamplingEngine, TokenSampling
from cai.errors import UsageError
from cai.runs.resume import check_resume
from cai.runs.store import read_jsonl, write_json_atomic
from cai.train.online_plan import (
    MANIFEST,
    best_worst_pairs,
    check_online_output,
    kl_estimate,
    online_fields,
    round_judge_config,
    split_prompts,
)
from cai.train.rl_config import OnlineDPOConfig


def run_online(config: OnlineDPOConfig) -> dict[str, Any]:
    """Run (or continue) the rounds; returns the last round's metrics row."""
    return asyncio.run(online_dpo(config))


async def online_dpo(config: OnlineDPOConfig, judge: Any = None) -> dict[str, Any]:
    """`run_online` inside a running event loop; `judge`, when given, is the engine to judge with (the caller's,
    left open)."""
    from cai.train.modeling import load_tokenizer
    from cai.train.run import check_inputs

    out = Path(config.out)
    check_inputs(config)  # paths, models, the judge's constitution: before anything loads
    round_judge_config(config, 1, out / "round-1", Path("prompts.jsonl"))  # the judge settings are valid
    tokenizer, start = load_tokenizer(config.model, config.trust_remote_code)
    earlier = check_online_output(config, start)
    # every prompt problem is reported before an engine starts; a continued run keeps its prompts per round
    heldout, rounds, per_round = split_prompts(config, earlier.get("per_round") if earlier else None)
    fields = online_fields(config, heldout)
    if earlier:
        check_resume(earlier, fields, f"--out {config.out}", "The same command continues it (more --rounds "
                     "allowed); use another --out, or --overwrite to start again.")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / MANIFEST, {**fields, "start_model": start, "per_round": per_round,
                                       "heldout": [i.id for i in heldout],
                                       "rounds": [[i.id for i in r] for r in rounds]})
    runner = OnlineRun(config, tokenizer, start, heldout, rounds, judge)
    try:
        return await runner.run()
    finally:
        await runner.close()


class OnlineRun:
    def __init__(self, config: OnlineDPOConfig, tokenizer: Any, start: str, heldout: list, rounds: list[list],
                 judge: Any = None):
        self.config, self.tokenizer, self.start = config, tokenizer, start
        self.heldout, self.rounds = heldout, rounds
        self.out = Path(config.out)
        self.policy: SamplingEngine | None = None
        self.judge: Engine | None = judge
        self.owns_judge = judge is None
        self.win_judge = None
        self.served: str | None = None
        self.sync_seconds: list[float] = []

    # --- engines --------------------------------------------------------------------------------------------
    async def serve(self, path: str) -> SamplingEngine:
        """The sampling engine, serving the weights in `path`."""
        import time

        from cai.engines import create_sampling_engine
        from cai.train.vllm_rollouts import sampling_engine_config

        if self.policy is not None and self.served == path:
            return self.policy
        started = time.monotonic()
        if self.policy is not None and self.config.rollout_sync == "inplace":
            await self.policy.load_weights(path)
        else:
            if self.policy is not None:
                await self.policy.close()
            self.policy = create_sampling_engine(sampling_engine_config(self.config.engine, path))
        if self.served is not None:
            self.sync_seconds.append(time.monotonic() - started)
        self.served = path
        return self.policy

    def judge_engine(self) -> Engine:
        if self.judge is None:
            from cai.engines import create_engine

            self.judge = create_engine(self.config.judge_engine)
        return self.judge

    async def close(self) -> None:
        for engine in (self.policy, self.judge if self.owns_judge else None):
            if engine is not None:
                await engine.close()
        self.policy = self.judge = None

    # --- rounds ---------------------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        last: dict[str, Any] = {}
        previous = self.start
        for r in range(1, self.config.rounds + 1):
            folder = self.out / f"round-{r}"
            if (folder / "round.json").is_file():
                print(f"cai: round {r} finished earlier, kept")
                last = json.loads((folder / "round.json").read_text())["metrics"]
            else:
                last = await self.round(r, folder, previous)
            previous = str(folder / "model")
        self.publish(Path(previous))
        return last

    async def round(self, r: int, folder: Path, previous: str) -> dict[str, Any]:
        from cai.train.run import run_training

        config = self.config
        print(f"cai: round {r}/{config.rounds}: sampling and judging {len(self.rounds[r - 1])} prompts")
        folder.mkdir(parents=True, exist_ok=True)
        await self.answers("start", self.start)  # the starting model's held-out answers, before its weights are gone
        prompts = folder / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"id": i.id, "messages": i.messages}) + "\n"
                                   for i in self.rounds[r - 1]), encoding="utf-8")
        judged = await self.judge_round(r, folder, prompts, previous)
        rows = list(read_jsonl(judged / "export" / "train.jsonl"))
        pairs = best_worst_pairs(rows) if config.pairing == "best-worst" else rows
        if not pairs:
            raise UsageError(f"round {r}: the judge produced no usable pair from {len(rows)} judged pairs (see "
                             f"{judged}/export and invalid.jsonl)")
        pairs_file = folder / "pairs.jsonl"
        pairs_file.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
        print(f"cai: round {r}: DPO on {len(pairs)} pairs")
        dpo = run_training("dpo", self.dpo_config(r, folder, previous, pairs_file))
        metrics = await self.evaluate(r, folder, previous, pairs, judged, dpo)
        rows_file = self.out / "metrics.jsonl"
        kept = [row for row in read_jsonl(rows_file) if row.get("round", 0) < r] if rows_file.exists() else []
        write_jsonl(rows_file, [*kept, metrics])
        write_json_atomic(folder / "round.json", {"round": r, "metrics": metrics})  # last: the round is done
        return metrics

    async def judge_round(self, r: int, folder: Path, prompts: Path, previous: str) -> Path:
        from cai.judge.run import judge_run

        config = self.config
        judge_config = round_judge_config(config, r, folder, prompts)
        policy = await self.serve(previous)
        await judge_run(judge_config, engine=self.judge_engine(), policy=policy, progress=config.progress)
        return folder / "judge"

    def dpo_config(self, r: int, folder: Path, previous: str, pairs: Path) -> Any:
        from cai.train.config import DPOConfig

        config = self.config
        fields = {k: getattr(config, k) for k in DPOConfig.model_fields if k in type(config).model_fields}
        fields.update(model=previous, data=str(pairs), out=str(folder / "model"), max_steps=config.max_steps_per_round,
                      reference_model=None if r == 1 else self.start, resume=True, overwrite=False,
                      eval_data=None, seed=config.seed + r)
        return DPOConfig(**fields)

    # --- evaluation -----------------------------------------------------------------------------------------
    async def answers(self, name: str, path: str) -> list[dict]:
        """Held-out answers of the model at `path` (sampled once, kept in OUT/heldout/<name>.jsonl)."""
        file = self.out / "heldout" / f"{name}.jsonl"
        if file.is_file():
            return list(read_jsonl(file))
        engine = await self.serve(path)
        params = TokenSampling(max_tokens=self.config.max_new_tokens, temperature=self.config.temperature)
        prompt_ids = [self.tokenizer.apply_chat_template(i.messages, add_generation_prompt=True, tokenize=True,
                                                         return_dict=False) for i in self.heldout]

        tokens = await asyncio.gather(*(engine.generate_ids(ids, params) for ids in prompt_ids))
        rows = [{"id": item.id, "prompt_ids": ids, "response_ids": list(t),
                 "text": self.tokenizer.decode(t, skip_special_tokens=True).strip()}
                for item, ids, t in zip(self.heldout, prompt_ids, tokens, strict=True)]
        file.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(file, rows)
        return rows

    async def win_rate(self, new: list[dict], old: list[dict], r: int, against: str) -> dict[str, Any]:
        """The judge's mean P(new answer better), both orders, over the held-out prompts, with a bootstrap CI."""
        from cai.constitution import sample_rng
        from cai.evaluate.model import bootstrap_interval
        from cai.judge.check import prepare_judge

        judge_config = JudgeConfig(source="-", **self.config.judge, engine=self.config.judge_engine)
        if self.win_judge is None:  # the rounds' judge: its format, cached check and combination
            self.win_judge = (await prepare_judge(self.judge_engine(), judge_config))[0]
        judge = self.win_judge

        async def one(item, a, b):
            principles = judge.sample(sample_rng(self.config.seed, f"{item.id}/round-{r}/{against}"),
                                      judge_config.principles_per_pair)
            return (await judge.compare(item.messages, a["text"], b["text"], principles))[1]

        judged = await asyncio.gather(*(one(i, a, b) for i, a, b in zip(self.heldout, new, old, strict=True)))
        labels = [label for label in judged if label.valid]
        wins = [label.p_first for label in labels]
        low, high = bootstrap_interval(wins, 1000, self.config.seed) if wins else (None, None)
        consistency = [label.position_consistency for label in labels]
        return {"win_rate": sum(wins) / len(wins) if wins else None, "ci95": [low, high], "valid": len(wins),
                "position_consistency": sum(consistency) / len(consistency) if consistency else None}

    async def evaluate(self, r: int, folder: Path, previous: str, pairs: list[dict], judged: Path,
                 dpo: dict[str, Any]) -> dict[str, Any]:
        model = str(folder / "model")
        new = await self.answers(f"round-{r}", model)
        old = await self.answers("start" if r == 1 else f"round-{r - 1}", previous)
        start = await self.answers("start", self.start)
        sampled = [len(self.tokenizer.encode(text, add_special_tokens=False))
                   for row in read_jsonl(judged / "responses.jsonl") for text in row["responses"]]
        metrics = {
            "round": r,
            "pairs": len(pairs),
            "vs_previous": await self.win_rate(new, old, r, "previous"),
            "vs_start": await self.win_rate(new, start, r, "start"),
            "label_confidence": sum(p["p_chosen"] for p in pairs) / len(pairs),
            "sample_length_tokens": sum(sampled) / len(sampled) if sampled else None,
            # both lengths from the decoded text (no end token), so they compare
            "heldout_length_tokens": sum(len(self.tokenizer.encode(a["text"], add_special_tokens=False))
                                         for a in new) / len(new),
            "kl_to_start": kl_estimate(model, self.start, new, self.config.trust_remote_code,
                                       self.config.temperature),
            "weight_sync_seconds": self.sync_seconds[-1] if self.sync_seconds else None,
            **{f"dpo/{k}": v for k, v in dpo.items() if k.split("/")[0] in ("loss", "rewards", "eval")
               and isinstance(v, int | float)},
        }
        return metrics

    def publish(self, model: Path) -> None:
        """The last round's model files into OUT (configuration, weights, tokenizer)."""
        for item in model.iterdir():
            if item.is_file() and item.name not in ("metrics.jsonl", "train_manifest.json", ".lock"):
                shutil.copy2(item, self.out / item.name)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    from cai.runs.writers import write_jsonl_atomic

    write_jsonl_atomic(path, rows)
