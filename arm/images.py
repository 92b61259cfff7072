"""Image conversions and grids, shared by TensorBoard logging and the HTML reports (PIL and torch only).

>>> import torch
>>> grid = make_grid([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)], columns=2, pad=1)
>>> grid.size
(19, 10)
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")   # one channel, more than 8 bits


def to_rgb(image: Image.Image) -> Image.Image:
    """Any image Pillow opens, as the 8-bit RGB a viewer shows: its EXIF orientation applied,
    transparency composited on white, 16-bit (and 32-bit) channels scaled to 8 bits rather than clipped,
    grayscale, palette and CMYK converted.

    >>> import numpy as np
    >>> wide = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))     # 16-bit grayscale
    >>> np.asarray(to_rgb(wide))[0, :, 0].tolist()
    [0, 128, 255]
    >>> clear = Image.new("RGBA", (1, 1), (0, 0, 0, 0))                               # transparent black
    >>> np.asarray(to_rgb(clear))[0, 0].tolist()
    [255, 255, 255]
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in WIDE_MODES:
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        else:  # "I" holds 16-bit PNGs on older Pillows, and other 32-bit integer images
            top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    transparent = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if transparent:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def square_rgb(image: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) uint8 from any image (`to_rgb`), centre-cropped to a square (never stretched)
    and resized: nearest when enlarging, so the world's exact palette colours survive, Lanczos when
    shrinking. What training sees (`arm prepare`) and what inference is given (CLI, Pipeline, Bento)."""
    rgb = to_rgb(image)
    if rgb.size != (size, size):
        method = Image.NEAREST if min(rgb.size) < size else Image.LANCZOS
        rgb = ImageOps.fit(rgb, (size, size), method=method)
    return np.asarray(rgb, dtype=np.uint8)


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
