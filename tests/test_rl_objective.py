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


def test_centred_advantages_weigh_each_group_by_its_spread():
    """Dr. GRPO (rl.advantage=mean): r - mean, so a group whose rewards barely differ barely moves the
    policy, where GRPO's division by the std gives it unit-sized advantages."""
    rewards = torch.tensor([[2.0, 2.0, 2.0, 1.99], [2.0, 0.0, 1.0, 1.0]])
    centred = group_advantages(rewards, scale=False)
    torch.testing.assert_close(centred, torch.tensor([[0.0025, 0.0025, 0.0025, -0.0075], [1.0, -1.0, 0.0, 0.0]]))
    scaled = group_advantages(rewards)
    assert scaled[0].abs().max() > 1.5 and torch.allclose(scaled[1], centred[1] / (0.5 ** 0.5 + 1e-4))


def test_dynamic_sampling_keeps_each_tasks_share_of_the_most_varied_groups():
    import numpy as np

    from arm.rl.data import Prompt
    from arm.rl.train import Rollout

    g = 2
    tasks = ["t2i"] * 4 + ["edit"] * 4
    spreads = [0.0, 0.3, 0.1, 0.2, 0.5, 0.0, 0.4, 0.05]   # each group's rewards: (1 - s, 1 + s), std s
    rewards = [{"total": 1 + sign * s} for s in spreads for sign in (-1, 1)]
    roll = Rollout([Prompt(t, f"p{i}", index=i) for i, t in enumerate(tasks)], [[(1.0, [i])] for i in range(16)],
                   torch.arange(16)[:, None], np.arange(16)[:, None], rewards)
    kept = roll.most_varied(4, g)
    assert [p.index for p in kept.prompts] == [1, 3, 4, 6]   # the two most varied of each task, in order
    assert [mix[0][1] for mix in kept.mixtures] == [[2], [3], [6], [7], [8], [9], [12], [13]]
    assert kept.codes.flatten().tolist() == [2, 3, 6, 7, 8, 9, 12, 13] and kept.images.flatten().tolist() == [2, 3, 6, 7, 8, 9, 12, 13]
    torch.testing.assert_close(kept.totals(g).std(dim=1, unbiased=False), torch.tensor([0.3, 0.2, 0.5, 0.4]))
    assert [p.index for p in roll.most_varied(3, g).prompts] == [1, 3, 4]   # an odd count: the first task's extra


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
