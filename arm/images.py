"""Image conversions and grids, shared by TensorBoard logging and the HTML reports (PIL and torch only).

>>> import torch
>>> grid = make_grid([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)], columns=2, pad=1)
>>> grid.size
(19, 10)
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float in [-1, 1]."""
    x = torch.as_tensor(np.asarray(pixels))
    return x.movedim(-1, -3).float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [-1, 1] -> (..., H, W, 3) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def make_grid(images, columns: int = 8, pad: int = 2, background=(255, 255, 255), scale: int = 1) -> Image.Image:
    """Tile images ((3, H, W) tensors in [-1, 1], (H, W, 3) uint8 arrays or PIL images) row by row."""
    tiles = []
    for im in images:
        if isinstance(im, torch.Tensor):
            im = Image.fromarray(to_uint8(im))
        elif isinstance(im, np.ndarray):
            im = Image.fromarray(im.astype(np.uint8))
        if scale != 1:
            im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
        tiles.append(im.convert("RGB"))
    if not tiles:
        return Image.new("RGB", (1, 1), background)
    w, h = max(t.width for t in tiles), max(t.height for t in tiles)
    columns = max(1, min(columns, len(tiles)))
    rows = (len(tiles) + columns - 1) // columns
    grid = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), background)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid.paste(tile, (pad + c * (w + pad), pad + r * (h + pad)))
    return grid


def grid_to_tensorboard(grid: Image.Image) -> np.ndarray:
    """PIL grid -> (3, H, W) uint8 array, what SummaryWriter.add_image expects by default."""
    return np.asarray(grid).transpose(2, 0, 1)
