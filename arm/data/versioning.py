"""data.dvc: the raw dataset under version control, and bringing it back on a fresh clone.

`data.dvc` records the world's generation parameters in its `meta` field. On a fresh clone the data
folder is absent and there may be no DVC remote, so `ensure_data` takes, in order: the folder as it is;
`dvc checkout` from the local cache; or a regeneration from those parameters, checked against the
recorded hash (generation is byte-deterministic).

    arm data ensure            # before `dvc repro`; the lifecycle flow runs it for you
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import yaml

from arm.world.dataset import WorldSpec, generate_world


def dvc_executable() -> str:
    """The `dvc` beside this Python (the project's virtual environment) or on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    if beside.exists():
        return str(beside)
    found = shutil.which("dvc")
    if not found:
        raise ValueError("dvc is not installed in this environment; run `make install` (pip install -e .)")
    return found


def world_meta(spec: WorldSpec) -> dict:
    return {"world": {f.name: getattr(spec, f.name) for f in fields(WorldSpec)}}


def read_meta(dvc_file: Path) -> dict:
    return (yaml.safe_load(dvc_file.read_text()) or {}).get("meta") or {}


def write_meta(dvc_file: Path, meta: dict) -> None:
    """Add or replace the `meta` field of a .dvc file, keeping the rest as DVC wrote it."""
    doc = yaml.safe_load(dvc_file.read_text()) or {}
    doc["meta"] = meta
    dvc_file.write_text(yaml.safe_dump(doc, sort_keys=False))


def data_in_sync(dvc_file: Path, cwd: Path) -> bool:
    result = subprocess.run([dvc_executable(), "status", "--json", str(dvc_file.name)], cwd=cwd,
                            capture_output=True, text=True)
    return result.returncode == 0 and result.stdout.strip() in ("{}", "")


def ensure_data(root: str | Path = "data", manifest: str = "manifest.jsonl", dvc_file: str | Path = "data.dvc",
                log=print) -> str:
    """Make sure the dataset folder exists; returns how ('present', 'checkout', 'generated')."""
    root, dvc_file = Path(root), Path(dvc_file)
    if (root / manifest).is_file():
        return "present"
    if not dvc_file.is_file():
        raise ValueError(f"{root / manifest} is missing and there is no {dvc_file}; create the data with "
                         f"`arm world generate --out {root}` or `arm import ... --out {root}`")
    cwd = dvc_file.resolve().parent
    subprocess.run([dvc_executable(), "checkout", "--quiet", dvc_file.name], cwd=cwd, capture_output=True)
    if (root / manifest).is_file():
        log(f"data: restored {root} from the DVC cache")
        return "checkout"
    meta = read_meta(dvc_file).get("world")
    if not meta:
        raise ValueError(f"{root} is missing and {dvc_file} has no world parameters to regenerate it from; "
                         f"`dvc pull {dvc_file}` from your remote, or re-import your data")
    spec = WorldSpec(**meta)
    log(f"data: generating the Shapes world into {root} from {dvc_file} ({spec.num_scenes} training scenes)")
    generate_world(root, spec)
    if not data_in_sync(dvc_file, cwd):
        raise ValueError(f"the regenerated {root} differs from {dvc_file} (did numpy or Pillow change how it "
                         f"writes files?); if that is expected, run `dvc add {root}` to track the new bytes")
    return "generated"
