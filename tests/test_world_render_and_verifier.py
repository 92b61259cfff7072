"""Rendering follows the contract exactly, and the verifier meets its accuracy targets."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from arm.world.render import object_box, render
from arm.world.scene import BACKGROUND, HOLDOUT_PAIRS, PALETTE, Obj, Scene, sample_scene
from arm.world.verifier import parse

NUM_SCENES = 2000


def _scenes(seed: int, n: int = NUM_SCENES) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, int(rng.integers(1, 4)), jitter=0.04) for _ in range(n)]


def test_every_pixel_is_background_or_an_exact_palette_colour():
    allowed = {BACKGROUND, *PALETTE.values()}
    for scene in _scenes(0, 200):
        colours = {tuple(c) for c in np.asarray(render(scene)).reshape(-1, 3)}
        assert colours <= allowed


def test_sizes_and_positions_follow_the_contract():
    # Canonical renders (no jitter) at S = 64: small extent round(0.16 * 64) = 10, large round(17.92) = 18.
    for size_name, extent in (("small", 10), ("large", 18)):
        obj = Obj(cell=0, shape="square", color="red", size=size_name)
        x0, y0, x1, y1 = object_box(obj, 64)
        assert (x1 - x0 + 1, y1 - y0 + 1) == (extent, extent)
        assert abs((x0 + x1) / 2 - 64 / 6) <= 0.5 and abs((y0 + y1) / 2 - 64 / 6) <= 0.5
    # The square fills its box; the circle does not reach the box corners; the triangle's apex is on top.
    circle = np.asarray(render(Scene((Obj(cell=4, shape="circle", color="red", size="large"),))))
    x0, y0, x1, y1 = object_box(Obj(4, "circle", "red", "large"), 64)
    assert tuple(circle[y0, x0]) == BACKGROUND and tuple(circle[(y0 + y1) // 2, (x0 + x1) // 2]) == PALETTE["red"]
    tri = np.asarray(render(Scene((Obj(cell=4, shape="triangle", color="red", size="large"),))))
    top_row, bottom_row = (tri[y0] != 255).any(axis=1).sum(), (tri[y1] != 255).any(axis=1).sum()
    assert top_row <= 2 and bottom_row == 18


def test_rendering_is_deterministic():
    scene = _scenes(1, 1)[0]
    assert render(scene).tobytes() == render(scene).tobytes()


def _noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    noisy = np.asarray(image).astype(np.float32) + rng.normal(0, 8, (64, 64, 3))
    return Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, rng=None) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=75)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


@pytest.mark.parametrize("condition, target", [("clean", 0.995), ("noise", 0.95), ("jpeg", 0.95)])
def test_verifier_recovers_the_exact_scene(condition, target):
    rng = np.random.default_rng(123)
    scenes = _scenes(42)
    corrupt = {"clean": lambda im, r: im, "noise": _noise, "jpeg": _jpeg}[condition]
    hits = [parse(corrupt(render(s), rng)) == s for s in scenes]
    accuracy = float(np.mean(hits))
    print(f"verifier {condition}: {accuracy:.4f} on {len(scenes)} scenes")
    assert accuracy >= target


def test_verifier_reads_other_image_sizes_after_nearest_resize():
    for scene in _scenes(5, 100):
        big = render(scene, 64).resize((192, 192), Image.NEAREST)
        assert parse(big) == scene


def test_verifier_finds_nothing_on_a_blank_canvas_and_ignores_specks():
    blank = Image.new("RGB", (64, 64), BACKGROUND)
    assert parse(blank).objects == ()
    speck = np.asarray(blank).copy()
    speck[10:12, 10:12] = PALETTE["red"]
    assert parse(speck).objects == ()


def test_held_out_pairs_are_drawn_only_when_asked():
    rng = np.random.default_rng(0)
    for _ in range(300):
        assert not sample_scene(rng, 3).has_holdout_pair()
        scene = sample_scene(rng, 2, holdout=True)
        assert (scene.objects[0].color, scene.objects[0].shape) in HOLDOUT_PAIRS or scene.has_holdout_pair()


def test_a_square_covers_exactly_its_box():
    obj = Obj(cell=8, shape="square", color="blue", size="large", dx=0.03, dy=-0.02)
    pixels = np.asarray(render(Scene((obj,))))
    ys, xs = np.nonzero((pixels != 255).any(axis=2))
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == object_box(obj, 64)
