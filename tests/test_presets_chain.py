"""The GPU presets' data path on the CPU at tiny step counts: `small` (128 px, 16 x 16 tokens) and
`arm-7b` (256 px, 16 x 16 tokens through a SigLIP2 tower, a pretrained text LM with its own tokenizer
as the backbone and the captioner), each on a user's imported pictures, through every stage from
prepare to evaluate. Only what a CPU cannot do is overridden: device, precision, model widths, steps."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from tests.conftest import TINY

pytestmark = pytest.mark.slow

CPU = ["tokenizer.accelerator=cpu", "tokenizer.precision=32-true", "tokenizer.devices=1",
       "pretrain.accelerator=cpu", "pretrain.precision=32-true", "pretrain.strategy=auto", "pretrain.devices=1",
       "pretrain.num_nodes=1", "pretrain.compile=false", "pretrain.batch_size=4", "pretrain.accumulate_grad_batches=1",
       "pretrain.sample_every_steps=0", "rl.accelerator=cpu", "rl.precision=32-true",
       "tokenizer.max_train_images=64", "tokenizer.gan_start_step=0", "tokenizer.w_gan=0",
       "evaluate.samples_per_prompt=1", "evaluate.batch_size=8", "evaluate.agreement_train_images=32",
       "prepare.val_fraction=0.2", "prepare.test_fraction=0.25"]


def _pictures(folder: Path, n: int = 24) -> Path:
    """Landscape pictures (300 x 200) of a coloured shape, with captions and a question each."""
    rng = random.Random(1)
    colours = {"red": (200, 40, 40), "blue": (40, 60, 200), "green": (40, 150, 60)}
    qa = []
    folder.mkdir(parents=True)
    for i in range(n):
        colour = list(colours)[i % 3]
        im = Image.new("RGB", (300, 200), (240, 235, 225))
        x, y = rng.randrange(80, 220), rng.randrange(60, 140)
        ImageDraw.Draw(im).ellipse((x - 40, y - 40, x + 40, y + 40), fill=colours[colour])
        im.save(folder / f"{i:02d}.jpg", quality=90)
        (folder / f"{i:02d}.txt").write_text(f"a {colour} ball on a light table")
        qa.append({"image": f"{i:02d}.jpg", "question": "what color is the ball?", "answer": colour})
    (folder / "qa.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qa))
    return folder


def _tiny_text_lm(folder: Path, corpus: list[str]) -> Path:
    """A tiny Qwen2 LM with its own byte-level BPE tokenizer.json, as a local checkpoint folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from arm.model.backbone import build_causal_lm

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    torch.manual_seed(0)
    lm = build_causal_lm("qwen2", tokenizer.get_vocab_size() + 20, hidden_size=32, num_layers=2, num_heads=4,
                         num_kv_heads=2, intermediate_size=64)       # a padded table, as Qwen2.5's
    lm.save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def _tiny_siglip2(folder: Path, patch: int, grid: int) -> tuple[Path, Path]:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (PreTrainedTokenizerFast, Siglip2TextConfig, Siglip2TextModel, Siglip2VisionConfig,
                              Siglip2VisionModel)

    torch.manual_seed(0)
    Siglip2VisionModel(Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, patch_size=patch, num_patches=grid * grid)
                       ).save_pretrained(folder / "vision")
    words = "<pad> <unk> a red blue green ball on light table".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    Siglip2TextModel(Siglip2TextConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
                                       projection_size=32)).save_pretrained(folder / "text")
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(folder / "text")
    return folder / "vision", folder / "text"


def _run(preset: str, data: Path, artifacts: Path, *extra: str) -> dict:
    from arm.config import load_config
    from arm.encode import encode_stage
    from arm.evaluate.stage import evaluate_stage
    from arm.prepare import prepare
    from arm.model.stage import pretrain_stage
    from arm.rl.stage import rl_stage
    from arm.tokenizer.stage import tokenizer_stage

    cfg = load_config(preset, [f"data.root={data}", f"run.artifacts_dir={artifacts}",
                               f"run.log_dir={artifacts / 'logs'}", *TINY, *CPU, *extra])
    for stage in (prepare, tokenizer_stage, encode_stage, pretrain_stage, rl_stage):
        stage(cfg)
    return evaluate_stage(cfg)


def _imported(tmp_path: Path) -> Path:
    from arm.data.importers import import_captions, import_qa

    photos = _pictures(tmp_path / "photos")
    import_captions(photos, tmp_path / "data")
    import_qa(photos / "qa.jsonl", tmp_path / "data", mode="append")
    return tmp_path / "data"


def _check(artifacts: Path, metrics: dict, size: int, grid: int) -> None:
    summary = json.loads((artifacts / "encode" / "summary.json").read_text())
    assert summary["grid"] == grid
    assert json.loads((artifacts / "prepare" / "summary.json").read_text())["image_size"] == size
    for key in ("tok/psnr", "gen/agreement", "gen/fid", "und/exact_match"):
        assert key in metrics and math.isfinite(metrics[key]), key


def test_small_preset_runs_at_128_px_with_16_by_16_tokens(tmp_path):
    from arm.config import load_config

    t = load_config("configs/small.yaml").tokenizer
    assert (t.grid, load_config("configs/small.yaml").data.image_size) == (16, 128)
    metrics = _run("configs/small.yaml", _imported(tmp_path), tmp_path / "a",
                   "pretrain.num_heads=4", "pretrain.num_kv_heads=2")
    _check(tmp_path / "a", metrics, 128, 16)


def test_7b_preset_runs_at_256_px_through_siglip2_and_a_pretrained_lm(tmp_path):
    """The 7B preset's path with its checkpoints swapped for tiny local ones: SigLIP2 (16-pixel patches,
    16 x 16 grid) as vision tower and text encoder, a text LM with a padded table and its own tokenizer
    as the unified model's start, the text side and the tokenizer's captioner."""
    from arm.config import load_config

    assert load_config("configs/arm-7b.yaml").data.image_size == 256
    data = _imported(tmp_path)
    captions = [p.read_text() for p in sorted((tmp_path / "photos").glob("*.txt"))]
    lm = _tiny_text_lm(tmp_path / "lm", captions * 10 + ["what color is the ball?", "red", "blue", "green"] * 10)
    vision, text = _tiny_siglip2(tmp_path / "siglip2", patch=16, grid=16)
    metrics = _run("configs/arm-7b.yaml", data, tmp_path / "a",
                   f"prepare.tokenizer_json={lm / 'tokenizer.json'}", f"pretrain.pretrained_path={lm}",
                   f"tokenizer.backbone_path={vision}", f"tokenizer.text_encoder_path={text}",
                   f"tokenizer.caption_lm_path={lm}", "tokenizer.decoder_channels=16", "tokenizer.refine_channels=8",
                   "tokenizer.decoder_blocks=1", "tokenizer.caption_dim=16", "tokenizer.caption_layers=1",
                   "tokenizer.batch_size=4")
    _check(tmp_path / "a", metrics, 256, 16)
    saved = json.loads((tmp_path / "a" / "pretrain" / "config.json").read_text())
    assert saved["hidden_size"] == 32          # the checkpoint's sizes, not the preset's 3,584
