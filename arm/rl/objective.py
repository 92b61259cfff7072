"""GRPO over image-token spans, as a few visible lines.

For each prompt (or source + instruction) a group of G images is sampled; with rewards r (B, G):

    A        = (r - mean_G(r)) / (std_G(r) + 1e-4)                      group-relative advantage
                                                     (rl.advantage=mean: r - mean_G(r), Dr. GRPO)
    ratio    = exp(logp - logp_old)                                     per image token
    surrogate = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)
    kl       = exp(logp_ref - logp) - (logp_ref - logp) - 1              k3 estimator of KL(policy || ref)
    loss     = mean over sequences of ( mean over the span's tokens of (surrogate + beta * kl) )

>>> import torch
>>> group_advantages(torch.tensor([[1.0, 1.0, 1.0]]))
tensor([[0., 0., 0.]])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """rewards (B, G) -> advantages (B, G); a group whose rewards are all equal gets zeros. With `scale`
    (GRPO) each group is divided by its std, so a group whose rewards differ by little weighs as much as
    one whose differ by much; without (Dr. GRPO) it is only centred, and weighs by its spread."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True, unbiased=False) + eps)


def k3_kl(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference); >= 0, and 0 where the two agree."""
    delta = logp_ref - logp
    return torch.exp(delta) - delta - 1


@dataclass
class GRPOTerms:
    loss: torch.Tensor
    kl: torch.Tensor            # mean per-token KL
    clip_fraction: torch.Tensor  # fraction of tokens whose ratio was clipped in the direction that matters


def grpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, logp_ref: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_eps: float = 0.2, beta: float = 0.01) -> GRPOTerms:
    """logp, logp_old, logp_ref, mask: (N, T) per sampled token (mask 1 inside the image span);
    advantages: (N,) one per sequence. Returns the loss averaged per sequence, then over sequences."""
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - logp_old)
    adv = advantages[:, None]
    unclipped, clipped = ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
    surrogate = -torch.minimum(unclipped, clipped)
    kl = k3_kl(logp, logp_ref)
    per_token = surrogate + beta * kl
    tokens = mask.sum(dim=1).clamp(min=1)
    loss = ((per_token * mask).sum(dim=1) / tokens).mean()
    clip_fraction = ((clipped < unclipped).to(logp.dtype) * mask).sum() / mask.sum().clamp(min=1)
    return GRPOTerms(loss, (kl * mask).sum() / mask.sum().clamp(min=1), clip_fraction)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits (N, T, V) predicting targets (N, T) -> log p(target) (N, T)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
