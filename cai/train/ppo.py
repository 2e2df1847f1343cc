"""`cai train ppo`: PPO of a policy against a reward model, with a per-token KL penalty to a frozen reference
(the RL stage of Constitutional AI, RL from AI feedback).

    cai train ppo --model outputs/sft --reward-model outputs/rm --data red-team --out outputs/ppo

Each step: sample one response per prompt (`rollouts.py`), score it with the reward model, compute per-token
rewards (score on the last token, -kl_coef * (logp - ref_logp) on every token), GAE advantages and returns, then
`ppo_epochs` passes of clipped policy and value updates in minibatches of batch_size x accumulation. Dropout is
off throughout, so the first pass starts from ratio 1. The value function is a linear head on the policy's last
hidden state (`--value-model head`) or a critic initialised from the reward model (`separate`). The maths is in
`ppo_math.py`; the loop, checkpoints, resume and metrics are the shared trainer's (`loop.py`).

Safe RLHF (`--cost-model C --cost-limit d`): each episode is also scored by a cost model; a cost value (a second
head output, or a critic from the cost model) gives cost advantages by GAE (the cost on the last token, no KL
term), and the policy follows (A_r - lambda A_c) / (1 + lambda), whitened afterwards like plain advantages.
lambda >= 0 rises by `lambda_lr` x (mean episode cost - d) after each step, capped at `lambda_max`
(`ppo_math.LagrangeMultiplier`); `objective/cost` and `objective/lambda` are logged per step.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from cai.train.data import DataError
from cai.train.experience import (
    Experience,
    ExperienceMaker,
    PolicyAndValue,
    kept,
    response_logprobs,
    response_values,
)
from cai.train.judge_win_rate import eval_judge_for, response_strings
from cai.train.loop import Trainer
from cai.train.modeling import add_lora, load_causal_lm, load_tokenizer
from cai.train.ppo_math import (
    KLController,
    LagrangeMultiplier,
    entropy_from_logits,
    masked_mean,
    policy_loss,
    value_loss,
)
from cai.train.rl_config import PPOConfig
from cai.train.rollouts import OnPolicySteps, RolloutGenerator, load_prompt_examples
from cai.train.scoring import is_ensemble, load_reward_model, make_scorer, members
from cai.train.sft import split_eval
from cai.train.vllm_rollouts import make_rollouts


class PPOTrainer(ExperienceMaker, OnPolicySteps, Trainer):
    drop_last = True  # every step is rollout_batch_size rollouts, split into whole minibatches
    def __init__(self, config: PPOConfig, model: PolicyAndValue, tokenizer: Any, prompts: list[dict],
                 eval_prompts: list[dict], reference: torch.nn.Module | None, extra_manifest: dict):
        super().__init__(config, model, tokenizer, prompts, lambda rows: rows, None, eval_prompts, extra_manifest)
        device = self.accelerator.device
        self.reference = reference.to(device) if reference is not None else None
        self.scorer = make_scorer(config.reward_model, config.reward_ensemble, config.ensemble_std_weight,
                                  batch_size=config.batch_size, trust_remote_code=config.trust_remote_code,
                                  device=device)
        self.kl = KLController(config.kl_coef, config.target_kl, config.kl_horizon)
        self.cost_scorer = None
        self.multiplier = None
        if config.cost_model:
            self.cost_scorer = make_scorer(config.cost_model, batch_size=config.batch_size,
                                           trust_remote_code=config.trust_remote_code, device=device)
            self.multiplier = LagrangeMultiplier(config.lambda_init, config.lambda_lr, config.cost_limit,
                                                 config.lambda_max, config.lambda_window)
        self.episodes = 0
        self.rollouts: RolloutGenerator = make_rollouts(config, self.unwrapped.policy, self.tokenizer,
                                                        extra_manifest["model_path"],
                                                        self.accelerator.num_processes)
        self.eval_judge = eval_judge_for(config, self.out, self.accelerator.is_main_process,
                                         bool(self.eval_examples))
        if self.eval_judge is not None:
            self.manifest["eval_judge"] = self.eval_judge.describe()  # recorded with the run

    @property
    def unwrapped(self) -> PolicyAndValue:
        return self.accelerator.unwrap_model(self.model)

    def draw_size(self) -> int:
        return self.config.rollout_batch_size

    def extra_state(self) -> dict[str, Any]:
        state = {"kl_coef": self.kl.value, "episodes": self.episodes}
        if self.multiplier is not None:
            state["lambda"] = {"value": self.multiplier.value, "history": self.multiplier.history}
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.kl.value, self.episodes = state["kl_coef"], state["episodes"]
        if self.multiplier is not None and "lambda" in state:
            self.multiplier.value, self.multiplier.history = state["lambda"]["value"], state["lambda"]["history"]

    def learn(self, exp: Experience) -> dict[str, list[float]]:
        """`ppo_epochs` passes of clipped policy and value updates over the experience, in shuffled minibatches
        of batch_size x accumulation; returns every micro-batch's statistics."""
        config = self.config
        stats: dict[str, list[float]] = {}
        for epoch in range(config.ppo_epochs):
            order = torch.randperm(len(exp), generator=torch.Generator().manual_seed(
                config.seed * 1_000_003 + self.step * 1000 + epoch)).to(exp.mask.device)
            for micro in range(0, len(exp), config.batch_size):
                rows = order[micro: micro + config.batch_size]
                for name, value in self.learn_rows(exp, rows).items():
                    stats.setdefault(name, []).append(value)
        return stats

    def learn_rows(self, exp: Experience, rows: torch.Tensor) -> dict[str, float]:
        config, sub, mask = self.config, exp.rows(rows), exp.mask[rows]
        with self.accelerator.accumulate(self.model), self.accelerator.autocast():
            logits, values, cost_values = self.model(sub["input_ids"], sub["attention_mask"], sub["position_ids"],
                                                     kept(sub))
            logprobs, scaled = response_logprobs(logits, sub, config.temperature)
            pg_loss, pg_stats = policy_loss(logprobs, exp.old_logprobs[rows], exp.advantages[rows], mask,
                                            config.cliprange)
            vf_loss, vf_stats = value_loss(response_values(values, sub), exp.old_values[rows], exp.returns[rows],
                                           mask, config.cliprange_value)
            if exp.cost is not None:
                cost_vf_loss, cost_stats = value_loss(response_values(cost_values, sub), exp.cost.old_values[rows],
                                                      exp.cost.returns[rows], mask, config.cliprange_value)
                vf_stats.update({"cost_val/loss": cost_vf_loss, "cost_val/vpred": cost_stats["val/vpred"]})
                vf_loss = vf_loss + cost_vf_loss
            loss = pg_loss + config.vf_coef * vf_loss
            norm = self.backward_and_step(loss)
        with torch.no_grad():
            entropy = masked_mean(entropy_from_logits(scaled), mask)
        stats = {name: float(value.detach()) for name, value in {
            **pg_stats, **vf_stats, "policy/entropy": entropy, "loss/policy": pg_loss, "val/loss": vf_loss,
            "loss/total": loss}.items()}
        return stats if norm is None else {**stats, "grad_norm": norm}

    def ppo_step(self, examples: list[dict]) -> dict[str, float]:
        """One PPO iteration: experience, updates, the KL controller and the step's metrics."""
        started = time.monotonic()
        exp = self.make_experience(examples)
        stats = self.learn(exp)
        mask, kl_sum = exp.mask, exp.kl.sum(1)
        non_score = (-self.kl.value * exp.kl).sum(1)
        result = {name: sum(v) / len(v) for name, v in stats.items()}
        result.update({
            "objective/kl": float(kl_sum.mean()),
            "objective/kl_coef": self.kl.value,
            "objective/entropy": float((-exp.old_logprobs * mask).sum(1).mean()),
            "objective/non_score_reward": float(non_score.mean()),
            "objective/scores": float(exp.raw_scores.mean()),
            "objective/rlhf_reward": float((exp.scores + non_score).mean()),
            "val/returns": float(masked_mean(exp.returns, mask)),
            "response_length": float(mask.sum(1).float().mean()),
            "eos_fraction": float(torch.tensor([bool(r) for r in self._ended(exp.batch)]).float().mean()),
            "time/rollout_s": exp.rollout_seconds,
            "time/step_s": time.monotonic() - started,
        })
        # every process adapts the coefficient (and lambda) from global means, so they keep one value
        episodes = len(exp) * self.accelerator.num_processes
        means = self.global_mean({"kl": float(kl_sum.mean()),
                                  **({"cost": float(exp.cost.costs.mean())} if exp.cost is not None else {})})
        self.kl.update(means["kl"], episodes)
        if exp.cost is not None:
            result.update({"objective/cost": float(exp.cost.costs.mean()), "objective/lambda": self.multiplier.value,
                           "objective/cost_violation": means["cost"] - self.config.cost_limit,
                           "objective/unsafe_share": float((exp.cost.costs > 0).float().mean())})
            self.multiplier.update(means["cost"])
        self.episodes += episodes
        result["episodes"] = self.episodes
        result.update(exp.macro)
        self.rollouts.sync_weights(self.unwrapped.policy)
        return result

    def _ended(self, batch: dict[str, torch.Tensor]) -> list[bool]:
        lengths = batch["response_mask"].sum(1).long().tolist()
        return [int(batch["response_ids"][i, n - 1]) in self.rollouts.stop for i, n in enumerate(lengths)]

    # --- the loop ------------------------------------------------------------------------------------------------
    def train(self) -> dict[str, float]:
        try:
            return self._train()
        finally:  # engines beside training are shut down whatever happened (never left to the garbage collector)
            self.close()

    def close(self) -> None:
        for closing in (self.rollouts, self.eval_judge):
            if getattr(closing, "close", None) is not None:
                closing.close()

    def _train(self) -> dict[str, float]:
        config = self.config
        bar = self.start()
        if self.step:  # resumed: a vLLM sampler must serve the restored weights, not the starting ones
            self.rollouts.sync_weights(self.unwrapped.policy)
        self.model.eval()  # dropout off: the first update starts at ratio 1
        last: dict[str, float] = {}
        if self.step == 0 and self.eval_examples:
            self.log.write(0, self.evaluate())
        source = self._epoch_batches()
        started, tokens = time.monotonic(), 0
        while self.step < self.total_steps:
            values = self.ppo_step([self.train_examples[i] for i in next(source)])
            self.step += 1
            tokens += int(values["response_length"] * config.rollout_batch_size)
            if self.step % config.logging_steps == 0 or self.step == self.total_steps:
                values = {**self.global_mean(values), "episodes": self.episodes}
                values.update({"learning_rate": self.scheduler.get_last_lr()[0], "epoch": self.epoch,
                               "tokens": tokens, "tokens_per_s": tokens / max(time.monotonic() - started, 1e-9)})
                self.log.write(self.step, values)
                last = values
                if bar is not None:
                    bar.set_postfix_str(f"score {values['objective/scores']:.3f}, kl {values['objective/kl']:.3f}")
            self.end_of_step(bar)
        return self.finish(bar, last)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out prompts, `eval_samples` responses each, with fixed draws at every evaluation (torch's generator
        forked and seeded for `model.generate`; a seed per request for vLLM, whose engine process torch's seed
        never reaches): mean score, KL to the reference summed over the response, and their combination."""
        examples = [e for e in self.eval_examples[: self.config.eval_prompts or None]
                    for _ in range(self.config.eval_samples)]
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        scores, kls, lengths, costs, texts = [], [], [], [], []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed + 7919)
            for start in range(0, len(examples), self.config.rollout_batch_size):
                chunk = examples[start: start + self.config.rollout_batch_size]
                seeds = [self.config.seed * 100_003 + 7919 + i for i in range(start, start + len(chunk))]
                batch, raw, _, cost = self.sample(chunk, seeds)
                with self.accelerator.autocast():
                    logits = self.model(batch["input_ids"], batch["attention_mask"], batch["position_ids"],
                                        kept(batch))[0]
                logprobs = response_logprobs(logits, batch, self.config.temperature)[0]
                kl = ((logprobs - self.reference_logprobs(batch)) * batch["response_mask"]).sum(1)
                scores += raw.tolist()
                kls += kl.tolist()
                lengths += batch["response_mask"].sum(1).tolist()
                costs += [] if cost is None else cost.tolist()
                texts += response_strings(self.tokenizer, batch)
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        result = {"eval/objective/scores": mean(scores), "eval/objective/kl": mean(kls),
                  "eval/objective/rlhf_reward": mean(scores) - self.kl.value * mean(kls),
                  "eval/response_length": mean(lengths), "eval/responses": float(len(examples))}
        if costs:
            result.update({"eval/objective/cost": mean(costs),
                           "eval/objective/unsafe_share": sum(c > 0 for c in costs) / len(costs)})
        if self.eval_judge is not None and self.accelerator.is_main_process:
            result.update(self.eval_judge.against_step_zero(examples, texts))
        return result

    def save_final(self) -> None:
        """The policy as a plain causal LM in `out` (LoRA merged when asked), the value function beside it in
        `out/value/`."""
        from safetensors.torch import save_file

        self.accelerator.wait_for_everyone()
        unwrapped = self.unwrapped
        if self.accelerator.is_main_process:
            policy = unwrapped.policy
            if self.config.lora and self.config.merge_lora:
                policy = copy.deepcopy(policy).merge_and_unload()
            policy.save_pretrained(self.out, safe_serialization=True)
            self.tokenizer.save_pretrained(self.out)
            value_dir = self.out / "value"
            value_dir.mkdir(exist_ok=True)
            if unwrapped.critic is None:  # one output per value: [reward] or [reward, cost]
                save_file({k: v.detach().cpu().contiguous() for k, v in unwrapped.value_head.state_dict().items()},
                          str(value_dir / "value_head.safetensors"))
            else:
                unwrapped.critic.save_pretrained(value_dir, safe_serialization=True)
                if unwrapped.cost_critic is not None:
                    unwrapped.cost_critic.save_pretrained(self.out / "cost_value", safe_serialization=True)
        self.accelerator.wait_for_everyone()


def prepare_ppo(config: PPOConfig) -> PPOTrainer:
    from transformers import set_seed

    set_seed(config.seed)  # the value head's initial weights
    tokenizer, path = load_tokenizer(config.model, config.trust_remote_code)
    examples = load_prompt_examples(config.data, tokenizer, config.limit, config.max_prompt_length)
    train, held_out = split_eval(examples, config.eval_fraction, config.seed)
    if config.eval_data:
        held_out = load_prompt_examples(config.eval_data, tokenizer, None, config.max_prompt_length)
    if len(train) < config.rollout_batch_size:
        raise DataError(f"{len(train)} training prompts, fewer than rollout_batch_size={config.rollout_batch_size}")
    policy = load_causal_lm(path, config, torch.float32)  # only once the prompts are known to be usable
    reference = None
    if config.reference_mode == "copy":
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
    if config.lora:
        policy = add_lora(policy, config)
    critic = cost_critic = None
    if config.value_model == "separate":
        first = lambda path: members(path)[0] if is_ensemble(path) else path  # noqa: E731
        critic = load_reward_model(first(config.reward_model), config.trust_remote_code)[0]
        if config.cost_model:
            cost_critic = load_reward_model(first(config.cost_model), config.trust_remote_code)[0]
    model = PolicyAndValue(policy, critic, cost_critic, cost=config.cost_model is not None)
    return PPOTrainer(config, model, tokenizer, train, held_out, reference,
                      {"task": "ppo", "model_path": path, "reward_model": config.reward_model,
                       "cost_model": config.cost_model, "reference": config.reference_mode,
                       "value_model": config.value_model, "prompts": len(train), "eval_prompts": len(held_out)})
