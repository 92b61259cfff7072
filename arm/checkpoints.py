"""Resuming interrupted training stages: a checkpoint folder stamped with a fingerprint of what the run
depends on, so only a run of the very same configuration and data picks up `last.ckpt`.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> resume_point(folder, fingerprint({"lr": 1}), "demo")
(None, 0)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path


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


def resume_point(ckpt_dir: Path, stamp: str, label: str) -> tuple[Path | None, int]:
    """(checkpoint to resume from or None, its global step); stamps the folder for this run."""
    import torch

    stamp_file, last = ckpt_dir / "fingerprint.txt", ckpt_dir / "last.ckpt"
    resume = last if last.exists() and stamp_file.exists() and stamp_file.read_text() == stamp else None
    # A sharded (FSDP) checkpoint is a folder whose meta.pt holds the loop state.
    meta = resume / "meta.pt" if resume is not None and resume.is_dir() else resume
    start_step = 0
    if resume is not None:
        try:
            start_step = int(torch.load(meta, map_location="cpu", weights_only=False)["global_step"])
        except Exception as e:  # killed while writing it: keep the bytes for a post-mortem, start afresh
            kept = resume.with_name(resume.name + ".unreadable")
            resume.replace(kept)
            print(f"{label}: {resume} is unreadable ({type(e).__name__}: {e}); it was probably being written "
                  f"when the run stopped. Moved to {kept}; training starts from step 0", file=sys.stderr)
            resume = None
    if resume:
        print(f"{label}: resuming from {resume} at step {start_step}", file=sys.stderr)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(stamp)
    return resume, start_step


def stop_at(step: int):
    """A Lightning callback that stops training once `step` optimiser steps are done, as an interruption would."""
    import lightning as L

    class StopAtStep(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step >= step:
                trainer.should_stop = True

    return StopAtStep()
