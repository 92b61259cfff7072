"""Resuming interrupted training stages: every checkpoint carries a fingerprint of what its run depends on
(config, data, code), written into the checkpoint itself, so only a run of the very same configuration
and data picks up `last.ckpt`; and checkpoints are read weights-only, so a checkpoint never runs code.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> resume_point(folder, fingerprint({"lr": 1}), "demo")
(None, 0)
"""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from pathlib import Path

# Where a checkpoint keeps the fingerprint of the run that wrote it. Inside the checkpoint rather than
# in a file beside it: a file beside it could describe another run's checkpoint (a run killed
# before its first save), and then the wrong run would resume.
FINGERPRINT_KEY = "arm_fingerprint"

# What the stages' checkpoints hold besides tensors and plain containers (dict, OrderedDict, list,
# tuple, str, numbers, None), which weights-only loading accepts anyway: nothing. Every stage's
# `last.ckpt` (the default preset, and bf16-mixed, the GAN loss, AdamW, a constant schedule, gradient
# accumulation) lists no other type under `torch.serialization.get_unsafe_globals_in_checkpoint`.
# Hyper-parameters stay plain data on purpose. A type added to a checkpoint must be added here, or
# resuming stops with an error that says so.
CHECKPOINT_TYPES: tuple[type, ...] = ()


def fingerprint(section: dict, *files: Path, extra: str = "") -> str:
    """A short hash of a config section, extra text and the bytes of the given files (those that exist)."""
    h = hashlib.sha256(json.dumps(section, sort_keys=True).encode())
    h.update(extra.encode())
    for f in files:
        if Path(f).exists():
            h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def source_files(*modules: str) -> list[Path]:
    """The .py files of the given `arm` subpackages or modules (e.g. "tokenizer", "pretrain.py"), so a
    checkpoint written by other code is never resumed."""
    root = Path(__file__).resolve().parent
    files: list[Path] = []
    for name in modules:
        path = root / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def is_torn(path: Path) -> bool:
    """Whether `path` is not a whole zip archive (torch.save's format): a kill while it was written cuts
    off the archive's directory, which sits at its end."""
    try:
        with zipfile.ZipFile(path):
            return False
    except (zipfile.BadZipFile, OSError):
        return True


def set_aside(path: Path) -> Path:
    """Rename `path` to `<name>.unreadable` (numbered if taken) for a post-mortem; returns the new path."""
    kept, n = path.with_name(path.name + ".unreadable"), 1
    while kept.exists():
        n += 1
        kept = path.with_name(f"{path.name}.unreadable{n}")
    path.replace(kept)
    return kept


def read_checkpoint(path: Path, label: str) -> dict:
    """The checkpoint at `path` read weights-only (tensors, plain containers and CHECKPOINT_TYPES), memory
    mapped so a large one is not read whole. Any failure is raised with what to do about it."""
    import torch

    with torch.serialization.safe_globals(list(CHECKPOINT_TYPES)):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            error, unknown = e, unsafe_globals(path)
    if unknown:
        raise ValueError(f"{label}: {path} holds {', '.join(sorted(unknown))}, which the stage's checkpoints never "
                         "hold, so it is not loaded (loading could run code). If you wrote it and trust it, add "
                         "the type to arm.checkpoints.CHECKPOINT_TYPES; otherwise remove the file to train from "
                         "step 0") from error
    raise ValueError(f"{label}: cannot read {path} ({type(error).__name__}: {error}); remove it (or move it "
                     "away) to train from step 0") from error


def unsafe_globals(path: Path) -> list[str]:
    """The types and functions the pickle in `path` names that weights-only loading refuses (none when
    it cannot even be listed)."""
    import torch

    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # the caller reports the load error itself
        return []


def resume_point(ckpt_dir: Path, stamp: str, label: str) -> tuple[Path | None, int]:
    """(checkpoint to resume from or None, its global step): `ckpt_dir/last.ckpt` when the run that wrote
    it had fingerprint `stamp`. Writes nothing; the trainer stamps each checkpoint it saves
    (`stamp_checkpoints`). A torn `last.ckpt` is set aside; one that cannot be read otherwise stops
    the stage (`read_checkpoint`)."""
    last = Path(ckpt_dir) / "last.ckpt"
    if not last.exists():
        return None, 0
    # A sharded (FSDP) checkpoint is a folder whose meta.pt holds the loop state (and the fingerprint).
    state_file = last / "meta.pt" if last.is_dir() else last
    if is_torn(state_file):
        kept = set_aside(last)
        print(f"{label}: {last} is unreadable (cut short: it was probably being written when the run "
              f"stopped). Moved to {kept} for a post-mortem; training starts from step 0", file=sys.stderr)
        return None, 0
    state = read_checkpoint(state_file, label)
    if state.get(FINGERPRINT_KEY) != stamp:
        print(f"{label}: {last} was written by a run of other settings, data or code; training starts from "
              "step 0 and replaces it at its first checkpoint", file=sys.stderr)
        return None, 0
    start_step = int(state["global_step"])
    print(f"{label}: resuming from {last} at step {start_step}", file=sys.stderr)
    return last, start_step


def stamp_checkpoints(stamp: str):
    """A Lightning callback that writes `stamp` into every checkpoint the trainer saves, so a fingerprint
    exists only together with the checkpoint it describes."""
    import lightning as L

    class StampCheckpoints(L.Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
            checkpoint[FINGERPRINT_KEY] = stamp

    return StampCheckpoints()


def stop_at(step: int):
    """A Lightning callback that stops training once `step` optimiser steps are done, as an interruption would."""
    import lightning as L

    class StopAtStep(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step >= step:
                trainer.should_stop = True

    return StopAtStep()
