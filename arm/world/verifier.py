"""The verifier: image -> scene graph. The instrument behind every world score and RL reward.

Each pixel snaps to the nearest palette colour or the background; connected components per colour
are objects (tiny ones are dropped as noise); the shape comes from the component's geometry, the
size from its extent, the cell from the centre of its bounding box (the box centre is exactly the
drawn centre for every shape, where the pixel centroid of a triangle sits a sixth of its extent low).

>>> from arm.world.render import render
>>> from arm.world.scene import Obj, Scene
>>> scene = Scene((Obj(cell=0, shape="triangle", color="blue", size="large", dx=0.02, dy=-0.03),))
>>> parse(render(scene)) == scene
True
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from arm.world.scene import BACKGROUND, COLORS, PALETTE, SHAPES, SIZES, Obj, Scene

# Index 0 is the background, 1..6 the palette in COLORS order.
_REFERENCE = np.array([BACKGROUND] + [PALETTE[c] for c in COLORS], dtype=np.int32)  # (7, 3)
# Components smaller than this fraction of a small object's box area are noise (JPEG fringes).
_MIN_AREA_FRACTION = 0.25
_SIZE_THRESHOLD = (SIZES["small"] + SIZES["large"]) / 2


def to_array(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """(S, S, 3) uint8 array, resized with nearest-neighbour when the image is another size."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8))
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.NEAREST)
    return np.asarray(image)


def nearest_colour(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: index of the nearest of background + palette (0 = background) and the squared distance
    to it. pixels: (H, W, 3) uint8 -> two (H, W) arrays."""
    diff = pixels[:, :, None, :].astype(np.int32) - _REFERENCE[None, None]  # (H, W, 7, 3)
    dist2 = np.einsum("hwkc,hwkc->hwk", diff, diff)
    index = dist2.argmin(axis=2)
    return index, np.take_along_axis(dist2, index[..., None], axis=2)[..., 0]


def _build_lut(bits: int = 6) -> np.ndarray:
    """A (2^bits)^3 table from quantised RGB to the nearest reference index, evaluated at bin centres: one
    fancy-index per image instead of seven distances per pixel. Palette colours are far apart, so the
    quantisation moves a decision only within a few units of a boundary."""
    step = 256 // (1 << bits)
    centres = np.arange(1 << bits) * step + step // 2
    grid = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), axis=-1).reshape(-1, 1, 3)
    index, _ = nearest_colour(grid.astype(np.uint8))
    return index.reshape((1 << bits,) * 3).astype(np.uint8)


_LUT_SHIFT = 2
_LUT = _build_lut(8 - _LUT_SHIFT)


def colour_index(pixels: np.ndarray) -> np.ndarray:
    """(H, W) uint8 index of the nearest reference colour (0 = background), via the lookup table.

    >>> colour_index(np.array([[[255, 255, 255], [215, 50, 35], [45, 75, 230]]], dtype=np.uint8))
    array([[0, 1, 3]], dtype=uint8)
    """
    q = pixels >> _LUT_SHIFT
    return _LUT[q[..., 0], q[..., 1], q[..., 2]]


def _templates(size: int) -> dict[tuple[str, str], np.ndarray]:
    """Boolean masks of every (size name, shape) drawn alone in its extent box: what the renderer draws."""
    from arm.world.render import object_box, render

    out = {}
    for size_name in SIZES:
        for shape in SHAPES:
            obj = Obj(cell=4, shape=shape, color="red", size=size_name)
            x0, y0, x1, y1 = object_box(obj, size)
            mask = np.asarray(render(Scene((obj,)), size))[..., 1] != 255
            out[(size_name, shape)] = mask[y0:y1 + 1, x0:x1 + 1]
    return out


_TEMPLATE_CACHE: dict[int, dict[tuple[str, str], np.ndarray]] = {}


def classify_shape(mask: np.ndarray, size_name: str, size: int) -> str:
    """Shape of one component, (h, w) boolean mask cropped to its bounding box: the renderer's template of
    that size with the best IoU, both centred. Compares against exactly what is drawn, so it holds for
    small shapes whose JPEG fringes blur simple geometric ratios."""
    templates = _TEMPLATE_CACHE.get(size)
    if templates is None:
        templates = _TEMPLATE_CACHE[size] = _templates(size)
    h, w = mask.shape
    best, best_iou = "square", -1.0
    for shape in SHAPES:
        t = templates[(size_name, shape)]
        th, tw = t.shape
        # Pad both to a common canvas, each centred: (H, W) with H = max(h, th) + 2.
        hh, ww = max(h, th) + 2, max(w, tw) + 2
        a = np.zeros((hh, ww), bool)
        b = np.zeros((hh, ww), bool)
        ay, ax = (hh - h) // 2, (ww - w) // 2
        by, bx = (hh - th) // 2, (ww - tw) // 2
        a[ay:ay + h, ax:ax + w] = mask
        b[by:by + th, bx:bx + tw] = t
        iou = (a & b).sum() / max(1, (a | b).sum())
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def _split_merged(component: np.ndarray, max_extent: float) -> list[np.ndarray]:
    """Two same-colour objects in neighbouring cells can touch and form one component. Erode until it
    falls apart, then give every original pixel to its nearest core. component: (h, w) bool."""
    h, w = component.shape
    if max(h, w) <= max_extent:
        return [component]
    core = component
    for _ in range(int(max_extent // 2)):
        core = ndimage.binary_erosion(core)
        labels, count = ndimage.label(core)
        if count >= 2:
            # Nearest core label for every pixel, then restrict to the component.
            _, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
            nearest = labels[iy, ix]
            return [component & (nearest == k) for k in range(1, count + 1)]
        if count == 0:
            break
    return [component]


def parse(image: Image.Image | np.ndarray, size: int = 64) -> Scene:
    """Parse an image of any size into a scene (objects with cell, shape, colour, size and the offset of
    their box centre from the cell centre as jitter). Two objects found in one cell keep the larger.

    >>> from arm.world.render import render
    >>> parse(Image.new("RGB", (64, 64), BACKGROUND)).objects
    ()
    >>> scene = Scene((Obj(3, "diamond", "orange", "small"), Obj(4, "diamond", "orange", "large")))
    >>> big = render(scene, 64).resize((192, 192), Image.NEAREST)  # read back at S = 64
    >>> parse(render(scene, 128), 128) == scene, parse(big) == scene
    (True, True)
    """
    pixels = to_array(image, size)
    index = colour_index(pixels)
    min_area = _MIN_AREA_FRACTION * (SIZES["small"] * size) ** 2
    max_extent = SIZES["large"] * size * 1.25 + 1
    counts = np.bincount(index.ravel(), minlength=len(COLORS) + 1)
    by_cell: dict[int, tuple[int, Obj]] = {}
    for k, color in enumerate(COLORS, start=1):
        if counts[k] < min_area:
            continue
        labels, count = ndimage.label(index == k)
        for label_id, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is None:
                continue
            component = labels[box] == label_id
            for part in _split_merged(component, max_extent):
                area = int(part.sum())
                if area < min_area:
                    continue
                ys, xs = np.nonzero(part)
                y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
                extent = max(y1 - y0, x1 - x0) + 1
                cx = box[1].start + (x0 + x1) / 2
                cy = box[0].start + (y0 + y1) / 2
                col = min(2, max(0, int((cx + 0.5) * 3 // size)))
                row = min(2, max(0, int((cy + 0.5) * 3 // size)))
                size_name = "small" if extent < _SIZE_THRESHOLD * size else "large"
                obj = Obj(
                    cell=row * 3 + col,
                    shape=classify_shape(part[y0:y1 + 1, x0:x1 + 1], size_name, size),
                    color=color,
                    size=size_name,
                    dx=round((cx + 0.5) / size - (col + 0.5) / 3, 4),
                    dy=round((cy + 0.5) / size - (row + 0.5) / 3, 4),
                )
                if obj.cell not in by_cell or area > by_cell[obj.cell][0]:
                    by_cell[obj.cell] = (area, obj)
    return Scene(tuple(obj for _, obj in by_cell.values()))


def foreground_mask(image: Image.Image | np.ndarray, size: int = 64) -> np.ndarray:
    """(S, S) bool: pixels whose nearest reference colour is not the background."""
    return colour_index(to_array(image, size)) != 0


def off_palette_fraction(image: Image.Image | np.ndarray, size: int = 64, tolerance: float = 30.0) -> float:
    """Fraction of pixels farther than `tolerance` (Euclidean RGB) from the background and every palette
    colour.

    >>> grey = np.full((64, 64, 3), 128, dtype=np.uint8)
    >>> grey[:32] = 255
    >>> off_palette_fraction(grey)
    0.5
    """
    _, dist2 = nearest_colour(to_array(image, size))
    return float((dist2 > tolerance**2).mean())
