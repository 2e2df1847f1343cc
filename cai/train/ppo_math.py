"""PPO's arithmetic on padded [batch, response-token] tensors with a 0/1 mask: per-token rewards with a KL
penalty, GAE, whitening, the clipped policy and value losses, and the adaptive KL controller. Pure functions of
tensors (no models), so each can be checked against numbers worked out by hand (tests/test_ppo_math.py).

Conventions follow Ziegler et al. (2019) and the PPO implementation details of Huang et al. (2024): the reward is
the reward model's score on the last response token minus kl_coef * (logp - ref_logp) on every token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries (unbiased variance); padding comes back as 0."""
    mean = masked_mean(values, mask)
    count = mask.sum()
    var = ((values - mean) ** 2 * mask).sum() / (count - 1).clamp(min=1)
    out = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards -kl_coef * (logp - ref) with each sequence's score added on its last real token.
    Returns (rewards, per-token kl), both zero on padding."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)
    rewards[torch.arange(len(scores), device=mask.device), last] += scores
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float,
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each response (right-padded): the value after the last real token
    is 0. Returns (advantages, returns = advantages + values)."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running * (mask[:, t + 1] if t + 1 < length else 0.0)
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                cliprange: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate: mean over tokens of max(-A r, -A clip(r, 1 - e, 1 + e)), r = exp(logp - old)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"policy/approxkl": 0.5 * masked_mean(log_ratio ** 2, mask),
                 "policy/clipfrac": masked_mean((clipped > unclipped).float(), mask),
                 "policy/ratio": masked_mean(ratio, mask)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """0.5 * mean over tokens of max((v - R)^2, (v_clipped - R)^2), v_clipped within e of the old value."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"val/clipfrac": masked_mean((clipped > unclipped).float(), mask),
                 "val/vpred": masked_mean(values, mask)}
    return loss, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of the softmax over the last dimension."""
    logps = torch.log_softmax(logits.float(), dim=-1)
    return -(logps.exp() * logps).sum(-1)


@dataclass
class KLController:
    """kl_coef, fixed, or adapted toward `target` (Ziegler et al. 2019): the coefficient is multiplied by
    1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon after each batch of n rollouts."""

    value: float
    target: float | None = None
    horizon: int = 10000

    def update(self, kl: float, n_rollouts: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_rollouts / self.horizon


def combine_advantages(reward_advantages: torch.Tensor, cost_advantages: torch.Tensor,
                       multiplier: float) -> torch.Tensor:
    """Safe RLHF's policy advantage (A_r - lambda A_c) / (1 + lambda): the Lagrangian's gradient direction,
    divided by 1 + lambda so its scale (and the clipped step it takes) stays put while lambda grows."""
    return (reward_advantages - multiplier * cost_advantages) / (1.0 + multiplier)


@dataclass
class LagrangeMultiplier:
    """lambda >= 0 of max_policy min_lambda E[reward] - lambda (E[cost] - limit): after each PPO step, projected
    gradient ascent lambda <- clip(lambda + lr * (mean cost over the last `window` steps - limit), 0, maximum).
    It rises while the policy's episodes cost more than the limit and falls back once they cost less."""

    value: float
    lr: float
    limit: float
    maximum: float
    window: int = 1
    history: list[float] | None = None

    def update(self, mean_cost: float) -> float:
        self.history = [*(self.history or []), mean_cost][-self.window:]
        excess = sum(self.history) / len(self.history) - self.limit
        self.value = min(max(self.value + self.lr * excess, 0.0), self.maximum)
        return self.value
