"""Training the visual tokenizer: the four losses, visible, and a thin LightningModule around them.

    L = w_pix * L_pix + w_feat * L_feat + w_sig * L_sig + w_cap * L_cap

- L_pix: L1 + L2 between reconstruction and image, with pixels unlike the image's median colour
  (objects on the world's white canvas) weighted `foreground_weight` times.
- L_feat: 1 - cosine between up-projected token features and the frozen backbone's features.
- L_sig: SigLIP's sigmoid loss between pooled token features and frozen caption embeddings; pairs with
  the same caption count as positives.
- L_cap: next-token cross-entropy of the caption decoder reading the token grid.

Optional (`tokenizer.w_gan > 0`, from `gan_start_step`): a PatchGAN adversarial term on the
reconstruction, L += w_gan * L_adv, with the discriminator trained on the hinge loss in the same step.
"""

from __future__ import annotations


import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from arm.images import grid_to_tensorboard, make_grid
from arm.schedules import warmup_cosine
from arm.tokenizer.model import TokenizerModelConfig, VisualTokenizer


# ------------------------------------------------------------------------------------------------
# The losses


def pixel_loss(reconstruction: torch.Tensor, images: torch.Tensor, foreground_weight: float = 1.0,
               edge_weight: float = 0.0) -> torch.Tensor:
    """L1 + L2, per pixel weighted up where the image departs from its median colour, plus (edge_weight)
    an L1 loss on horizontal and vertical differences, which blur pays for and sharp corners do not.
    (B, 3, S, S) each."""
    diff = reconstruction - images
    per_pixel = (diff.abs() + diff.pow(2)).mean(dim=1, keepdim=True)  # (B, 1, S, S)
    if foreground_weight != 1.0:
        median = images.flatten(2).median(dim=2).values[:, :, None, None]  # (B, 3, 1, 1)
        foreground = ((images - median).abs().amax(dim=1, keepdim=True) > 0.1).float()
        per_pixel = per_pixel * (1 + (foreground_weight - 1) * foreground)
    loss = per_pixel.mean()
    if edge_weight:
        dx = (diff[..., :, 1:] - diff[..., :, :-1]).abs().mean()
        dy = (diff[..., 1:, :] - diff[..., :-1, :]).abs().mean()
        loss = loss + edge_weight * (dx + dy)
    return loss


def feature_loss(up: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """1 - cosine over channels at every grid position; zero when the up-projection matches exactly."""
    return (1 - F.cosine_similarity(up, features.detach(), dim=1)).mean()


def sigmoid_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                 logit_bias: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """SigLIP: -mean_i sum_j log sigmoid(z_ij (t x_i.y_j + b)), z = +1 on positives, -1 elsewhere.
    image_emb (N, D), text_emb (N, D) unit vectors; positives (N, N) bool."""
    logits = image_emb @ text_emb.T * logit_scale.exp() + logit_bias
    signs = positives.float() * 2 - 1
    return -F.logsigmoid(signs * logits).sum(dim=1).mean()


def caption_loss(logits: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy; padding is -100. logits (B, T, V), caption_ids (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1), caption_ids.flatten(), ignore_index=-100)


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix, VQGAN): strided convolutions whose every output is a real/fake logit for one
    patch of the image, so it judges local texture and edges, where L1/L2 settle for blur.
    (B, 3, S, S) -> (B, 1, S / 2^downsamplings, S / 2^downsamplings)."""

    def __init__(self, channels: int = 32, downsamplings: int = 2):
        super().__init__()
        if channels % 8:
            raise ValueError(f"tokenizer.gan_channels must be a multiple of 8 (group norm), got {channels}")
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for _ in range(downsamplings - 1):
            layers += [nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.GroupNorm(8, 2 * width),
                       nn.LeakyReLU(0.2)]
            width *= 2
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(8, width), nn.LeakyReLU(0.2),
                   nn.Conv2d(width, 1, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def discriminator_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: real patches above +1, reconstructed ones below -1."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def adversarial_losses(discriminator: nn.Module, reconstruction: torch.Tensor,
                       images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_adv, L_disc) for one optimiser step over both networks. L_adv = -D(reconstruction) reaches the
    tokenizer only: D runs on detached copies of its own weights. L_disc reaches D only: it sees the
    reconstruction detached. So one backward pass of their sum gives each network its own gradient."""
    frozen = {name: p.detach() for name, p in discriminator.named_parameters()}
    adversarial = -functional_call(discriminator, frozen, (reconstruction,)).mean()
    disc = discriminator_hinge_loss(discriminator(images), discriminator(reconstruction.detach()))
    return adversarial, disc


def psnr(reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for images in [-1, 1] (peak-to-peak 2), averaged per image."""
    mse = (reconstruction.clamp(-1, 1) - images).pow(2).flatten(1).mean(dim=1).clamp(min=1e-10)
    return (10 * torch.log10(4.0 / mse)).mean()


# ------------------------------------------------------------------------------------------------
# The Lightning wrapper


class TokenizerModule(L.LightningModule):
    def __init__(self, model_config: dict, weights: dict, lr: float, warmup_steps: int, max_steps: int,
                 weight_decay: float = 0.0, foreground_weight: float = 1.0, edge_weight: float = 0.0,
                 gan_start_step: int = 0, gan_channels: int = 32):
        super().__init__()
        self.save_hyperparameters()
        self.model = VisualTokenizer(TokenizerModelConfig(**model_config))
        self.weights = weights
        # Training-only: the discriminator is checkpointed for resuming, never saved with the tokenizer.
        self.discriminator = PatchDiscriminator(gan_channels) if weights.get("gan", 0) > 0 else None
        self.val_images: torch.Tensor | None = None  # a fixed batch for reconstruction grids

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self.model(batch["images"], batch.get("features"))
        w = self.weights
        losses = {"pix": pixel_loss(out.reconstruction, batch["images"], self.hparams.foreground_weight,
                                    self.hparams.edge_weight),
                  "feat": feature_loss(out.up, out.features)}
        has_caption = batch["caption_group"] >= 0
        zero = out.up.sum() * 0
        if w["sig"] > 0 and has_caption.sum() > 1:
            image_emb = self.model.pooled_text_embedding(out.up[has_caption])
            groups = batch["caption_group"][has_caption]
            losses["sig"] = sigmoid_loss(image_emb, batch["text_emb"][has_caption], self.model.logit_scale,
                                         self.model.logit_bias, groups[:, None] == groups[None, :])
        else:
            losses["sig"] = zero
        if w["cap"] > 0 and has_caption.any():
            ids = batch["caption_ids"][has_caption]
            losses["cap"] = caption_loss(self.model.captioner(out.up[has_caption], ids), ids)
        else:
            losses["cap"] = zero
        losses["total"] = sum(w[k] * losses[k] for k in ("pix", "feat", "sig", "cap"))
        if self.discriminator is not None and self.global_step >= self.hparams.gan_start_step:
            losses["adv"], losses["disc"] = adversarial_losses(self.discriminator, out.reconstruction,
                                                               batch["images"])
            losses["total"] = losses["total"] + w["gan"] * losses["adv"]
        with torch.no_grad():
            losses["psnr"] = psnr(out.reconstruction, batch["images"])
            counts = torch.bincount(out.indices.flatten(), minlength=self.model.codebook_size).float()
            p = counts / counts.sum()
            losses["perplexity"] = torch.exp(-(p[p > 0] * p[p > 0].log()).sum())
            losses["code_usage"] = (counts > 0).float().mean()
        return losses

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.losses(batch)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=False)
        self.log("train/loss", losses["total"], prog_bar=True)
        # The discriminator's loss rides along: it only has gradients on the discriminator.
        return losses["total"] + losses["disc"] if "disc" in losses else losses["total"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        losses = self.losses(batch)
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, batch_size=len(batch["images"]))
        if batch_idx == 0:
            self.val_images = batch["images"][:16].detach()
            self.val_features = batch["features"][:16].detach() if batch.get("features") is not None else None

    def on_validation_epoch_end(self) -> None:
        if self.val_images is None or self.logger is None or not hasattr(self.logger, "experiment"):
            return
        with torch.no_grad():
            recon = self.model(self.val_images, self.val_features).reconstruction
        # Rows of 8: inputs above their reconstructions.
        tiles = [t for pair in zip(self.val_images.split(8), recon.split(8)) for row in pair for t in row]
        grid = make_grid(tiles, columns=8, scale=2)
        self.logger.experiment.add_image("val/inputs_and_reconstructions", grid_to_tensorboard(grid),
                                         self.global_step)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]  # the tokenizer and any discriminator
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                                betas=(0.9, 0.99))
        # Linear warmup, then cosine to 5% of the peak.
        schedule = warmup_cosine(self.hparams.warmup_steps, self.hparams.max_steps, floor=0.05)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
