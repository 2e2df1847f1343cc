"""`cai train grpo`: critic-free policy-gradient RL with the constitution as the reward (GRPO, RLOO, REINFORCE++).

    cai train grpo --data red-team --out outputs/grpo                             # the embedded judge scores
    cai train grpo --model outputs/sft --advantage rloo --loss-type dr_grpo --beta 0.02 --out outputs/grpo
    cai train grpo --reward-model outputs/rm --no-constitution-reward --out outputs/grpo-rm
    accelerate launch --multi_gpu --num_processes 2 -m cai train grpo ...         # several processes

Each step takes rollout_batch_size / G prompts per process and samples G completions of each (`model.generate`,
each completion from its own seed, or vLLM with `--rollouts vllm`, weights synced in place after every step);
scores them with the constitution's judge (`cai/judge/reward.py`) and/or reward models, summed with
`--reward-weights`; turns the rewards into advantages (`grpo_math.py`: group-normalised, leave-one-out, or
REINFORCE++'s KL-penalised batch-normalised returns); then `ppo_epochs` passes of the clipped surrogate in
micro-batches, averaged per `--loss-type`, with a k3 KL penalty to the reference when `--beta` > 0 (0 loads no
reference). There is no value model. Logged per step: reward mean/std and per source and per principle, the share
of groups whose completions all scored the same (no signal; a loud warning when it stays high), the share cut at
`--max-new-tokens`, completion length, KL, clip fraction, entropy; at `--eval-steps`, the held-out reward and
(with `--eval-judge`) the judge's win-rate against the step-0 answers. The loop, checkpoints, resume and metrics
are the shared trainer's (`loop.py`).
"""

from __future__ import annotations

import copy
import hashlib
import sys
import time
from typing import Any

import torch

from cai.train.experience import kept, response_logprobs
from cai.train.grpo_math import (
    clipped_loss,
    group_advantages,
    normalise,
    reinforce_pp_returns,
    zero_variance_share,
)
from cai.train.grpo_rewards import Rewards
from cai.train.judge_win_rate import eval_judge_for, response_strings
from cai.train.loop import Trainer
from cai.train.ppo_math import entropy_from_logits, masked_mean
from cai.train.rl_config import GRPOConfig
from cai.train.rollouts import OnPolicySteps, response_texts, rollout_batch
from cai.train.vllm_rollouts import make_rollouts


def completion_seed(seed: int, step: int, prompt_id: str, index: int) -> int:
    """Each completion's own sampling seed: the same draw whichever process or micro-batch it falls in."""
    digest = hashlib.sha256(f"{seed}:{step}:{prompt_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class GRPOTrainer(OnPolicySteps, Trainer):
    drop_last = True  # every step is whole groups, split into whole micro-batches

    def __init__(self, config: GRPOConfig, policy: torch.nn.Module, tokenizer: Any, prompts: list[dict],
                 eval_prompts: list[dict], reference: torch.nn.Module | None, rewards: Rewards,
                 extra_manifest: dict):
        super().__init__(config, policy, tokenizer, prompts, lambda rows: rows, None, eval_prompts, extra_manifest)
        self.reference = reference.to(self.accelerator.device) if reference is not None else None
        self.rewards = rewards
        self.episodes = 0
        self.zero_variance: list[float] = []
        self.rollouts = make_rollouts(config, self.unwrapped, self.tokenizer, extra_manifest["model_path"],
                                      self.accelerator.num_processes, seeded=True)
        self.eval_judge = eval_judge_for(config, self.out, self.accelerator.is_main_process,
                                         bool(self.eval_examples))
        if self.eval_judge is not None:
            self.manifest["eval_judge"] = self.eval_judge.describe()  # recorded with the run

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def draw_size(self) -> int:
        return self.config.rollout_batch_size // self.config.num_generations

    def extra_state(self) -> dict[str, Any]:
        return {"episodes": self.episodes, "zero_variance": self.zero_variance}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.episodes, self.zero_variance = state["episodes"], state.get("zero_variance", [])

    # --- experience -----------------------------------------------------------------------------------------
    def logprobs(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"], use_cache=False, logits_to_keep=kept(batch)).logits
        return response_logprobs(logits, batch, self.config.temperature)

    @torch.no_grad()
    def reference_logprobs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if self.reference is None and not (self.config.beta and self.config.lora):
            return None
        with self.accelerator.autocast():
            if self.reference is not None:
                return self.logprobs(self.reference, batch)[0]
            with self.unwrapped.disable_adapter():
                return self.logprobs(self.unwrapped, batch)[0]

    @torch.no_grad()
    def sample(self, examples: list[dict], seeds: list[int]) -> tuple[dict[str, torch.Tensor], list[list[int]]]:
        responses = self.rollouts.generate([e["prompt_ids"] for e in examples], seeds)
        batch = rollout_batch([e["prompt_ids"] for e in examples], responses, self.tokenizer.pad_token_id)
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}, responses

    @torch.no_grad()
    def make_experience(self, examples: list[dict]) -> dict[str, Any]:
        """Sample G completions per prompt, score them, and compute old and reference log-probs and advantages."""
        config, group = self.config, self.config.num_generations
        started = time.monotonic()
        rows = [e for e in examples for _ in range(group)]
        seeds = [completion_seed(config.seed, self.step, e["id"], i % group) for i, e in enumerate(rows)]
        batch, responses = self.sample(rows, seeds)
        rollout_seconds = time.monotonic() - started
        scores, by_source, by_principle = self.rewards.score([e["messages"] for e in rows],
                                                             response_texts(self.tokenizer, responses))
        scores = torch.tensor(scores, device=self.accelerator.device, dtype=torch.float32)
        mask = batch["response_mask"]
        with self.accelerator.autocast():
            old_logprobs = self.logprobs(self.model, batch)[0].float()
        ref_logprobs = self.reference_logprobs(batch)
        kl = (old_logprobs - ref_logprobs) * mask if ref_logprobs is not None else torch.zeros_like(mask)
        if config.advantage == "reinforce++":
            returns = reinforce_pp_returns(scores, kl, mask, config.beta)
            advantages = normalise(returns, mask, *self.global_moments(returns, mask))
        else:
            per_completion = group_advantages(scores, group, config.advantage, config.scale_rewards)
            advantages = per_completion.unsqueeze(1) * mask
        ended = [bool(r) and r[-1] in self.rollouts.stop for r in responses]
        cut = [not e and len(r) >= config.max_new_tokens for e, r in zip(ended, responses, strict=True)]
        stats = {"reward/mean": float(scores.mean()), "reward/std": float(scores.std()) if len(scores) > 1 else 0.0,
                 **{f"reward/{name}": sum(v) / len(v) for name, v in by_source.items()},
                 **{f"reward/principle/{name}": sum(x for x in v if x is not None) / max(1, sum(x is not None for x in v))
                    for name, v in by_principle.items()},
                 "groups/zero_variance_share": zero_variance_share(scores, group),
                 "completions/clipped_share": sum(cut) / len(cut),
                 "completions/mean_length": float(mask.sum(1).mean()),
                 "objective/kl": float(kl.sum(1).mean()), "time/rollout_s": rollout_seconds}
        return {"batch": batch, "old_logprobs": old_logprobs, "ref_logprobs": ref_logprobs, "advantages": advantages,
                "mask": mask, "stats": stats}

    def global_moments(self, values: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
        """Mean and standard deviation of the real tokens' values over every process's batch."""
        sums = torch.stack([(values * mask).sum(), (values * values * mask).sum(), mask.sum()]).double()
        sums = self.accelerator.reduce(sums, reduction="sum") if self.accelerator.num_processes > 1 else sums
        mean = float(sums[0] / sums[2].clamp(min=1))
        variance = max(float(sums[1] / sums[2].clamp(min=1)) - mean * mean, 0.0)
        return mean, variance ** 0.5

    # --- updates --------------------------------------------------------------------------------------------
    def learn(self, exp: dict[str, Any]) -> dict[str, list[float]]:
        config, stats = self.config, {}
        n = exp["mask"].shape[0]
        for epoch in range(config.ppo_epochs):
            order = torch.randperm(n, generator=torch.Generator().manual_seed(
                config.seed * 1_000_003 + self.step * 1000 + epoch)).to(exp["mask"].device)
            for micro in range(0, n, config.batch_size):
                for name, value in self.learn_rows(exp, order[micro: micro + config.batch_size]).items():
                    stats.setdefault(name, []).append(value)
        return stats

    def learn_rows(self, exp: dict[str, Any], rows: torch.Tensor) -> dict[str, float]:
        config, mask = self.config, exp["mask"][rows]
        sub = {k: v if k == "context" else v[rows] for k, v in exp["batch"].items()}
        reference = exp["ref_logprobs"][rows] if exp["ref_logprobs"] is not None and config.advantage != "reinforce++" \
            else None
        with self.accelerator.accumulate(self.model), self.accelerator.autocast():
            logprobs, scaled = self.logprobs(self.model, sub)
            loss, stats = clipped_loss(logprobs.float(), exp["old_logprobs"][rows], exp["advantages"][rows], mask,
                                       config.cliprange, config.loss_type, config.max_new_tokens, reference,
                                       config.beta)
            norm = self.backward_and_step(loss)
        with torch.no_grad():
            stats["policy/entropy"] = masked_mean(entropy_from_logits(scaled), mask)
        out = {name: float(value) for name, value in {**stats, "loss": loss.detach()}.items()}
        return out if norm is None else {**out, "grad_norm": norm}

    def grpo_step(self, examples: list[dict]) -> dict[str, float]:
        started = time.monotonic()
        exp = self.make_experience(examples)
        stats = self.learn(exp)
        result = {**exp["stats"], **{name: sum(v) / len(v) for name, v in stats.items()}}
        self.episodes += exp["mask"].shape[0] * self.accelerator.num_processes
        result.update({"episodes": self.episodes, "time/step_s": time.monotonic() - started})
        self.watch_zero_variance(self.global_mean({"share": result["groups/zero_variance_share"]})["share"])
        self.rollouts.sync_weights(self.unwrapped)
        return result

    def watch_zero_variance(self, share: float) -> None:
        """Warn loudly when most groups have carried no signal for 5 steps in a row."""
        self.zero_variance = [*self.zero_variance, share][-5:]
        if len(self.zero_variance) == 5 and min(self.zero_variance) > self.config.zero_variance_warning \
                and self.accelerator.is_main_process:
            print(f"cai: WARNING: for 5 steps more than {self.config.zero_variance_warning:.0%} of the groups had "
                  f"all {self.config.num_generations} completions scored the same (last {share:.0%}): the policy "
                  "learns nothing from them. Sample more diverse completions (--temperature, --num-generations) "
                  "or use a finer reward (--reward-mode group, a bigger judge).", file=sys.stderr)

    # --- the loop -------------------------------------------------------------------------------------------
    def train(self) -> dict[str, float]:
        try:
            return self._train()
        finally:
            for closing in (self.rollouts, self.eval_judge, self.rewards):
                if getattr(closing, "close", None) is not None:
                    closing.close()

    def _train(self) -> dict[str, float]:
        config = self.config
        bar = self.start()
        if self.step:  # resumed: a vLLM sampler must serve the restored weights
            self.rollouts.sync_weights(self.unwrapped)
        self.model.eval()  # dropout off: the first pass starts at ratio 1
        last: dict[str, float] = {}
        if self.step == 0 and self.eval_examples:
            self.log.write(0, self.evaluate())
        source = self._epoch_batches()
        while self.step < self.total_steps:
            values = self.grpo_step([self.train_examples[i] for i in next(source)])
            self.step += 1
            if self.step % config.logging_steps == 0 or self.step == self.total_steps:
                last = {**self.global_mean(values), "episodes": self.episodes,
                        "learning_rate": self.scheduler.get_last_lr()[0], "epoch": self.epoch}
                self.log.write(self.step, last)
                if bar is not None:
                    bar.set_postfix_str(f"reward {last['reward/mean']:.3f}, kl {last['objective/kl']:.3f}")
            self.end_of_step(bar)
        return self.finish(bar, last)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out prompts, one completion each from a fixed seed: mean reward, KL to the reference, length, and
        the judge's win-rate over the step-0 answers (`--eval-judge`)."""
        examples = self.eval_examples[: self.config.eval_prompts or None]
        seeds = [completion_seed(self.config.seed, -1, e["id"], 0) for e in examples]
        rewards, kls, lengths, texts = [], [], [], []
        for start in range(0, len(examples), self.config.rollout_batch_size):
            chunk = examples[start: start + self.config.rollout_batch_size]
            batch, responses = self.sample(chunk, seeds[start: start + len(chunk)])
            rewards += self.rewards.score([e["messages"] for e in chunk], response_texts(self.tokenizer, responses))[0]
            reference = self.reference_logprobs(batch)
            if reference is not None:
                with self.accelerator.autocast():
                    logprobs = self.logprobs(self.model, batch)[0].float()
                kls += ((logprobs - reference) * batch["response_mask"]).sum(1).tolist()
            lengths += batch["response_mask"].sum(1).tolist()
            texts += response_strings(self.tokenizer, batch)
        mean = lambda values: sum(values) / len(values) if values else 0.0  # noqa: E731
        result = {"eval/reward": mean(rewards), "eval/response_length": mean(lengths),
                  "eval/responses": float(len(examples)), **({"eval/objective/kl": mean(kls)} if kls else {})}
        if self.eval_judge is not None and self.accelerator.is_main_process:
            result.update(self.eval_judge.against_step_zero(examples, texts))
        return result

    def save_final(self) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            policy = self.unwrapped
            if self.config.lora and self.config.merge_lora:
                policy = copy.deepcopy(policy).merge_and_unload()
            policy.save_pretrained(self.out, safe_serialization=True)
            self.tokenizer.save_pretrained(self.out)
        self.accelerator.wait_for_everyone()


def prepare_grpo(config: GRPOConfig) -> GRPOTrainer:
    """Check the prompts, load the policy (and a reference only when `--beta` > 0 without LoRA) and the rewards."""
    from cai.train.data import DataError
    from cai.train.modeling import add_lora, load_causal_lm, load_tokenizer
    from cai.train.rollouts import load_prompt_examples
    from cai.train.sft import split_eval

    tokenizer, path = load_tokenizer(config.model, config.trust_remote_code)
    examples = load_prompt_examples(config.data, tokenizer, config.limit, config.max_prompt_length)
    train, held_out = split_eval(examples, config.eval_fraction, config.seed)
    if config.eval_data:
        held_out = load_prompt_examples(config.eval_data, tokenizer, None, config.max_prompt_length)
    prompts_per_step = config.rollout_batch_size // config.num_generations
    if len(train) < prompts_per_step:
        raise DataError(f"{len(train)} training prompts, fewer than the {prompts_per_step} a step takes")
    rewards = Rewards.from_config(config)
    policy = load_causal_lm(path, config, torch.float32)
    reference = None
    if config.beta and not config.lora:
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
    if config.lora:
        policy = add_lora(policy, config)
    return GRPOTrainer(config, policy, tokenizer, train, held_out, reference, rewards,
                       {"task": "grpo", "model_path": path, "rewards": rewards.describe(),
                        "reference_loaded": reference is not None or bool(config.beta and config.lora)})
