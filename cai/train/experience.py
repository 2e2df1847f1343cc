"""One batch of PPO experience: the rollouts and everything computed from them before the updates, and the
`ExperienceMaker` part of the PPO trainer that makes it (sample, score, reference log-probs, per-token rewards,
advantages); `ppo.py` keeps the loop and the updates.

Shapes: B rollouts, T = the longest response in the batch, L = padded prompt + response width.
    batch["input_ids"], ["attention_mask"], ["position_ids"]: [B, L]; ["response_ids"], ["response_mask"]: [B, T]
    raw_scores, scores: [B] (scores after the missing-end penalty); cost.costs: [B] (with a cost model)
    old_logprobs, ref_logprobs, old_values, kl, rewards, advantages, returns: [B, T] (0 outside the response)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from cai.train.macro import is_token_level, macro_gae, macro_spans, span_stats
from cai.train.ppo_math import combine_advantages, gae, token_rewards, whiten
from cai.train.rollouts import response_texts, rollout_batch
from cai.train.scoring import token_scores


@dataclass
class CostExperience:
    costs: torch.Tensor
    """[B] the cost model's score of each episode."""
    old_values: torch.Tensor
    returns: torch.Tensor


@dataclass
class Experience:
    batch: dict[str, torch.Tensor]
    raw_scores: torch.Tensor
    scores: torch.Tensor
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    old_values: torch.Tensor
    kl: torch.Tensor
    """Per-token log-ratio of the policy to the reference (the KL penalty's estimate)."""
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    rollout_seconds: float = 0.0
    cost: CostExperience | None = None
    """Under a cost model: the episodes' costs, cost values and returns (`advantages` then combine both)."""
    macro: dict[str, float] = field(default_factory=dict)
    """Macro-action PPO: mean macro length and macros per response (empty at token level)."""

    @property
    def mask(self) -> torch.Tensor:
        return self.batch["response_mask"]

    def __len__(self) -> int:
        return self.mask.shape[0]

    def rows(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch's tensors for the rollouts `index` (the scalar `context` width is shared)."""
        return {k: v if k == "context" else v[index] for k, v in self.batch.items()}


def kept(batch: dict[str, torch.Tensor]) -> int:
    """Positions whose logits matter: the one before the response and the response (bar its last token)."""
    return batch["response_ids"].shape[1] + 1


def response_logprobs(logits: torch.Tensor, batch: dict[str, torch.Tensor], temperature: float,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the response tokens under temperature-scaled logits (the distribution the rollouts
    were sampled from), and those logits. `logits` cover the last `kept(batch)` positions or all of them."""
    context, length = int(batch["context"]), batch["response_ids"].shape[1]
    start = context - 1 - (batch["input_ids"].shape[1] - logits.shape[1])
    logits = logits[:, start: start + length].float() / temperature
    tokens = batch["response_ids"].unsqueeze(-1)
    return torch.gather(logits, 2, tokens).squeeze(-1) - logits.logsumexp(-1), logits


def response_values(values: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """V(state before each response token)."""
    context, length = int(batch["context"]), batch["response_ids"].shape[1]
    return values[:, context - 1: context - 1 + length]


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


class ExperienceMaker:
    """The PPO trainer's rollouts and what is computed from them; it reads the trainer's config, model, reference,
    rollouts, scorers, KL controller and Lagrange multiplier."""

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
    def sample(self, examples: list[dict], seeds: list[int] | None = None) -> tuple[dict[str, torch.Tensor],
                                                                                    torch.Tensor, torch.Tensor,
                                                                                    torch.Tensor | None]:
        """Rollouts for `examples` (each draw fixed by its seed when `seeds` is given): the batch, raw scores,
        scores after the missing-end penalty, and costs (None without a cost model)."""
        prompt_ids = [e["prompt_ids"] for e in examples]
        responses = self.rollouts.generate(prompt_ids, seeds)
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
        spans = None if is_token_level(config.macro_action) else self.macro_spans(batch, ref_logprobs)
        advantages, returns = self.advantages(rewards, old_values, mask, spans)
        cost = None
        if costs is not None:
            # the cost sits on the last token, with no KL term (the KL penalty is the reward's business)
            old_cost_values = response_values(cost_values, batch) * mask
            cost_rewards = token_rewards(costs, old_logprobs, old_logprobs, mask, 0.0)[0]
            cost_advantages, cost_returns = self.advantages(cost_rewards, old_cost_values, mask, spans)
            advantages = combine_advantages(advantages, cost_advantages, self.multiplier.value)
            cost = CostExperience(costs, old_cost_values, cost_returns)
        if config.whiten_advantages:
            advantages = whiten(advantages, mask)
        return Experience(batch, raw_scores, scores, old_logprobs, ref_logprobs, old_values, kl, rewards,
                          advantages, returns, rollout_seconds, cost, span_stats(spans) if spans else {})

    def advantages(self, rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                   spans: list[list[int]] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE per token, or per macro action when responses are cut into spans (cai/train/macro.py)."""
        if spans is None:
            return gae(rewards, values, mask, self.config.gamma, self.config.lam)
        return macro_gae(rewards, values, mask, spans, self.config.gamma, self.config.lam, self.config.macro_value)

    def macro_spans(self, batch: dict[str, torch.Tensor], ref_logprobs: torch.Tensor) -> list[list[int]]:
        """Each response's macro index per token, as `--macro-action` cuts it (seeded per step for `random`)."""
        lengths = [int(n) for n in batch["response_mask"].sum(1).tolist()]
        texts = None
        if self.config.macro_action == "parsing":
            texts = [[self.tokenizer.decode([t]) for t in row[:n].tolist()]
                     for row, n in zip(batch["response_ids"], lengths, strict=True)]
        return macro_spans(self.config.macro_action, lengths, (-ref_logprobs).tolist(), texts,
                           self.config.macro_ppl_threshold, seed=self.config.seed * 1_000_003 + getattr(self, "step", 0))
