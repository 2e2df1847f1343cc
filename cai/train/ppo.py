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

from cai.errors import UsageError
from cai.train.config import PPOConfig
from cai.train.data import DataError, fit_prompt
from cai.train.ensemble import is_ensemble, make_scorer, members
from cai.train.eval_judge import response_strings
from cai.train.experience import CostExperience, Experience, kept, response_logprobs, response_values
from cai.train.loop import Trainer
from cai.train.modeling import add_lora, load_causal_lm, load_tokenizer
from cai.train.ppo_math import (
    KLController,
    LagrangeMultiplier,
    combine_advantages,
    entropy_from_logits,
    gae,
    masked_mean,
    policy_loss,
    token_rewards,
    value_loss,
    whiten,
)
from cai.train.reward import load_reward_model, token_scores
from cai.train.rollouts import RolloutGenerator, TransformersRollouts, response_texts, rollout_batch
from cai.train.sft import split_eval


class PolicyAndValue(torch.nn.Module):
    """The trained parts in one module (one optimizer, one checkpoint): the policy, and a value head on its last
    hidden state or a separate critic. Under a cost model (Safe RLHF) there is a cost value too: a second output
    of the head, or a second critic initialised from the cost model."""

    def __init__(self, policy: torch.nn.Module, critic: torch.nn.Module | None = None,
                 cost_critic: torch.nn.Module | None = None, cost: bool = False):
        super().__init__()
        self.policy = policy
        self.critic = critic
        self.cost_critic = cost_critic
        self.has_cost = cost
        if critic is None:
            hidden = policy.config.get_text_config().hidden_size
            self.value_head = torch.nn.Linear(hidden, 2 if cost else 1)
            torch.nn.init.normal_(self.value_head.weight, std=1.0 / (hidden + 1) ** 0.5)
            torch.nn.init.zeros_(self.value_head.bias)
        elif cost and cost_critic is None:
            raise ValueError("a separate critic under a cost model needs a cost critic")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                logits_to_keep: int = 0):
        """Logits of the last `logits_to_keep` positions (all with 0), values at every position, and cost values
        at every position (None without a cost model)."""
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          output_hidden_states=self.critic is None, use_cache=False, logits_to_keep=logits_to_keep)
        cost_values = None
        if self.critic is None:
            hidden = out.hidden_states[-1]
            heads = self.value_head(hidden.to(self.value_head.weight.dtype)).float()
            values = heads[..., 0]
            if self.has_cost:
                cost_values = heads[..., 1]
        else:
            values = token_scores(self.critic, input_ids, attention_mask, position_ids)
            if self.has_cost:
                cost_values = token_scores(self.cost_critic, input_ids, attention_mask, position_ids)
        return out.logits, values, cost_values


class PPOTrainer(Trainer):
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
        self.rollouts: RolloutGenerator = self._rollouts(extra_manifest["model_path"])
        self.eval_judge = None
        if config.eval_judge and self.eval_examples and self.accelerator.is_main_process:
            from cai.train.eval_judge import EvalJudge

            self.eval_judge = EvalJudge(config.eval_judge, self.out / "eval_judge_baseline.json",
                                        config.eval_judge_constitution, seed=config.seed,
                                        gpu_memory_utilization=config.eval_judge_gpu_memory_utilization)

    def _rollouts(self, model_path: str) -> RolloutGenerator:
        config, policy = self.config, self.unwrapped.policy
        if config.rollouts == "transformers":
            return TransformersRollouts(policy, self.tokenizer, config.max_new_tokens, config.temperature,
                                        config.top_p)
        if self.accelerator.num_processes > 1:
            raise UsageError("--rollouts vllm runs one engine beside one training process; with several processes "
                             "use --rollouts transformers")
        from cai.train.vllm_rollouts import VLLMRollouts

        settings = {"max_model_len": config.max_length, "gpu_memory_utilization": config.rollout_gpu_memory_utilization,
                    "dtype": "bfloat16" if config.bf16 else "float32", "trust_remote_code": config.trust_remote_code}
        return VLLMRollouts(model_path, self.tokenizer, config.max_new_tokens, config.temperature, config.top_p,
                            sync=config.rollout_sync, engine_settings=settings, policy=policy)

    @property
    def unwrapped(self) -> PolicyAndValue:
        return self.accelerator.unwrap_model(self.model)

    def draw_size(self) -> int:
        return self.config.rollout_batch_size

    def draws_per_step(self) -> int:
        return 1

    def updates_per_step(self) -> int:
        minibatch = self.config.batch_size * self.config.gradient_accumulation_steps
        return self.config.ppo_epochs * (self.config.rollout_batch_size // minibatch)

    def extra_state(self) -> dict[str, Any]:
        state = {"kl_coef": self.kl.value, "episodes": self.episodes}
        if self.multiplier is not None:
            state["lambda"] = {"value": self.multiplier.value, "history": self.multiplier.history}
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.kl.value, self.episodes = state["kl_coef"], state["episodes"]
        if self.multiplier is not None and "lambda" in state:
            self.multiplier.value, self.multiplier.history = state["lambda"]["value"], state["lambda"]["history"]

    # --- one batch of rollouts -----------------------------------------------------------------------------------
    @torch.no_grad()
    def reference_logprobs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
        inputs.update(use_cache=False, logits_to_keep=kept(batch))
        with self.accelerator.autocast():
            if self.reference is not None:
                logits = self.reference(**inputs).logits
            else:
                with self.unwrapped.policy.disable_adapter():
                    logits = self.unwrapped.policy(**inputs).logits
        return response_logprobs(logits, batch, self.config.temperature)[0]

    @torch.no_grad()
    def sample(self, examples: list[dict]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor,
                                                    torch.Tensor | None]:
        """Rollouts for `examples`: the batch, raw scores, scores after the missing-end penalty, and costs (None
        without a cost model)."""
        prompt_ids = [e["prompt_ids"] for e in examples]
        responses = self.rollouts.generate(prompt_ids)
        batch = self._to_device(rollout_batch(prompt_ids, responses, self.tokenizer.pad_token_id))
        texts = response_texts(self.tokenizer, responses)
        prompts = [e["messages"] for e in examples]
        device = self.accelerator.device
        raw = torch.tensor(self.scorer.score(prompts, texts), device=device)
        scores = raw.clone()
        if self.config.missing_eos_penalty:
            ended = torch.tensor([r[-1] in self.rollouts.stop for r in responses], device=raw.device)
            scores[~ended] -= self.config.missing_eos_penalty
        costs = None
        if getattr(self, "cost_scorer", None) is not None:
            costs = torch.tensor(self.cost_scorer.score(prompts, texts), device=device)
        return batch, raw, scores, costs

    @torch.no_grad()
    def make_experience(self, examples: list[dict]) -> Experience:
        """Sample, score, then the old log-probs and values, the reference log-probs, per-token rewards with the
        KL penalty, and GAE advantages and returns, all in the precision of the updates."""
        config = self.config
        started = time.monotonic()
        batch, raw_scores, scores, costs = self.sample(examples)
        rollout_seconds = time.monotonic() - started
        mask = batch["response_mask"]
        with self.accelerator.autocast():
            logits, values, cost_values = self.model(batch["input_ids"], batch["attention_mask"],
                                                     batch["position_ids"], kept(batch))
            old_logprobs = response_logprobs(logits, batch, config.temperature)[0]
            old_values = response_values(values, batch) * mask
            del logits, values
            ref_logprobs = self.reference_logprobs(batch)
        rewards, kl = token_rewards(scores, old_logprobs, ref_logprobs, mask, self.kl.value)
        advantages, returns = gae(rewards, old_values, mask, config.gamma, config.lam)
        cost = None
        if costs is not None:
            # the cost sits on the last token, with no KL term (the KL penalty is the reward's business)
            old_cost_values = response_values(cost_values, batch) * mask
            cost_rewards = token_rewards(costs, old_logprobs, old_logprobs, mask, 0.0)[0]
            cost_advantages, cost_returns = gae(cost_rewards, old_cost_values, mask, config.gamma, config.lam)
            advantages = combine_advantages(advantages, cost_advantages, self.multiplier.value)
            cost = CostExperience(costs, old_cost_values, cost_returns)
        if config.whiten_advantages:
            advantages = whiten(advantages, mask)
        return Experience(batch, raw_scores, scores, old_logprobs, ref_logprobs, old_values, kl, rewards,
                          advantages, returns, rollout_seconds, cost)

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
        """Held-out prompts, one response each, sampled with a fixed seed (the same draws at every evaluation):
        mean score, KL to the reference summed over the response, and their combination."""
        examples = [e for e in self.eval_examples[: self.config.eval_prompts or None]
                    for _ in range(self.config.eval_samples)]
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        scores, kls, lengths, costs, texts = [], [], [], [], []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed + 7919)
            for start in range(0, len(examples), self.config.rollout_batch_size):
                chunk = examples[start: start + self.config.rollout_batch_size]
                batch, raw, _, cost = self.sample(chunk)
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
            prompts = [e["messages"] for e in examples]
            baseline = self.eval_judge.baseline(prompts, texts)
            if baseline is not None:
                result.update(self.eval_judge.win_rate(prompts, texts, baseline))
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


def load_prompt_examples(source: str, tokenizer: Any, limit: int | None, max_prompt_length: int) -> list[dict]:
    from cai.inputs import InputProblem, load_prompts

    items = load_prompts(source, limit=limit)
    problems = [item for item in items if isinstance(item, InputProblem)]
    for problem in problems[:5]:
        print(f"cai: skipping prompt {problem.id}: {problem.reason}")
    examples = []
    for item in items:
        if not isinstance(item, InputProblem):
            # the reward model later scores these (cut) messages: the prompt the policy actually saw
            messages, prompt_ids = fit_prompt(tokenizer, item.messages, max_prompt_length)
            examples.append({"id": item.id, "messages": messages, "prompt_ids": prompt_ids})
    if not examples:
        raise DataError(f"{source}: no usable prompts ({len(problems)} problem rows)")
    return examples


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
