"""Finite scalar quantization (Mentzer et al., 2023): each of d channels is bounded and rounded to one
of L_i levels; a code is the tuple of levels, its index the mixed-radix number they spell. No codebook,
no commitment loss, no collapse; gradients pass straight through the rounding.

>>> import torch
>>> fsq = FSQ([8, 5, 5, 5])
>>> fsq.codebook_size
1000
>>> idx = torch.arange(1000)
>>> torch.equal(fsq.codes_to_indices(fsq.indices_to_codes(idx)), idx)
True
"""

from __future__ import annotations

import torch
from torch import nn


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round with the identity gradient."""
    return x + (x.round() - x).detach()


class FSQ(nn.Module):
    def __init__(self, levels: list[int] | tuple[int, ...], eps: float = 1e-3):
        super().__init__()
        if not levels or any(level < 2 for level in levels):
            raise ValueError(f"FSQ levels must be integers >= 2, got {list(levels)}")
        self.levels = list(levels)
        self.dim = len(levels)
        self.codebook_size = int(torch.tensor(levels).prod())
        self.eps = eps
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.float32), persistent=False)
        basis = torch.cumprod(torch.tensor([1] + list(levels[:-1])), dim=0)
        self.register_buffer("_basis", basis.to(torch.int64), persistent=False)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash each channel into a range holding exactly L_i integers (offset by half for even L)."""
        half_l = (self._levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """(..., d) real -> (..., d) codes scaled to [-1, 1], straight-through."""
        half_width = (self._levels // 2)
        return round_ste(self.bound(z)) / half_width

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., d) -> (quantized codes in [-1, 1], integer indices (...))."""
        codes = self.quantize(z)
        return codes, self.codes_to_indices(codes)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        half_width = (self._levels // 2)
        digits = (codes * half_width + half_width).round().to(torch.int64)  # 0 .. L_i - 1
        return (digits * self._basis).sum(dim=-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        half_width = (self._levels // 2)
        digits = (indices.unsqueeze(-1) // self._basis) % self._levels.to(torch.int64)
        return (digits.float() - half_width) / half_width
