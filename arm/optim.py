"""Optimisers for the unified model: AdamW, or Muon for the hidden matrices with AdamW for the rest.

Muon (Jordan et al. 2024; "Muon is Scalable for LLM Training", Liu et al. 2025) steps each hidden weight
matrix along its momentum orthogonalised by a Newton-Schulz iteration: every direction of the update
moves by about the same amount, where Adam's per-coordinate scaling lets a few directions dominate.
Embeddings, the output head, norms and biases stay on AdamW, as both papers do. The update is scaled
by 0.2 sqrt(max(A, B)) (Moonshot's rule) so that its RMS matches AdamW's and the AdamW learning rate
and weight decay carry over: `pretrain.optimizer=muon` changes nothing else in the config.

torch.optim.Muon runs the iteration in bfloat16, which a CPU without bf16 arithmetic emulates (20x
slower than fp32 on the AVX2 machine: 1.35 s a step for the default model's 42 matrices against
0.11 s); here it runs in float32 off CUDA and in bfloat16 on it, with same-shaped matrices stacked
into one batched product. Under FSDP2 a sharded matrix is gathered for the iteration and each process
keeps its own rows of the result, so sharding does not change the update.

>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 10))
>>> opt = build_optimizer(model, "muon", lr=1e-3, weight_decay=0.1, output_head=model[2])
>>> [(group["muon"], len(group["params"])) for group in opt.param_groups]   # hidden; embedding, head; biases
[(True, 1), (False, 2), (False, 2)]
>>> model(torch.tensor([1, 2])).sum().backward(); opt.step()
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch.optim.adamw import adamw

OPTIMIZERS = ("adamw", "muon")
# The quintic's coefficients (Jordan's): a steep slope at zero, so that five steps lift most singular
# values into about [0.7, 1.2]; they need not reach exactly 1.
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def orthogonalize(m: torch.Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(..., A, B) -> (..., A, B): about U V^T for m = U S V^T, by `steps` Newton-Schulz iterations
    (singular values not close to zero land in about [0.7, 1.2], which trains as well as exact ones). `dtype` is the
    arithmetic's (default float32); the result comes back in m's dtype.

    >>> q = orthogonalize(torch.randn(3, 16, 48))
    >>> s = torch.linalg.svdvals(q); bool((s > 0.6).all() and (s < 1.3).all())
    True
    """
    a, b, c = NEWTON_SCHULZ
    x = m.to(dtype or torch.float32)
    wide = x.size(-2) <= x.size(-1)
    if not wide:
        x = x.mT                                        # iterate on the smaller Gram matrix
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp_min(eps)   # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT                                 # (..., min(A,B), min(A,B))
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.mT).to(m.dtype)


def hidden_matrices(model: torch.nn.Module, output_head: torch.nn.Module | None = None) -> list[torch.Tensor]:
    """Muon's share of the parameters: the weights of the linear layers inside the network. Embeddings
    (`nn.Embedding`) and the output head (`output_head`, by default the model's
    `get_output_embeddings()`) map ids in and out and stay on AdamW."""
    if output_head is None and hasattr(model, "get_output_embeddings"):
        output_head = model.get_output_embeddings()
    return [m.weight for m in model.modules()
            if isinstance(m, torch.nn.Linear) and m is not output_head and m.weight.requires_grad]


class MuonAdamW(torch.optim.Optimizer):
    """One optimiser over two kinds of parameter group: `muon=True` groups step by Muon (momentum,
    Nesterov, Newton-Schulz, decoupled weight decay), the others by AdamW. One object, so Lightning's
    automatic optimisation, gradient clipping, LR schedulers and checkpoints treat it as any other.
    `ns_dtype` is the Newton-Schulz arithmetic's (None: bfloat16 on CUDA, else float32). Use
    `build_optimizer` to split a model's parameters."""

    def __init__(self, param_groups: list[dict], lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, momentum: float = 0.95,
                 ns_steps: int = 5, ns_dtype: torch.dtype | None = None):
        for group in param_groups:
            if group.get("muon") and any(p.ndim != 2 for p in group["params"]):
                raise ValueError("Muon steps 2-D matrices only; put other parameters in a muon=False group")
        super().__init__(param_groups, dict(lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps,
                                            momentum=momentum, ns_steps=ns_steps, ns_dtype=ns_dtype, muon=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            (self._muon_step if group["muon"] else self._adamw_step)(group, params)
        return loss

    def _adamw_step(self, group: dict, params: list[torch.Tensor]) -> None:
        """torch's own AdamW arithmetic (its functional form), on this optimiser's state."""
        for p in params:
            if not self.state[p]:
                self.state[p].update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p),
                                     exp_avg_sq=torch.zeros_like(p))
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        adamw(params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
              [], [s["step"] for s in states], amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
              weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)

    def _muon_step(self, group: dict, params: list[torch.Tensor]) -> None:
        momentum, lr = group["momentum"], group["lr"]
        by_shape: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
        for p in params:
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - momentum)
            nesterov = p.grad.lerp(buf, momentum)
            by_shape[tuple(p.shape)].append((p, full_matrix(nesterov)))
        for (rows, cols), members in by_shape.items():
            stacked = torch.stack([u for _, u in members])                      # (n, A, B)
            dtype = group["ns_dtype"] or (torch.bfloat16 if stacked.is_cuda else torch.float32)
            updates = orthogonalize(stacked, group["ns_steps"], dtype=dtype)
            scale = 0.2 * math.sqrt(max(rows, cols))                            # AdamW's update RMS
            for (p, _), update in zip(members, updates):
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(local_part(update, p), alpha=-lr * scale)


def full_matrix(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (FSDP2 shards rows across processes); a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def local_part(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `like`: this process's shard of it when `like` is a DTensor. Every process
    computed the same full update, so no data moves."""
    if not hasattr(like, "device_mesh"):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


def build_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.95),
                    output_head: torch.nn.Module | None = None) -> torch.optim.Optimizer:
    """`adamw`: AdamW, weight decay on matrices only. `muon`: Muon on the hidden matrices
    (`hidden_matrices`), AdamW on the rest with decay on its matrices (embeddings, head)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"the optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    hidden = {id(p) for p in hidden_matrices(model, output_head)} if name == "muon" else set()
    groups = [{"params": [p for p in params if p.ndim >= 2 and id(p) not in hidden], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    muon = {"params": [p for p in params if id(p) in hidden], "weight_decay": weight_decay, "muon": True}
    return MuonAdamW([muon] + groups, lr=lr, weight_decay=weight_decay, betas=betas)
