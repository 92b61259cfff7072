"""What one optimiser step costs for the config's model: AdamW, our Muon (`arm.optim.MuonAdamW`:
float32 Newton-Schulz off CUDA, same-shaped matrices batched) and torch.optim.Muon (bfloat16
Newton-Schulz, one matrix at a time) with AdamW for the rest, all on the same random gradients.

On a CPU without bf16 arithmetic the bf16 iteration is emulated, which is why `MuonAdamW` iterates in
float32 there; the Newton-Schulz share is set against the step time of `benchmarks/train_step.py`.

    python benchmarks/optimizer_step.py                          # the default model, no stage outputs needed
    python benchmarks/optimizer_step.py --config configs/small.yaml --steps 5

Prints a table and writes benchmarks/results/optimizer_step.json.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from reporting import report


def default_model(config: str, overrides: list[str]):
    """The config's backbone at the default id space (483 text ids + 1,000 image codes, 8 x 8 grid)."""
    from arm.config import load_config
    from arm.model.backbone import build_causal_lm

    p = load_config(config, overrides).pretrain
    positions = dict(grid=8, image_offset=483, codebook_size=1000, soi_id=481, source_embedding=True)
    return build_causal_lm(p.arch, 1483, p.hidden_size, p.num_layers, p.num_heads, p.num_kv_heads,
                           p.intermediate_size, p.max_position_embeddings, image_positions=positions)


def time_steps(model, make_optimizer, steps: int) -> float:
    """ms per `step()` after two warm-up steps, on fixed random gradients."""
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    opt = make_optimizer(model)
    for _ in range(2):
        opt.step()
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - start) / steps * 1000


def torch_muon(model):
    """torch.optim.Muon on the hidden matrices, AdamW on the rest: two optimisers stepped together."""
    from arm.optim import hidden_matrices

    hidden = hidden_matrices(model)
    ids = {id(p) for p in hidden}
    muon = torch.optim.Muon(hidden, lr=2e-3, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([p for p in model.parameters() if id(p) not in ids], lr=2e-3)

    class Both:
        def step(self):
            muon.step()
            adamw.step()

    return Both()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/optimizer_step.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    from arm.optim import build_optimizer, hidden_matrices

    model = default_model(args.config, args.overrides)
    hidden = hidden_matrices(model)
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "muon_matrices": len(hidden),
        "muon_parameters": sum(p.numel() for p in hidden),
        "ms_adamw": time_steps(model, lambda m: build_optimizer(m, "adamw", 2e-3, 0.1), args.steps),
        "ms_muon_ours_fp32": time_steps(model, lambda m: build_optimizer(m, "muon", 2e-3, 0.1), args.steps),
        "ms_muon_torch_bf16": time_steps(model, torch_muon, max(2, args.steps // 4)),
    }
    result["muon_ours_over_adamw_ms"] = result["ms_muon_ours_fp32"] - result["ms_adamw"]
    result["torch_bf16_over_ours"] = result["ms_muon_torch_bf16"] / result["ms_muon_ours_fp32"]
    report(result, args.out)


if __name__ == "__main__":
    main()
