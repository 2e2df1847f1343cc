"""One batch of PPO experience: the rollouts and everything computed from them before the updates.

Shapes: B rollouts, T = the longest response in the batch, L = padded prompt + response width.
    batch["input_ids"], ["attention_mask"], ["position_ids"]: [B, L]; ["response_ids"], ["response_mask"]: [B, T]
    raw_scores, scores: [B] (scores after the missing-end penalty); cost.costs: [B] (with a cost model)
    old_logprobs, ref_logprobs, old_values, kl, rewards, advantages, returns: [B, T] (0 outside the response)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
