"""Stage `pretrain` on a tiny world: trains, saves a loadable model, resumes exactly, and the engine
generates from what it saved."""

from __future__ import annotations

import json

import pytest
import torch

from arm.config import load_config
from arm.encode import encode_stage
from arm.generate import Engine, Sampling
from arm.model.sequences import generation_sequence
from arm.prepare import prepare
from arm.pretrain import load_unified_model, pretrain_stage
from arm.tokenizer.stage import tokenizer_stage

pytestmark = pytest.mark.slow

TINY = ["tokenizer.max_steps=4", "tokenizer.val_every_steps=2", "tokenizer.batch_size=8",
        "tokenizer.max_train_images=48", "tokenizer.num_val_images=16", "tokenizer.hidden=16",
        "tokenizer.decoder_channels=16", "tokenizer.caption_dim=16", "tokenizer.caption_layers=1",
        "tokenizer.warmup_steps=1",
        "pretrain.hidden_size=32", "pretrain.num_layers=2", "pretrain.num_heads=4", "pretrain.num_kv_heads=2",
        "pretrain.intermediate_size=64", "pretrain.batch_size=4", "pretrain.max_steps=6",
        "pretrain.val_every_steps=3", "pretrain.warmup_steps=2", "pretrain.val_records_per_task=8"]


@pytest.fixture()
def encoded(tmp_path, tiny_world):
    cfg = load_config("configs/default.yaml", [f"data.root={tiny_world}", f"run.artifacts_dir={tmp_path / 'a'}",
                                               f"run.log_dir={tmp_path / 'a' / 'logs'}", *TINY])
    prepare(cfg)
    tokenizer_stage(cfg)
    encode_stage(cfg)
    return cfg


def test_pretrain_saves_a_model_the_engine_can_sample_from(encoded):
    metrics = pretrain_stage(encoded)
    out = encoded.stage_dir("pretrain")
    assert {"config.json", "model.safetensors", "vocab.json", "tokenizer.json", "metrics.json"} <= {
        p.name for p in out.iterdir()}
    assert "val/loss" in metrics and metrics["parameters"] > 0
    model, info, tokenizer = load_unified_model(out)
    vocab = info.vocab()
    assert model.get_input_embeddings().weight.shape[0] == vocab.size
    prompt, _ = generation_sequence(vocab, tokenizer.encode("a red circle").ids, [])
    codes = Engine(model, vocab).generate_images([prompt[:-1]], info.grid**2, sampling=Sampling(seed=0))
    assert codes.shape == (1, 64) and int(codes.max()) < info.codebook_size
    events = json.loads((out / "vocab.json").read_text())
    assert events["grid"] == 8


def test_pretrain_resumes_exactly(encoded):
    import shutil

    pretrain_stage(encoded)
    full = load_unified_model(encoded.stage_dir("pretrain"))[0].state_dict()
    shutil.rmtree(encoded.artifacts / "checkpoints" / "pretrain")
    assert pretrain_stage(encoded, stop_at_step=3) is None
    pretrain_stage(encoded)
    resumed = load_unified_model(encoded.stage_dir("pretrain"))[0].state_dict()
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=1e-5, atol=1e-6)


def test_fsdp_is_refused_until_it_exists(encoded):
    from arm.config import load_config as load

    cfg = load("configs/default.yaml", [f"run.artifacts_dir={encoded.artifacts}", "pretrain.strategy=fsdp"])
    with pytest.raises(ValueError, match="not available yet"):
        pretrain_stage(cfg)
