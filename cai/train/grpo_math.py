"""The arithmetic of critic-free policy gradients (`cai train grpo`) on [completions] rewards and [completions,
response-token] tensors with a 0/1 mask; completions come in groups of G consecutive rows, one group per prompt.

    group_advantages(rewards, G, "grpo")            # (r - group mean) / (group std + 1e-4), one per completion
    group_advantages(rewards, G, "rloo")            # r - mean of the other G - 1 of its group
    reinforce_pp_returns(scores, kl, mask, beta)    # per-token r - beta x (KL summed from that token on)
    clipped_loss(logprobs, old, advantages, mask, 0.2, "grpo", max_new_tokens, ref_logprobs, beta)

The group std is the sample std (n - 1), as TRL's GRPOTrainer takes it. The KL penalty of the loss is the k3
estimator exp(ref - logp) - (ref - logp) - 1 per token (non-negative, unbiased for KL(policy || ref)).
"""

from __future__ import annotations

import torch

EPS = 1e-4


def group_advantages(rewards: torch.Tensor, group_size: int, kind: str, scale: bool = True) -> torch.Tensor:
    """One advantage per completion from its group's rewards (`grpo` or `rloo`)."""
    groups = rewards.view(-1, group_size)
    mean = groups.mean(1, keepdim=True)
    if kind == "rloo":
        # leave one out: r_i - (sum - r_i) / (G - 1) = G / (G - 1) x (r_i - mean)
        return ((groups - mean) * group_size / (group_size - 1)).reshape(-1)
    if kind == "grpo":
        centred = groups - mean
        if scale:
            centred = centred / (groups.std(1, keepdim=True) + EPS)
        return centred.reshape(-1)
    raise ValueError(f"unknown group advantage {kind!r}")


SAME_SCORE = 1e-5
"""Two rewards within this fraction of the batch's largest magnitude (at least 1) count as the same score: float32
keeps about 7 digits, so an absolute tolerance would call rounding at magnitude 1000 a signal."""


def zero_variance_share(rewards: torch.Tensor, group_size: int) -> float:
    """The share of groups whose completions all scored the same: they carry no learning signal."""
    groups = rewards.view(-1, group_size)
    tolerance = SAME_SCORE * max(1.0, float(rewards.abs().max())) if rewards.numel() else 0.0
    return float(((groups.max(1).values - groups.min(1).values) <= tolerance).float().mean())


def reinforce_pp_returns(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """REINFORCE++'s per-token return before normalisation: the completion's score minus beta times the KL of
    this token and every later one (gamma 1: the score sits on the last token)."""
    penalty = (beta * kl * mask).flip(1).cumsum(1).flip(1)
    return (scores.unsqueeze(1) - penalty) * mask


def normalise(values: torch.Tensor, mask: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """(values - mean) / (std + 1e-4) on the real tokens (the moments are the whole batch's, over processes)."""
    return (values - mean) / (std + EPS) * mask


def k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    diff = ref_logprobs - logprobs
    return torch.exp(diff) - diff - 1


def clipped_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                 cliprange: float, loss_type: str, max_new_tokens: int, ref_logprobs: torch.Tensor | None = None,
                 beta: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate (plus beta x k3 KL when a reference is given), averaged as `loss_type` says;
    `advantages` are per token ([B, T], a completion's value repeated for grpo and rloo)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped, clipped = -advantages * ratio, -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
    per_token = torch.maximum(unclipped, clipped)
    kl = None
    if ref_logprobs is not None and beta:
        kl = k3(logprobs, ref_logprobs)
        per_token = per_token + beta * kl
    per_token = per_token * mask
    if loss_type == "grpo":
        loss = (per_token.sum(1) / mask.sum(1).clamp(min=1)).mean()
    elif loss_type == "dapo":
        loss = per_token.sum() / mask.sum().clamp(min=1)
    elif loss_type == "dr_grpo":
        loss = per_token.sum() / (mask.shape[0] * max_new_tokens)
    else:
        raise ValueError(f"unknown loss type {loss_type!r}")
    tokens = mask.sum().clamp(min=1)
    stats = {"policy/clipfrac": ((clipped > unclipped).float() * mask).sum() / tokens,
             "policy/ratio": (ratio * mask).sum() / tokens}
    if kl is not None:
        stats["objective/k3_kl"] = (kl * mask).sum() / tokens
    return loss, {k: v.detach() for k, v in stats.items()}
