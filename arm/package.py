"""Stage `package`: the trained model into the BentoML model store, then a Bento built around it.

    arm package --config configs/default.yaml

1. saves `<package.model>` (the RL model by default) and the visual tokenizer as one BentoML model,
   `arm-unified:<version>`, with the config, the evaluation metrics and the data lineage as metadata;
2. runs `bentoml build` (offline: `lock_packages: false`) on `bentos/bentofile.yaml` with that model tag;
3. exports the Bento to `artifacts/package/arm.bento` (what DVC tracks; `bentoml import` restores it
   on another machine) and writes `artifacts/package/package.json` with both tags.

Then `bentoml serve arm:latest` (or `bentoml serve bentos.service:ARM` from the repository) serves it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from arm.config import ArmConfig, to_yaml
from arm.outputs import clear_outputs, refuse_foreign_files
from arm.processes import executable

OUTPUTS = ("arm.bento", "package.json")


def lineage(cfg: ArmConfig, stage: str) -> dict:
    """Where the model came from: the data's DVC hash, the stage's locked deps and the git commit."""
    import yaml

    out: dict = {}
    data_dvc = Path("data.dvc")
    if data_dvc.is_file():
        outs = (yaml.safe_load(data_dvc.read_text()) or {}).get("outs", [{}])
        out["data_md5"] = outs[0].get("md5", "")
    lock = Path("dvc.lock")
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        deps = stages.get(stage, {}).get("deps", [])
        out["stage_deps"] = {d["path"]: d.get("md5", "") for d in deps}
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                           check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return out


def package_stage(cfg: ArmConfig) -> dict:
    import bentoml

    pk = cfg.package
    model_dir = cfg.model_dir(pk.model)
    tokenizer_dir, out = cfg.stage_dir("tokenizer"), cfg.stage_dir("package")
    refuse_foreign_files(out, OUTPUTS, "package")
    for folder, stage in ((model_dir, pk.model), (tokenizer_dir, "tokenizer")):
        if not (folder / "model.safetensors").is_file():
            raise ValueError(f"{folder} has no trained model; run `arm {stage}` (or `dvc repro {stage}`) first")
    metrics_file = cfg.stage_dir("evaluate") / "metrics.json"
    metadata = {"config": to_yaml(cfg), "lineage": lineage(cfg, pk.model if pk.model in ("pretrain", "rl") else ""),
                "metrics": json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}}
    with bentoml.models.create(pk.model_name, labels={"project": "arm", "stage": str(pk.model)},
                               metadata=metadata) as stored:
        shutil.copytree(model_dir, stored.path_of("model"), ignore=shutil.ignore_patterns("checkpoints"))
        shutil.copytree(tokenizer_dir, stored.path_of("tokenizer"))
    model_tag = str(stored.tag)
    print(f"package: saved {model_tag} to the BentoML model store", file=sys.stderr)

    # The build context is the project root (where DVC runs stages): the Bento carries its arm/ and bentos/.
    root = Path.cwd()
    bentofile = root / "bentos" / "bentofile.yaml"
    if not bentofile.is_file():
        raise ValueError(f"{bentofile} not found; run `arm package` from the project root (where dvc.yaml is)")
    env = dict(os.environ, ARM_MODEL_TAG=model_tag, BENTOML_DO_NOT_TRACK="true")
    build = subprocess.run([executable("bentoml"), "build", "-f", str(bentofile), "--output", "tag", str(root)],
                           capture_output=True, text=True, env=env, cwd=root)
    if build.returncode != 0:
        raise RuntimeError(f"bentoml build failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}")
    bento_tag = build.stdout.strip().splitlines()[-1].replace("__tag__:", "").strip()
    clear_outputs(out, OUTPUTS)
    out.mkdir(parents=True, exist_ok=True)
    export = subprocess.run([executable("bentoml"), "export", bento_tag, str((out / "arm.bento").resolve())], capture_output=True, text=True,
                            env=env)
    if export.returncode != 0:
        raise RuntimeError(f"bentoml export failed:\n{export.stderr[-3000:]}")
    info = {"model_tag": model_tag, "bento_tag": bento_tag, "bento_file": str(out / "arm.bento"),
            "serve": f"bentoml serve {bento_tag}"}
    (out / "package.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"package: built {bento_tag} and exported it to {out / 'arm.bento'}; serve it with "
          f"`bentoml serve {bento_tag}` (port 3000)", file=sys.stderr)
    return info
