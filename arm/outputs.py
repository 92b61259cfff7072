"""A stage's output folder holds its outputs and nothing else it could lose. A stage replaces its outputs
on every run, so before any work it refuses a folder holding anything it does not write (a mistyped
`rl.out_dir`, a folder of the user's), naming what it found and what to do, and it deletes only the
entries its outputs are named by: it never deletes what it did not write.

A stage's outputs are glob patterns of the names directly inside its folder (`model-*.safetensors`);
`kept` paths are what its run writes there besides (checkpoints, TensorBoard logs): allowed, never cleared.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> for name in ("metrics.json", "notes.txt", "logs"):
...     _ = (folder / name).write_text("")
>>> foreign_entries(folder, ("metrics.json",), kept=[folder / "logs" / "rl"])
['notes.txt']
"""

from __future__ import annotations

import shutil
from fnmatch import fnmatch
from pathlib import Path
from typing import Iterable, Sequence


def entry_holding(folder: Path, path: str | Path) -> str | None:
    """The name of the entry directly inside `folder` that is or holds `path`; None if `path` is outside."""
    try:
        parts = Path(path).resolve().relative_to(Path(folder).resolve()).parts
    except ValueError:
        return None
    return parts[0] if parts else None


def foreign_entries(folder: Path, own: Sequence[str], kept: Iterable[str | Path] = ()) -> list[str]:
    """The names in `folder` (none if it does not exist) that match none of the patterns `own` and hold
    none of the `kept` paths: what the stage did not write."""
    if not Path(folder).is_dir():
        return []
    kept_names = {entry_holding(folder, path) for path in kept} - {None}
    return sorted(p.name for p in Path(folder).iterdir()
                  if p.name not in kept_names and not any(fnmatch(p.name, pattern) for pattern in own))


def refuse_foreign_files(folder: Path, own: Sequence[str], stage: str, *, setting: str = "run.artifacts_dir",
                         kept: Iterable[str | Path] = ()) -> None:
    """Stop (ValueError) before stage `stage` writes into `folder` if it is a file or holds anything
    the stage does not write; `setting` is the config key that chooses the folder."""
    if Path(folder).exists() and not Path(folder).is_dir():
        raise ValueError(f"{stage}: {folder} is a file, and {stage} writes a folder there; choose another "
                         f"folder ({setting}) or move the file away")
    strangers = foreign_entries(folder, own, kept)
    if strangers:
        shown = ", ".join(strangers[:5]) + (f" and {len(strangers) - 5} more" if len(strangers) > 5 else "")
        raise ValueError(f"{stage}: {folder} holds {shown}, which {stage} did not write; it replaces its outputs "
                         f"there on every run, so it runs only in an empty folder or one holding its own outputs. "
                         f"Choose an empty folder ({setting}) or remove those files")


def clear_outputs(folder: Path, own: Sequence[str], kept: Iterable[str | Path] = ()) -> None:
    """Delete what an earlier run of the stage left in `folder`: the entries matching `own`, except those
    holding `kept` paths. Anything else stays (`refuse_foreign_files` has stopped the run before)."""
    if not Path(folder).is_dir():
        return
    kept_names = {entry_holding(folder, path) for path in kept} - {None}
    for item in Path(folder).iterdir():
        if item.name not in kept_names and any(fnmatch(item.name, pattern) for pattern in own):
            shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
