"""Preference losses on sequence log-probabilities: DPO (`sigmoid`), IPO and the soft-label loss of `cai`.

With policy and reference log-probabilities of the chosen and rejected responses (sums over response tokens),
    delta = (logp_chosen - ref_chosen) - (logp_rejected - ref_rejected)
    sigmoid: -[(1 - eps) log sig(beta delta) + eps log sig(-beta delta)]       (DPO with label smoothing eps)
    soft:    -[q log sig(beta delta) + (1 - q) log sig(-beta delta)], q = (1 - eps) p + eps (1 - p)
             where p is the judge's p_chosen. Its gradient in delta is beta (sig(beta delta) - q): it pulls
             beta delta toward logit(q), so a 55% judgement pushes less than a 95% one, and p = 0.5 pulls
             delta back to 0 (no push while the policy equals its reference, a pull back once it moved)
    ipo:     (delta - 1 / (2 beta))^2                                          (Azar et al., on summed log-probs)
The implicit rewards are beta (logp - ref); `rewards/accuracies` is the share where chosen's beats rejected's.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

LossType = Literal["sigmoid", "ipo", "soft"]


def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                    ref_rejected: torch.Tensor, beta: float, loss_type: LossType = "sigmoid",
                    p_chosen: torch.Tensor | None = None, label_smoothing: float = 0.0,
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-example losses and the usual metrics (per-example tensors, not yet averaged)."""
    delta = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)
    elif loss_type == "soft":
        if p_chosen is None:
            raise ValueError("the soft loss needs p_chosen (the judge's probability) for every pair")
        target = (1 - label_smoothing) * p_chosen + label_smoothing * (1 - p_chosen)
        losses = -target * F.logsigmoid(beta * delta) - (1 - target) * F.logsigmoid(-beta * delta)
    elif loss_type == "ipo":
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown loss type {loss_type!r} (sigmoid, ipo, soft)")
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    metrics = {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margins": chosen_rewards - rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
        "logps/chosen": policy_chosen.detach(),
        "logps/rejected": policy_rejected.detach(),
    }
    return losses, metrics


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Sum of log-probabilities of the labelled tokens of each sequence (labels already aligned with logits:
    position t predicts labels[t]); positions with `ignore_index` do not count.

    One sequence at a time: gather - logsumexp gives log_softmax's numbers without a [batch, length, vocab]
    temporary (logsumexp's own exp buffer is one sequence wide), which is most of a preference step's peak."""
    mask = labels != ignore_index
    safe = labels.masked_fill(~mask, 0)
    rows = []
    for row_logits, row_labels in zip(logits, safe, strict=True):
        row_logits = row_logits.float()
        rows.append(torch.gather(row_logits, 1, row_labels.unsqueeze(-1)).squeeze(-1) - row_logits.logsumexp(-1))
    return (torch.stack(rows) * mask).sum(-1)


def _chunk_token_logps(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       labels: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    return torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def head_sequence_logps(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor,
                        ignore_index: int = -100, rows_per_chunk: int = 1) -> torch.Tensor:
    """`sequence_logps` computed from the final hidden states and the output layer, a few sequences at a time,
    each chunk's logits recomputed in the backward pass instead of kept (activation checkpointing of the head).
    Only one chunk's [length, vocab] logits exist at any moment, in the forward or the backward pass, which at a
    50k-250k vocabulary is most of a preference step's memory; the price is the head's matmul done twice."""
    from torch.utils.checkpoint import checkpoint

    mask = labels != ignore_index
    safe = labels.masked_fill(~mask, 0)
    chunks = []
    for start in range(0, hidden.shape[0], rows_per_chunk):
        args = (hidden[start: start + rows_per_chunk], head.weight, head.bias, safe[start: start + rows_per_chunk])
        chunks.append(checkpoint(_chunk_token_logps, *args, use_reentrant=False) if torch.is_grad_enabled()
                      else _chunk_token_logps(*args))
    return (torch.cat(chunks) * mask).sum(-1)


def reward_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, p_chosen: torch.Tensor | None = None,
                margin: torch.Tensor | None = None, center_coefficient: float = 0.0,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley-Terry loss of a reward model, per example:
        d = r_chosen - r_rejected - margin
        -[p log sig(d) + (1 - p) log sig(-d)] + c (r_chosen + r_rejected)^2
    with p the judge's p_chosen (1 without soft labels) and c the centring coefficient."""
    d = r_chosen - r_rejected
    if margin is not None:
        d = d - margin
    p = torch.ones_like(d) if p_chosen is None else p_chosen.to(d.dtype)
    losses = -p * F.logsigmoid(d) - (1 - p) * F.logsigmoid(-d)
    if center_coefficient:
        losses = losses + center_coefficient * (r_chosen + r_rejected) ** 2
    diff = (r_chosen - r_rejected).detach()
    metrics = {
        "rewards/chosen": r_chosen.detach(),
        "rewards/rejected": r_rejected.detach(),
        "rewards/margins": diff,
        "rewards/accuracies": (diff > 0).float(),
        "rewards/p_model": torch.sigmoid(diff),
        "rewards/brier": (torch.sigmoid(diff) - p) ** 2,
    }
    return losses, metrics


def logconf_weight(progress: float, alpha: float, warmup: float) -> float:
    """The confidence loss's weight at `progress` (share of training done, 0..1): ramped linearly from 0 to
    `alpha` over the first `warmup` share of training, then held (Burns et al., arXiv 2312.09390)."""
    if warmup <= 0:
        return alpha
    return alpha * min(1.0, max(progress, 0.0) / warmup)


def hardened(p_model: torch.Tensor, positive_share: float) -> torch.Tensor:
    """The student's own predictions made hard: 1 for the `positive_share` of the batch it is most sure prefer
    `chosen`, 0 for the rest. The threshold is the (1 - share) quantile of the predictions, so the hardened labels
    keep the weak labels' class balance instead of all following the student's drift to one side."""
    if positive_share <= 0 or positive_share >= 1:
        return torch.full_like(p_model.detach(), float(positive_share >= 1))
    threshold = torch.quantile(p_model.detach().float(), 1.0 - positive_share)
    return (p_model.detach() >= threshold).to(p_model.dtype)


def logconf_reward_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, p_weak: torch.Tensor, weight: float,
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The auxiliary confidence loss for a pairwise reward model trained on weak labels: the Bradley-Terry loss
    toward the target (1 - w) p_weak + w hard(sigma(r_chosen - r_rejected)), where `hard` keeps the weak labels'
    share of pairs that prefer `chosen` (see `hardened`). With w = 0 it is the plain soft-label loss."""
    p_model = torch.sigmoid(r_chosen - r_rejected)
    share = float((p_weak > 0.5).float().mean())
    target = (1 - weight) * p_weak.to(p_model.dtype) + weight * hardened(p_model, share)
    losses, metrics = reward_loss(r_chosen, r_rejected, target)
    metrics["logconf/weight"] = torch.full_like(losses, weight)
    return losses, metrics


def cost_loss(c_chosen: torch.Tensor, c_rejected: torch.Tensor, p_chosen: torch.Tensor,
              unsafe_chosen: torch.Tensor, unsafe_rejected: torch.Tensor, classification_weight: float = 1.0,
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Safe RLHF's cost-model loss, per pair, with soft targets. `chosen` is the less harmful response with
    probability p (the judge's harmlessness label); u is the judge's P(response is harmful), NaN when unknown:
        -[p log sig(c_rej - c_cho) + (1 - p) log sig(c_cho - c_rej)]                (more harmful costs more)
        + w * sum over the known responses of -[u log sig(c) + (1 - u) log sig(-c)]  (harmful above 0, safe below)
    Metrics: pair accuracy (the rejected costs more, per pair), and over the batch's known responses sign
    accuracy (c > 0 exactly when u > 0.5) and Brier (sig(c) - u)^2 (left out when no response is known)."""
    d = c_rejected - c_chosen
    p = p_chosen.to(d.dtype)
    losses = -p * F.logsigmoid(d) - (1 - p) * F.logsigmoid(-d)
    costs, targets = torch.stack([c_chosen, c_rejected], 1), torch.stack([unsafe_chosen, unsafe_rejected], 1)
    known = ~torch.isnan(targets)
    u = torch.where(known, targets, torch.zeros_like(targets)).to(costs.dtype)
    classification = (-u * F.logsigmoid(costs) - (1 - u) * F.logsigmoid(-costs)) * known
    losses = losses + classification_weight * classification.sum(1)
    metrics = {"costs/chosen": c_chosen.detach(), "costs/rejected": c_rejected.detach(),
               "costs/pair_accuracy": (d.detach() > 0).float()}
    if known.any():
        c, t = costs.detach()[known], u[known]
        metrics["costs/sign_accuracy"] = ((c > 0) == (t > 0.5)).float().mean().reshape(1)
        metrics["costs/brier"] = ((torch.sigmoid(c) - t) ** 2).mean().reshape(1)
    return losses, metrics
