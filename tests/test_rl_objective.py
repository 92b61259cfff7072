"""GRPO's objective against hand-computed values."""

from __future__ import annotations

import math

import torch

from arm.rl.objective import grpo_loss, group_advantages, k3_kl, token_logprobs


def test_equal_rewards_give_zero_advantage_and_no_gradient():
    adv = group_advantages(torch.tensor([[0.5, 0.5, 0.5, 0.5], [1.0, 0.0, 1.0, 0.0]]))
    assert torch.equal(adv[0], torch.zeros(4))
    torch.testing.assert_close(adv[1], torch.tensor([1.0, -1.0, 1.0, -1.0]) / (0.5 + 1e-4) * 0.5)
    logp = torch.randn(4, 5, requires_grad=True)
    terms = grpo_loss(logp, logp.detach(), logp.detach(), adv[0], torch.ones(4, 5), beta=0.0)
    terms.loss.backward()
    assert torch.count_nonzero(logp.grad) == 0


def test_ratio_one_and_no_kl_is_the_plain_policy_gradient():
    """With logp_old = logp and beta 0 the gradient of the loss w.r.t. logp is -A / T per token."""
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([2.0, -1.0])
    terms = grpo_loss(logp, logp.detach(), logp.detach(), adv, mask, beta=0.0)
    # Loss by hand: mean over sequences of -A * mean(ratio) = -(2 * 1 + (-1) * 1) / 2 = -0.5.
    assert math.isclose(terms.loss.item(), -0.5, rel_tol=1e-6)
    terms.loss.backward()
    expected = torch.tensor([[-2 / 3, -2 / 3, -2 / 3], [1 / 2, 1 / 2, 0.0]]) / 2
    torch.testing.assert_close(logp.grad, expected)


def test_kl_is_zero_when_policy_equals_reference_and_positive_otherwise():
    logp = torch.log(torch.tensor([[0.2, 0.5]]))
    assert torch.equal(k3_kl(logp, logp), torch.zeros(1, 2))
    ref = torch.log(torch.tensor([[0.4, 0.5]]))
    kl = k3_kl(logp, ref)
    assert kl[0, 0] > 0 and kl[0, 1] == 0
    # k3 by hand for the first token: r = 0.4 / 0.2 = 2 -> r - log r - 1 = 1 - log 2.
    assert math.isclose(kl[0, 0].item(), 1 - math.log(2), rel_tol=1e-6)


def test_clipping_stops_the_gradient_beyond_the_trust_region():
    logp_old = torch.zeros(1, 1)
    logp = torch.full((1, 1), math.log(1.5), requires_grad=True)  # ratio 1.5 > 1 + 0.2
    terms = grpo_loss(logp, logp_old, logp.detach(), torch.tensor([1.0]), torch.ones(1, 1), clip_eps=0.2, beta=0.0)
    terms.loss.backward()
    assert logp.grad.abs().item() == 0 and terms.clip_fraction.item() == 1.0
    assert math.isclose(terms.loss.item(), -1.2, rel_tol=1e-6)


def test_token_logprobs_pick_the_targets():
    logits = torch.log(torch.tensor([[[0.1, 0.9], [0.7, 0.3]]]))
    torch.testing.assert_close(token_logprobs(logits, torch.tensor([[1, 0]])), torch.log(torch.tensor([[0.9, 0.7]])))
