"""The optimisers: MuonAdamW's AdamW groups step as torch.optim.AdamW does, its Muon groups as
torch.optim.Muon does (with Moonshot's RMS matching), and the parameter split puts only hidden
matrices on Muon."""

from __future__ import annotations

import copy

import pytest
import torch

from arm.model.backbone import build_causal_lm
from arm.optim import MuonAdamW, build_optimizer, hidden_matrices, orthogonalize


def tiny_lm():
    torch.manual_seed(0)
    positions = dict(grid=2, image_offset=30, codebook_size=16, soi_id=27, source_embedding=True)
    return build_causal_lm("qwen2", 46, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                           intermediate_size=64, image_positions=positions)


def train_steps(model, opt, steps: int = 3) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, 46, (4, 12), generator=gen)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_orthogonalize_approximates_the_polar_factor():
    m = torch.randn(5, 24, 64, dtype=torch.float64)
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    q = orthogonalize(m)
    assert q.shape == m.shape and q.dtype == m.dtype
    s = torch.linalg.svdvals(q)
    assert s.min() > 0.6 and s.max() < 1.3
    # the same singular vectors as U V^T: the cosine to the exact factor is high, per matrix
    cos = (q * (u @ vh)).sum((-2, -1)) / (q.norm(dim=(-2, -1)) * (u @ vh).norm(dim=(-2, -1)))
    assert (cos > 0.95).all()
    torch.testing.assert_close(orthogonalize(m.mT), q.mT)           # tall matrices iterate on their transpose


def test_adamw_groups_match_torch_adamw():
    ours, ref = tiny_lm(), tiny_lm()
    groups = lambda model: [{"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": 0.1},
                            {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}]
    train_steps(ours, MuonAdamW(groups(ours), lr=3e-3, betas=(0.9, 0.95)))
    train_steps(ref, torch.optim.AdamW(groups(ref), lr=3e-3, betas=(0.9, 0.95)))
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ns_dtype", [torch.bfloat16, None])
def test_muon_groups_match_torch_muon(ns_dtype):
    """torch.optim.Muon (Moonshot's RMS matching) iterates in bfloat16, ours in float32 on a CPU or in
    bfloat16 when asked. Bf16 rounding of the iteration, amplified on square matrices' small singular
    values, leaves a few percent between any two implementations, so the check is on each matrix's
    update after three steps: the same direction (cosine > 0.98) and size (within 2%)."""
    ours, ref, start = tiny_lm(), tiny_lm(), tiny_lm()
    train_steps(ours, MuonAdamW([{"params": hidden_matrices(ours), "muon": True, "weight_decay": 0.1}], lr=1e-3,
                                ns_dtype=ns_dtype))
    train_steps(ref, torch.optim.Muon(hidden_matrices(ref), lr=1e-3, weight_decay=0.1,
                                      adjust_lr_fn="match_rms_adamw"))
    checked = 0
    for a, b, s in zip(hidden_matrices(ours), hidden_matrices(ref), hidden_matrices(start)):
        ours_update, ref_update = (a - s).detach().flatten(), (b - s).detach().flatten()
        if ref_update.norm() == 0:                  # source_projection: starts at zero, no gradient yet
            continue
        assert torch.nn.functional.cosine_similarity(ours_update, ref_update, 0) > 0.98
        assert abs(ours_update.norm() / ref_update.norm() - 1) < 0.02
        checked += 1
    assert checked == 14


def test_the_split_puts_hidden_matrices_on_muon():
    model = tiny_lm()
    opt = build_optimizer(model, "muon", lr=1e-3, weight_decay=0.1)
    muon = {id(p) for g in opt.param_groups if g["muon"] for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon}
    assert "source_projection.weight" in names and "model.layers.0.mlp.down_proj.weight" in names
    assert not names & {"model.embed_tokens.weight", "lm_head.weight", "row_embedding.weight"}
    assert all(p.ndim == 2 for g in opt.param_groups if g["muon"] for p in g["params"])
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    # adamw keeps the previous grouping: decay on matrices only
    adamw = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.1)
    assert isinstance(adamw, torch.optim.AdamW)
    assert [len(g["params"]) for g in adamw.param_groups] == [sum(p.ndim >= 2 for p in model.parameters()),
                                                              sum(p.ndim < 2 for p in model.parameters())]


def test_muon_state_resumes_exactly():
    """Two steps, a state_dict round trip into a fresh optimiser, a third step: as three in one go."""
    a, b = tiny_lm(), tiny_lm()
    opt_a = build_optimizer(a, "muon", lr=1e-3, weight_decay=0.1)
    train_steps(a, opt_a, 3)
    opt_b = build_optimizer(b, "muon", lr=1e-3, weight_decay=0.1)
    train_steps(b, opt_b, 2)
    state = copy.deepcopy(opt_b.state_dict())
    opt_c = build_optimizer(b, "muon", lr=1e-3, weight_decay=0.1)
    opt_c.load_state_dict(state)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        ids = torch.randint(0, 46, (4, 12), generator=gen)        # the third batch of train_steps
    opt_c.zero_grad()
    b(input_ids=ids, labels=ids).loss.backward()
    opt_c.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_bad_settings_name_the_fix():
    with pytest.raises(ValueError, match="adamw, muon"):
        build_optimizer(tiny_lm(), "sgd", lr=1e-3, weight_decay=0.0)
    with pytest.raises(ValueError, match="muon=False group"):
        MuonAdamW([{"params": [torch.nn.Parameter(torch.zeros(3))], "muon": True}], lr=1e-3)
