"""Test settings: offline, isolated Prefect home, and shared tiny worlds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Offline and isolated before anything imports Prefect, BentoML or transformers. The Prefect test
# harness does not isolate the result cache, hence a temporary PREFECT_HOME for the whole session.
_PREFECT_HOME = tempfile.mkdtemp(prefix="arm-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ.pop("PREFECT_API_URL", None)
os.environ["DO_NOT_TRACK"] = "1"
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
# BentoML's model and Bento store for the session: a temporary home, never the user's.
_BENTOML_HOME = tempfile.mkdtemp(prefix="arm-bentoml-home-")
os.environ["BENTOML_HOME"] = _BENTOML_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
# Stage subprocesses find `arm` and `dvc` of this environment.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")

REPO = Path(__file__).resolve().parents[1]


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)
    shutil.rmtree(_BENTOML_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_world_spec():
    from arm.world.dataset import WorldSpec

    return WorldSpec(num_scenes=120, num_eval_scenes=20, num_holdout_scenes=10, size=64, seed=7)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory, tiny_world_spec) -> Path:
    """A small world dataset, generated once per session (read-only for tests)."""
    from arm.world.dataset import generate_world

    out = tmp_path_factory.mktemp("world") / "data"
    generate_world(out, tiny_world_spec)
    return out


def project_copy(dest: Path) -> Path:
    """The project as a fresh clone would have it: the files git tracks or would track (not ignored),
    copied into `dest`, committed in a new git repository with DVC initialised as in the repo."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "commit", "-qm", "copy"], cwd=dest, check=True, env=env)
    return dest


# Every stage at its smallest: a few optimiser steps on the tiny world.
TINY = ["tokenizer.max_steps=4", "tokenizer.val_every_steps=2", "tokenizer.batch_size=8",
        "tokenizer.max_train_images=48", "tokenizer.num_val_images=16", "tokenizer.hidden=16",
        "tokenizer.decoder_channels=16", "tokenizer.caption_dim=16", "tokenizer.caption_layers=1",
        "tokenizer.warmup_steps=1", "tokenizer.decoder_patch_hidden=32",
        "pretrain.hidden_size=32", "pretrain.num_layers=2", "pretrain.num_heads=4", "pretrain.num_kv_heads=2",
        "pretrain.intermediate_size=64", "pretrain.batch_size=4", "pretrain.max_steps=6",
        "pretrain.val_every_steps=3", "pretrain.warmup_steps=2", "pretrain.val_records_per_task=8",
        "pretrain.sample_every_steps=3", "pretrain.sample_records_per_task=2",
        "rl.max_steps=2", "rl.prompts_per_step=2", "rl.group_size=2", "rl.micro_batch_size=4",
        "rl.sample_every_steps=1", "rl.checkpoint_every_steps=1",
        "evaluate.limit=4", "evaluate.tokenizer_images=16"]


def tiny_sections() -> dict[str, dict]:
    """TINY as nested config sections, to write into a copied project's configs/default.yaml."""
    import yaml

    sections: dict[str, dict] = {}
    for item in TINY:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        sections.setdefault(section, {})[name] = yaml.safe_load(value)
    return sections


@pytest.fixture(scope="session")
def encoded_stages(tmp_path_factory, tiny_world) -> Path:
    """prepare, tokenizer and encode run once on the tiny world (read-only: copy before writing)."""
    from arm.config import load_config
    from arm.encode import encode_stage
    from arm.prepare import prepare
    from arm.tokenizer.stage import tokenizer_stage

    root = tmp_path_factory.mktemp("encoded")
    cfg = load_config("configs/default.yaml", [f"data.root={tiny_world}", f"run.artifacts_dir={root}",
                                               f"run.log_dir={root / 'logs'}", *TINY])
    prepare(cfg)
    tokenizer_stage(cfg)
    encode_stage(cfg)
    return root


@pytest.fixture()
def encoded(tmp_path, tiny_world, encoded_stages):
    """A config whose artifacts folder holds its own copy of the tiny prepare, tokenizer and encode outputs."""
    from arm.config import load_config

    artifacts = tmp_path / "a"
    for stage in ("prepare", "tokenizer", "encode"):
        shutil.copytree(encoded_stages / stage, artifacts / stage)
    return load_config("configs/default.yaml", [f"data.root={tiny_world}", f"run.artifacts_dir={artifacts}",
                                                f"run.log_dir={artifacts / 'logs'}", *TINY])


def tiny_overrides(tiny_world: Path, artifacts: Path, *extra: str) -> list[str]:
    """The overrides that point the default preset at a tiny world and an artifacts folder, tiny sizes."""
    return [f"data.root={tiny_world}", f"run.artifacts_dir={artifacts}", f"run.log_dir={artifacts / 'logs'}",
            *TINY, *extra]


@pytest.fixture(scope="session")
def pretrained_stages(tmp_path_factory, tiny_world, encoded_stages) -> Path:
    """The tiny encoded stages plus a tiny `pretrain`, once per session (read-only: copy before writing)."""
    from arm.config import load_config
    from arm.model.stage import pretrain_stage

    root = tmp_path_factory.mktemp("pretrained")
    for stage in ("prepare", "tokenizer", "encode"):
        shutil.copytree(encoded_stages / stage, root / stage)
    pretrain_stage(load_config("configs/default.yaml", tiny_overrides(tiny_world, root)))
    return root


def copy_stages(source: Path, dest: Path, stages=("prepare", "tokenizer", "encode", "pretrain")) -> Path:
    for stage in stages:
        shutil.copytree(source / stage, dest / stage)
    return dest


def run_ok(cmd, cwd: Path, env: dict | None = None, timeout: float | None = None) -> str:
    """Run a command; fail the test with its output if it fails; return stdout + stderr."""
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


TINY_WORLD_ARGS = ["--num-scenes", "60", "--num-eval-scenes", "10", "--num-holdout-scenes", "6", "--seed", "5"]


def tiny_project(tmp_path: Path, **sections: dict) -> Path:
    """A fresh copy of the project whose data.dvc tracks a tiny world instead of the default one, and
    whose default preset trains tiny models (the stages' commands read configs/default.yaml); `sections`
    override more values (e.g. pretrain={"max_steps": 300}). Committed, as a user's clone would be."""
    import yaml

    repo = project_copy(tmp_path / "repo")
    (repo / "dvc.lock").unlink(missing_ok=True)
    config = repo / "configs" / "default.yaml"
    doc = yaml.safe_load(config.read_text())
    for section, values in tiny_sections().items():
        doc[section].update(values)
    for section, values in sections.items():
        doc[section].update(values)
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    run_ok(["arm", "world", "generate", "--out", "data", "--track", *TINY_WORLD_ARGS], repo)
    run_ok(["git", "add", "-A"], repo)
    run_ok(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny world"], repo)
    return repo
