"""The `tokenizer` and `encode` stages end to end on a tiny world: declared outputs, exact resume, codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from arm.config import load_config
from arm.encode import encode_stage, load_codes
from arm.prepare import prepare
from arm.tokenizer.model import VisualTokenizer
from arm.tokenizer.stage import tokenizer_stage

pytestmark = pytest.mark.slow

TINY = ["tokenizer.max_steps=6", "tokenizer.val_every_steps=3", "tokenizer.batch_size=8",
        "tokenizer.max_train_images=64", "tokenizer.num_val_images=24", "tokenizer.hidden=32",
        "tokenizer.decoder_channels=32", "tokenizer.caption_dim=32", "tokenizer.caption_layers=1",
        "tokenizer.warmup_steps=2"]


@pytest.fixture()
def prepared(tmp_path, tiny_world):
    cfg = load_config("configs/default.yaml", [f"data.root={tiny_world}", f"run.artifacts_dir={tmp_path / 'a'}",
                                               f"run.log_dir={tmp_path / 'a' / 'logs'}", *TINY])
    prepare(cfg)
    return cfg


def test_tokenizer_stage_writes_exactly_its_outputs_and_logs(prepared):
    metrics = tokenizer_stage(prepared)
    out = prepared.stage_dir("tokenizer")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("psnr", "exact_recovery", "code_usage", "perplexity", "train_minutes"):
        assert key in saved and saved[key] == metrics[key]
    assert 0 <= saved["code_usage"] <= 1 and saved["perplexity"] >= 1
    # TensorBoard got the losses and an image grid.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(prepared.artifacts / "logs" / "tokenizer"))
    events.Reload()
    tags = events.Tags()
    assert {"train/pix", "train/feat", "train/sig", "train/cap", "train/psnr", "val/psnr"} <= set(tags["scalars"])
    assert "val/inputs_and_reconstructions" in tags["images"]
    assert any(t.startswith("lr") for t in tags["scalars"])


def test_tokenizer_resumes_exactly(prepared, tmp_path):
    import shutil

    full = tokenizer_stage(prepared)
    full_state = VisualTokenizer.load(prepared.stage_dir("tokenizer")).state_dict()
    # Interrupt at step 3 (its checkpoint is `last.ckpt`), then run again to the end.
    ckpt_dir = prepared.artifacts / "checkpoints" / "tokenizer"
    shutil.rmtree(ckpt_dir)
    shutil.rmtree(prepared.stage_dir("tokenizer"))
    assert tokenizer_stage(prepared, stop_at_step=3) is None
    assert not prepared.stage_dir("tokenizer").exists() and (ckpt_dir / "last.ckpt").exists()
    resumed = tokenizer_stage(prepared)
    resumed_state = VisualTokenizer.load(prepared.stage_dir("tokenizer")).state_dict()
    for k in full_state:
        torch.testing.assert_close(resumed_state[k], full_state[k], rtol=1e-5, atol=1e-6)
    assert resumed["psnr"] == pytest.approx(full["psnr"], rel=1e-5)
    # Started again when already finished: restores the last checkpoint instead of saving fresh weights.
    tokenizer_stage(prepared)
    again = VisualTokenizer.load(prepared.stage_dir("tokenizer")).state_dict()
    for k in full_state:
        torch.testing.assert_close(again[k], full_state[k], rtol=1e-5, atol=1e-6)


def test_encode_writes_codes_for_every_image(prepared):
    tokenizer_stage(prepared)
    summary = encode_stage(prepared)
    keys, codes = load_codes(prepared.stage_dir("encode"), "train")
    assert codes.dtype == np.uint16 and codes.shape[1:] == (8, 8) and len(keys) == summary["images"]["train"]
    assert int(codes.max()) < 1000
    # The codes are what the tokenizer gives for those pixels.
    from arm.data.shards import load_images
    from arm.images import to_tensor

    model = VisualTokenizer.load(prepared.stage_dir("tokenizer"))
    pkeys, pixels = load_images(prepared.stage_dir("prepare"), "train")
    assert pkeys == keys
    assert np.array_equal(model.encode(to_tensor(pixels[:16])).numpy(), codes[:16].astype(np.int64))


class Killed(Exception):
    """A run's death (a lost machine, SIGKILL), where no code of the run gets to save anything."""


def killed(*args, **kwargs):
    raise Killed


def test_a_run_killed_before_its_first_checkpoint_does_not_later_resume_another_runs(prepared, capsys, monkeypatch):
    """Run X leaves `last.ckpt` at step 3. A run of another configuration Y dies before its first
    checkpoint (here as its trainer is built, after it looked for a checkpoint to resume). Started
    again, Y trains from step 0: X's checkpoint is not Y's. Y's own checkpoints then replace X's, and Y
    started once more resumes its own."""
    assert tokenizer_stage(prepared, stop_at_step=3) is None
    other = load_config("configs/default.yaml", [f"data.root={prepared.data.root}",
                                                 f"run.artifacts_dir={prepared.artifacts}",
                                                 f"run.log_dir={prepared.run.log_dir}", *TINY, "tokenizer.lr=0.001"])
    with monkeypatch.context() as patched:
        patched.setattr("arm.training.stage_trainer", killed)
        with pytest.raises(Killed):
            tokenizer_stage(other)
    capsys.readouterr()
    tokenizer_stage(other)
    assert "resuming from" not in capsys.readouterr().err
    tokenizer_stage(other)
    assert "resuming from" in capsys.readouterr().err
    assert sorted(p.name for p in (prepared.artifacts / "checkpoints" / "tokenizer").iterdir()) == ["last.ckpt"]


class RunsOnLoad:
    """Pickles as a call of os.mkdir(path): loading it without weights_only makes the folder."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return os.mkdir, (self.path,)


def test_a_checkpoint_that_would_run_code_is_refused_and_kept(prepared, tmp_path):
    """Checkpoints are read weights-only: a `last.ckpt` holding anything but tensors and plain data
    stops the stage with an error naming the fix, runs nothing, and stays where it is."""
    assert tokenizer_stage(prepared, stop_at_step=3) is None
    last = prepared.artifacts / "checkpoints" / "tokenizer" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    checkpoint["hyper_parameters"]["extra"] = RunsOnLoad(tmp_path / "ran")
    torch.save(checkpoint, last)
    with pytest.raises(ValueError, match="CHECKPOINT_TYPES"):
        tokenizer_stage(prepared)
    assert not (tmp_path / "ran").exists()
    assert last.is_file()
