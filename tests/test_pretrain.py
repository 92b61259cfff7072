"""Stage `pretrain` on a tiny world: trains, saves a loadable model, resumes exactly, and the engine
generates from what it saved."""

from __future__ import annotations

import json

import pytest
import torch

from arm.generate import Engine, Sampling
from arm.model.sequences import generation_sequence
from arm.model.vocab import SOI, Vocab
from arm.model.saved import load_unified_model
from arm.model.stage import pretrain_stage

pytestmark = pytest.mark.slow

from tests.conftest import TINY


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


def test_image_embeddings_start_from_the_tokenizer_codes(encoded):
    """pretrain.image_embedding_init=tokenizer: image-code rows follow the tokenizer's code features
    (codes that differ in one FSQ level are nearer than codes that differ in all), are centred and
    scaled like the text rows, and leave the text rows alone; the same seed gives the same rows."""
    from arm.config import load_config
    from arm.model.backbone import build_causal_lm
    from arm.model.stage import backbone_kwargs, init_image_embeddings
    from arm.tokenizer.model import VisualTokenizer

    cfg = load_config("configs/default.yaml", [f"run.artifacts_dir={encoded.artifacts}", *TINY,
                                               "pretrain.image_embedding_init=tokenizer"])
    fsq = VisualTokenizer.load(cfg.stage_dir("tokenizer")).fsq
    vocab = Vocab(text_size=100, codebook_size=fsq.codebook_size, specials={SOI: 99})
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(build_causal_lm(**backbone_kwargs(cfg, vocab, cfg.tokenizer.grid)))
    before = models[0].get_input_embeddings().weight.clone()
    for model in models:
        init_image_embeddings(model, vocab, cfg.stage_dir("tokenizer"), seed=0)
    table = models[0].get_input_embeddings().weight.detach()
    torch.testing.assert_close(table, models[1].get_input_embeddings().weight)
    torch.testing.assert_close(table[:100], before[:100])
    rows = table[100:]
    # Centred and scaled like the text rows (a pretrained LM's rows would set both).
    torch.testing.assert_close(rows.mean(0), before[:100].mean(0), rtol=0, atol=1e-6)
    assert abs(float((rows - rows.mean(0)).std() / before[:100].std()) - 1) < 1e-3
    codes = fsq.indices_to_codes(torch.arange(fsq.codebook_size))
    one_level = (codes - codes[0]).ne(0).sum(1) == 1
    all_levels = (codes - codes[0]).ne(0).all(1)
    distance = (rows - rows[0]).norm(dim=1)
    assert distance[one_level].mean() < distance[all_levels].mean()


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
    # Started again when already finished: restores the last checkpoint and saves the same weights.
    pretrain_stage(encoded)
    again = load_unified_model(encoded.stage_dir("pretrain"))[0].state_dict()
    for k in full:
        torch.testing.assert_close(again[k], full[k], rtol=1e-5, atol=1e-6)


# The default task mix: VQA answers, captions and text answers differ in length, so each process holds
# a different number of targets, and only the global normalisation (data_parallel_share) makes W
# processes train the one-process weights.
DISTRIBUTED = ["pretrain.accelerator=cpu", "pretrain.sample_every_steps=0",
               # fp32: a bf16 matmul rounds differently at each batch shape, so half batches would not
               # reproduce the full batch's weights to 1e-4 (test_fsdp_with_bf16_... trains in bf16).
               "pretrain.precision=32-true"]


def _run_cli(cfg, artifacts, *overrides, stop_at=None, launcher=()):
    """`arm pretrain` in a fresh process, as a user runs it: Lightning launches the other processes, or
    `launcher` (e.g. torchrun) starts them all."""
    import shutil
    import subprocess
    import sys

    for stage in ("prepare", "tokenizer", "encode"):
        if not (artifacts / stage).exists():
            shutil.copytree(cfg.stage_dir(stage), artifacts / stage)
    cmd = [*(launcher or [sys.executable]), "-m", "arm", "pretrain", "--config", "configs/default.yaml",
           f"data.root={cfg.data.root}", f"run.artifacts_dir={artifacts}", f"run.log_dir={artifacts / 'logs'}",
           *TINY, *DISTRIBUTED, *overrides] + (["--stop-at-step", str(stop_at)] if stop_at else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "pretrain" / "model.safetensors"))


@pytest.fixture()
def one_process(encoded):
    from arm.config import load_config as load

    cfg = load("configs/default.yaml", [f"data.root={encoded.data.root}", f"run.artifacts_dir={encoded.artifacts}",
                                        f"run.log_dir={encoded.artifacts / 'logs'}", *TINY, *DISTRIBUTED])
    pretrain_stage(cfg)
    return _weights(encoded.artifacts)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_train_the_same_model_as_one(encoded, one_process, tmp_path, strategy):
    """Two CPU processes (gloo), each with half of every global batch, end with the one-process weights."""
    _run_cli(encoded, tmp_path / strategy, f"pretrain.strategy={strategy}", "pretrain.devices=2")
    got = _weights(tmp_path / strategy)
    assert got.keys() == one_process.keys()
    for k in one_process:
        torch.testing.assert_close(got[k], one_process[k], rtol=1e-4, atol=1e-5)


def test_fsdp_with_adamw_trains_the_same_model_as_one(encoded, tmp_path):
    """The parity tests above train with the default's Muon, whose update under FSDP2 is computed on
    each matrix gathered whole (arm.optim); AdamW, elementwise, steps each shard on its own."""
    _run_cli(encoded, tmp_path / "one", "pretrain.optimizer=adamw")
    _run_cli(encoded, tmp_path / "fsdp", "pretrain.optimizer=adamw", "pretrain.strategy=fsdp", "pretrain.devices=2")
    one, got = _weights(tmp_path / "one"), _weights(tmp_path / "fsdp")
    for k in one:
        torch.testing.assert_close(got[k], one[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_launches_the_same_training(encoded, one_process, tmp_path, strategy):
    """How a cluster starts pretrain (docs/lifecycle.md): torchrun starts every process, Lightning joins
    them (torchelastic environment) instead of launching its own."""
    from arm.processes import executable

    torchrun = [executable("torchrun"), "--standalone", "--nproc-per-node", "2"]
    _run_cli(encoded, tmp_path / "torchrun", f"pretrain.strategy={strategy}", "pretrain.devices=2", launcher=torchrun)
    got = _weights(tmp_path / "torchrun")
    for k in one_process:
        torch.testing.assert_close(got[k], one_process[k], rtol=1e-4, atol=1e-5)


def test_compiled_blocks_under_fsdp_train_the_same_model_as_one(encoded, one_process, tmp_path):
    """pretrain.compile=true (the 7B preset's): each decoder block through torch.compile before FSDP2
    shards it (C++ kernels on this CPU), two processes; the one-process eager weights up to the fused
    kernels' rounding."""
    _run_cli(encoded, tmp_path / "compiled", "pretrain.strategy=fsdp", "pretrain.devices=2", "pretrain.compile=true")
    got = _weights(tmp_path / "compiled")
    for k in one_process:
        torch.testing.assert_close(got[k], one_process[k], rtol=1e-4, atol=1e-5)


def test_fsdp_resumes_from_its_sharded_checkpoint(encoded, one_process, tmp_path):
    out = tmp_path / "resume"
    _run_cli(encoded, out, "pretrain.strategy=fsdp", "pretrain.devices=2", stop_at=3)
    assert (out / "checkpoints" / "pretrain" / "last.ckpt" / "meta.pt").exists()  # one shard per process
    assert not (out / "pretrain").exists()
    log = _run_cli(encoded, out, "pretrain.strategy=fsdp", "pretrain.devices=2")
    assert "resuming from" in log and "at step 3" in log
    got = _weights(out)
    for k in one_process:
        torch.testing.assert_close(got[k], one_process[k], rtol=1e-4, atol=1e-5)


def test_fsdp_with_bf16_activation_checkpointing_and_accumulation_trains(encoded, tmp_path):
    out = tmp_path / "bf16"
    _run_cli(encoded, out, "pretrain.strategy=fsdp", "pretrain.devices=2", "pretrain.precision=bf16-mixed",
             "pretrain.activation_checkpointing=true", "pretrain.accumulate_grad_batches=2")
    import math

    metrics = json.loads((out / "pretrain" / "metrics.json").read_text())
    vocab = json.loads((out / "pretrain" / "vocab.json").read_text())
    # Finite, and no worse than a uniform guess over the id space after a few steps.
    assert math.isfinite(metrics["val/loss"]) and metrics["val/loss"] < math.log(vocab["text_size"] + vocab["codebook_size"])
    assert all(v.dtype == torch.float32 for v in _weights(out).values())  # saved full precision


def test_global_batch_must_split_evenly(encoded):
    from arm.config import load_config as load

    cfg = load("configs/default.yaml", [f"run.artifacts_dir={encoded.artifacts}", "pretrain.strategy=ddp",
                                        "pretrain.devices=3", "pretrain.batch_size=4"])
    with pytest.raises(ValueError, match="multiple of devices"):
        pretrain_stage(cfg)
