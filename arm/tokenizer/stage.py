"""Stage `tokenizer`: train the semantic visual tokenizer on the prepared images.

    arm tokenizer --config configs/default.yaml          # CPU, a few minutes on the default world
    tensorboard --logdir artifacts/logs                   # losses, PSNR, code usage, reconstructions

Writes `artifacts/tokenizer/` (model.safetensors, config.json, metrics.json). Checkpoints go to
`artifacts/checkpoints/tokenizer/` outside the DVC outputs, so an interrupted run resumes exactly
(same batches, same optimiser state) when started again with the same configuration.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict

import torch

from arm.checkpoints import fingerprint, resume_point, source_files
from arm.config import ArmConfig
from arm.progress import progress
from arm.tokenizer.data import EvalBatches, StepBatches, load_captioned_images
from arm.tokenizer.metrics import code_statistics, encode_all, exact_recovery, probe_scores, retrieval
from arm.tokenizer.model import TokenizerModelConfig, VisualTokenizer
from arm.tokenizer.text_encoders import build_text_encoder
from arm.tokenizer.train import TokenizerModule, psnr


def model_config(cfg: ArmConfig, text_dim: int, vocab_size: int) -> TokenizerModelConfig:
    t = cfg.tokenizer
    return TokenizerModelConfig(
        backbone=t.backbone, backbone_path=t.backbone_path, backbone_stage=t.backbone_stage,
        image_size=cfg.data.image_size, grid=t.grid, fsq_levels=list(t.fsq_levels), hidden=t.hidden, pixel_skip=t.pixel_skip,
        decoder_channels=t.decoder_channels, decoder_blocks=t.decoder_blocks, refine_channels=t.refine_channels,
        decoder_upsample=t.decoder_upsample, decoder_reads_codes=t.decoder_reads_codes,
        decoder_patch_hidden=t.decoder_patch_hidden,
        text_dim=text_dim, vocab_size=vocab_size, caption_dim=t.caption_dim, caption_layers=t.caption_layers,
        max_caption_tokens=t.max_caption_tokens, caption_lm_path=t.caption_lm_path,
    )


@torch.no_grad()
def cache_features(model: VisualTokenizer, pixels, desc: str, batch_size: int = 256) -> torch.Tensor:
    """Frozen backbone features for every image, computed once: (N, C, g, g)."""
    from arm.images import to_tensor

    chunks = []
    for start in progress(range(0, len(pixels), batch_size), desc=desc):
        chunks.append(model.features(to_tensor(pixels[start:start + batch_size])))
    return torch.cat(chunks)


def tokenizer_stage(cfg: ArmConfig, *, max_steps: int | None = None, stop_at_step: int | None = None) -> dict | None:
    """Train, evaluate and save. With `stop_at_step`, stop there without writing outputs, leaving only the
    checkpoint an interrupted run would leave."""
    from arm.text_tokenizer import load_tokenizer
    from arm.training import fit, stage_trainer, start_stage, write_metrics

    t = cfg.tokenizer
    max_steps = max_steps or t.max_steps
    started = time.monotonic()
    prepare_dir = cfg.stage_dir("prepare")
    if not (prepare_dir / "summary.json").exists():
        raise ValueError(f"{prepare_dir} has no prepared data; run `arm prepare` (or `dvc repro prepare`) first")
    out = cfg.stage_dir("tokenizer")
    ckpt_dir = cfg.artifacts / "checkpoints" / "tokenizer"
    start_stage(t.seed)
    torch.manual_seed(t.seed)

    text_tokenizer = load_tokenizer(prepare_dir / "tokenizer.json")
    train = load_captioned_images(prepare_dir, "train", t.max_train_images)
    val = load_captioned_images(prepare_dir, "val", t.num_val_images)
    if len(train) == 0:
        raise ValueError(f"no training images in {prepare_dir}; the tokenizer needs image records")
    print(f"tokenizer: {len(train)} training images, {len(val)} validation images", file=sys.stderr)

    encoder = build_text_encoder(t.text_encoder, t.text_encoder_path)
    text_emb = {"train": encoder.encode(train.captions), "val": encoder.encode(val.captions)}
    del encoder
    mcfg = model_config(cfg, text_emb["train"].shape[1], text_tokenizer.get_vocab_size())
    module = TokenizerModule(asdict(mcfg), {"pix": t.w_pix, "feat": t.w_feat, "sig": t.w_sig, "cap": t.w_cap,
                                            "gan": t.w_gan},
                             lr=t.lr, warmup_steps=t.warmup_steps, max_steps=max_steps,
                             weight_decay=t.weight_decay, foreground_weight=t.foreground_weight,
                             edge_weight=t.edge_weight, gan_start_step=t.gan_start_step,
                             gan_channels=t.gan_channels)
    frozen = not module.model.backbone_trainable
    features = {s: (cache_features(module.model, d.pixels, f"tokenizer {s} features") if frozen else None)
                for s, d in (("train", train), ("val", val))}

    # Resume only a run of this very configuration and data.
    stamp = fingerprint(asdict(t), prepare_dir / "summary.json", *source_files("tokenizer", "images.py", "training.py"),
                        extra=str(cfg.data.image_size))
    resume, start_step = resume_point(ckpt_dir, stamp, "tokenizer")

    train_batches = StepBatches(train, features["train"], text_emb["train"], t.batch_size, max_steps, t.seed,
                                t.max_caption_tokens, start_step)
    val_batches = EvalBatches(val, features["val"], text_emb["val"], 128, t.max_caption_tokens)
    loader = torch.utils.data.DataLoader(train_batches, batch_size=None, shuffle=False)
    val_loader = torch.utils.data.DataLoader(val_batches, batch_size=None, shuffle=False)
    trainer = stage_trainer(
        "tokenizer", cfg.run.log_dir, ckpt_dir, stamp=stamp, max_steps=max_steps,
        checkpoint_every=t.val_every_steps, stop_at_step=stop_at_step, accelerator=t.accelerator,
        devices=t.devices, precision=t.precision,
        val_check_interval=min(t.val_every_steps, max(1, len(train_batches))), check_val_every_n_epoch=None,
        log_every_n_steps=max(1, min(25, max_steps // 5)), deterministic=True)
    # Always fit: resuming a finished run restores its weights and then stops at once.
    fit(trainer, module, loader, val_loader, resume=resume)
    if stop_at_step:
        return None
    model = module.model.eval()
    train_minutes = (time.monotonic() - started) / 60

    metrics = evaluate_tokenizer(model, train, val, text_emb, cfg.data.image_size)
    metrics.update({"train_minutes": round(train_minutes, 2), "steps": max_steps,
                    "codebook_size": model.codebook_size, "tokens_per_image": cfg.tokenizer.grid**2})
    out.mkdir(parents=True, exist_ok=True)
    model.save(out)
    return write_metrics(out, "tokenizer", metrics)


def evaluate_tokenizer(model: VisualTokenizer, train, val, text_emb: dict, image_size: int) -> dict:
    from arm.images import to_tensor

    enc_val = encode_all(model, val.pixels)
    probe_train = 4000  # enough one-object scenes for the probes; the pooled features are all they need
    enc_train = encode_all(model, train.pixels[:probe_train], reconstruct=False)
    metrics: dict = {"val_images": len(val),
                     "psnr": float(psnr(enc_val["reconstruction"], to_tensor(val.pixels)))}
    metrics.update(code_statistics(enc_val["indices"], model.codebook_size))
    exact = exact_recovery(enc_val["reconstruction"], val.scenes, image_size)
    if exact is not None:
        metrics["exact_recovery"] = exact
    ret = retrieval(model, enc_val["up"], val, text_emb["val"])
    if ret:
        metrics.update(ret)
    probes = probe_scores(enc_train["pooled"], train.scenes[:probe_train], enc_val["pooled"], val.scenes)
    if probes:
        metrics.update(probes)
    return metrics
