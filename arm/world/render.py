"""Rendering scene graphs to pixels, exactly as the world's contract says: Pillow's ImageDraw with no
anti-aliasing, so every pixel is the background or an exact palette colour.

>>> from arm.world.scene import Obj, Scene
>>> img = render(Scene((Obj(cell=4, shape="circle", color="red", size="large"),)), size=64)
>>> img.size, img.getpixel((32, 32))
((64, 64), (220, 40, 40))
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from arm.world.scene import BACKGROUND, PALETTE, SIZES, Obj, Scene, cell_row_col


def object_box(obj: Obj, size: int) -> tuple[int, int, int, int]:
    """Inclusive pixel box (x0, y0, x1, y1) of an object's extent on an S x S canvas.

    The extent is round(SIZES[size] * S) pixels (10 small, 18 large at S = 64), centred on the cell's
    centre plus the jitter offset:

    >>> object_box(Obj(cell=0, shape="square", color="red", size="small"), 64)
    (6, 6, 15, 15)
    >>> object_box(Obj(cell=4, shape="square", color="red", size="large", dx=0.04), 64)
    (26, 23, 43, 40)
    """
    extent = round(SIZES[obj.size] * size)
    row, col = cell_row_col(obj.cell)
    cx = (col + 0.5) * size / 3 + obj.dx * size
    cy = (row + 0.5) * size / 3 + obj.dy * size
    x0 = round(cx - extent / 2)
    y0 = round(cy - extent / 2)
    return x0, y0, x0 + extent - 1, y0 + extent - 1


def draw_object(draw: ImageDraw.ImageDraw, obj: Obj, size: int) -> None:
    x0, y0, x1, y1 = object_box(obj, size)
    fill = PALETTE[obj.color]
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "triangle":  # apex top-middle, base along the box bottom
        draw.polygon([(xm, y0), (x1, y1), (x0, y1)], fill=fill)
    elif obj.shape == "diamond":  # vertices at the mid-points of the box edges
        draw.polygon([(xm, y0), (x1, ym), (xm, y1), (x0, ym)], fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Render a scene on a white S x S canvas, objects drawn in row-major cell order."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw_object(draw, obj, size)
    return image
