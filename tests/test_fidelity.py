"""The tokenizer fidelity metrics of the evaluation stage: rFID with the packaged Inception network,
PSNR and SSIM, on images whose relations are known."""

from __future__ import annotations

import numpy as np
import pytest

from arm.evaluate.fidelity import PackagedInception, rfid

pytestmark = pytest.mark.slow


def _scenes(n: int, seed: int) -> np.ndarray:
    from arm.world.render import render
    from arm.world.scene import sample_scene

    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(render(sample_scene(rng, 1 + i % 3), 64)) for i in range(n)])


def test_packaged_inception_gives_2048_features_without_a_download():
    import torch

    features = PackagedInception()(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    assert features.shape == (2, 2048) and torch.isfinite(features).all()


def test_rfid_orders_near_and_far_sets():
    real = _scenes(24, 0)
    near = np.clip(real.astype(int) + np.random.default_rng(1).integers(-6, 7, real.shape), 0, 255).astype(np.uint8)
    noise = np.random.default_rng(2).integers(0, 256, real.shape).astype(np.uint8)
    same, close, far = rfid(real, real), rfid(real, near), rfid(real, noise)
    assert same < close < far
    assert same < 1.0
