"""Resume only what the same configuration, data and code wrote; read checkpoints weights-only; set
aside only a torn file."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch

from arm.checkpoints import FINGERPRINT_KEY, fingerprint, resume_point, source_files


def test_fingerprint_changes_with_config_data_and_code(tmp_path):
    data, code = tmp_path / "summary.json", tmp_path / "stage.py"
    data.write_text("{}")
    code.write_text("x = 1\n")
    base = fingerprint({"lr": 1}, data, code)
    assert fingerprint({"lr": 1}, data, code) == base
    assert fingerprint({"lr": 2}, data, code) != base
    code.write_text("x = 2\n")
    assert fingerprint({"lr": 1}, data, code) != base


def leave_checkpoint(folder, stamp: str, step: int = 3, **extra) -> None:
    """A `last.ckpt` as a stage leaves it: the loop state, stamped with its run's fingerprint."""
    torch.save({"global_step": step, "state_dict": {"w": torch.ones(2)}, FINGERPRINT_KEY: stamp, **extra},
               folder / "last.ckpt")


def test_only_a_checkpoint_stamped_by_the_same_run_resumes_and_resuming_writes_nothing(tmp_path, capsys):
    files = source_files("tokenizer", "training.py")
    assert any(f.name == "stage.py" for f in files) and any(f.name == "training.py" for f in files)
    leave_checkpoint(tmp_path, "other-run")
    assert resume_point(tmp_path, "this-run", "demo") == (None, 0)
    assert "other settings" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]   # left for the trainer to replace
    leave_checkpoint(tmp_path, "this-run", step=7)
    assert resume_point(tmp_path, "this-run", "demo") == (tmp_path / "last.ckpt", 7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


@pytest.mark.parametrize("bytes_kept", [0, 10, 0.5])
def test_a_torn_checkpoint_is_set_aside_not_resumed(tmp_path, capsys, bytes_kept):
    """A run killed while it wrote last.ckpt leaves a truncated file: the next run says so and starts over."""
    leave_checkpoint(tmp_path, "same")
    whole = (tmp_path / "last.ckpt").read_bytes()
    (tmp_path / "last.ckpt").write_bytes(whole[:int(bytes_kept * len(whole)) if bytes_kept < 1 else bytes_kept])
    assert resume_point(tmp_path, "same", "demo") == (None, 0)
    assert (tmp_path / "last.ckpt.unreadable").is_file() and not (tmp_path / "last.ckpt").exists()
    assert "unreadable" in capsys.readouterr().err
    leave_checkpoint(tmp_path, "same")
    (tmp_path / "last.ckpt").write_bytes(b"PK\x03\x04 torn again")
    assert resume_point(tmp_path, "same", "demo") == (None, 0)
    assert (tmp_path / "last.ckpt.unreadable2").is_file()      # the first post-mortem copy is kept


class RunsOnLoad:
    """Pickles as a call of os.mkdir(path): loading it without weights_only makes the folder."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_checkpoint_holding_other_types_is_refused_and_left_in_place(tmp_path):
    leave_checkpoint(tmp_path, "same", extra=RunsOnLoad(tmp_path / "ran"))
    with pytest.raises(ValueError, match="posix.mkdir.*CHECKPOINT_TYPES"):
        resume_point(tmp_path, "same", "demo")
    assert not (tmp_path / "ran").exists() and (tmp_path / "last.ckpt").is_file()


def test_an_unreadable_checkpoint_that_is_not_torn_is_raised_not_set_aside(tmp_path):
    """A whole zip archive that is no checkpoint (a file copied over it): nothing to explain by a kill."""
    import zipfile

    with zipfile.ZipFile(tmp_path / "last.ckpt", "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")
    with pytest.raises(ValueError, match="cannot read .*remove it"):
        resume_point(tmp_path, "same", "demo")
    assert (tmp_path / "last.ckpt").is_file()


class Line(L.LightningModule):
    """The smallest Lightning module: one weight, a squared loss, plain SGD."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return ((self.w - batch) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def line_trainer(tmp_path, stamp: str):
    """A stage's trainer for `Line`: two steps, a checkpoint after each."""
    from arm.training import stage_trainer

    return stage_trainer("demo", tmp_path / "logs", tmp_path / "ckpt", stamp=stamp, max_steps=2, checkpoint_every=1,
                         accelerator="cpu")


def test_the_trainer_stamps_every_checkpoint_it_saves(tmp_path):
    from arm.training import fit

    fit(line_trainer(tmp_path, "run-a"), Line(), torch.ones(4, 1))
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved[FINGERPRINT_KEY] == "run-a" and saved["global_step"] == 2
    assert resume_point(tmp_path / "ckpt", "run-a", "demo")[1] == 2
    assert resume_point(tmp_path / "ckpt", "run-b", "demo") == (None, 0)


def test_another_runs_checkpoint_is_replaced_by_this_runs_own(tmp_path):
    """Lightning would save beside an existing `last.ckpt` as `last-v1.ckpt`, which nothing resumes."""
    from arm.training import fit

    fit(line_trainer(tmp_path, "run-a"), Line(), torch.ones(4, 1))
    assert resume_point(tmp_path / "ckpt", "run-b", "demo") == (None, 0)
    fit(line_trainer(tmp_path, "run-b"), Line(), torch.ones(4, 1))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.ckpt"]
    assert resume_point(tmp_path / "ckpt", "run-b", "demo")[1] == 2


def test_lightning_resumes_weights_only_even_when_the_environment_asks_otherwise(tmp_path, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD turns off weights-only loading wherever a caller left it unsaid,
    as Lightning does unless told; `fit` says it, so the checkpoint cannot run code."""
    from arm.training import fit

    (tmp_path / "ckpt").mkdir()
    leave_checkpoint(tmp_path / "ckpt", "run-a", extra=RunsOnLoad(tmp_path / "ran"))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(Exception, match="posix.mkdir"):
        fit(line_trainer(tmp_path, "run-a"), Line(), torch.ones(4, 1), resume=tmp_path / "ckpt" / "last.ckpt")
    assert not (tmp_path / "ran").exists()
