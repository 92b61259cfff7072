"""The real engines on a fresh copy of the project: `dvc repro`, data.dvc restore, the Prefect flow."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from arm.data.versioning import data_in_sync, dvc_executable, ensure_data, read_meta
from tests.conftest import project_copy, tiny_sections

pytestmark = pytest.mark.slow

TINY = ["--num-scenes", "60", "--num-eval-scenes", "10", "--num-holdout-scenes", "6", "--seed", "5"]


def _run(cmd, cwd: Path) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _tiny_project(tmp_path: Path) -> Path:
    """A fresh copy of the project whose data.dvc tracks a tiny world instead of the default one, and
    whose default preset trains tiny models (the stages' commands read configs/default.yaml)."""
    repo = project_copy(tmp_path / "repo")
    (repo / "dvc.lock").unlink(missing_ok=True)
    config = repo / "configs" / "default.yaml"
    doc = yaml.safe_load(config.read_text())
    for section, values in tiny_sections().items():
        doc[section].update(values)
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    _run(["arm", "world", "generate", "--out", "data", "--track", *TINY], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny world"], repo)
    return repo


def test_dvc_repro_runs_prepare_then_skips_then_reruns_on_param_change(tmp_path):
    repo = _tiny_project(tmp_path)
    dvc = dvc_executable()
    first = _run([dvc, "repro", "prepare"], repo)
    assert "Running stage 'prepare'" in first
    assert (repo / "artifacts" / "prepare" / "tokenizer.json").is_file()
    assert (repo / "dvc.lock").is_file()

    second = _run([dvc, "repro", "prepare"], repo)
    assert "Running stage" not in second and "up to date" in second

    config = repo / "configs" / "default.yaml"
    doc = yaml.safe_load(config.read_text())
    doc["prepare"]["vocab_size"] = 400
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    third = _run([dvc, "repro", "prepare"], repo)
    assert "Running stage 'prepare'" in third


def test_data_is_restored_from_the_cache_or_regenerated_from_data_dvc(tmp_path):
    repo = _tiny_project(tmp_path)
    assert read_meta(repo / "data.dvc")["world"]["num_scenes"] == 60
    shutil.rmtree(repo / "data")
    assert ensure_data(repo / "data", dvc_file=repo / "data.dvc") == "checkout"
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    assert ensure_data(repo / "data", dvc_file=repo / "data.dvc") == "generated"
    assert data_in_sync(repo / "data.dvc", repo)
    assert ensure_data(repo / "data", dvc_file=repo / "data.dvc") == "present"


def test_the_shipped_data_dvc_regenerates_byte_for_byte(tmp_path):
    """What a fresh clone does: no data/, no cache; the default world is regenerated from data.dvc's
    parameters and matches its recorded hash."""
    repo = project_copy(tmp_path / "repo")
    assert not (repo / "data").exists()
    assert ensure_data(repo / "data", dvc_file=repo / "data.dvc") == "generated"


@pytest.fixture(scope="module")
def prefect_server():
    """One temporary Prefect server (its own SQLite database) for the flow tests of this module."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_prefect_flow_runs_every_stage_through_dvc(tmp_path, prefect_server):
    from flows.lifecycle import STAGES, lifecycle

    repo = _tiny_project(tmp_path)
    first = lifecycle(repo=str(repo))
    second = lifecycle(repo=str(repo))
    assert first == {"data": "present", **{stage: "ran" for stage in STAGES}}
    assert second == {"data": "present", **{stage: "skipped" for stage in STAGES}}
    assert (repo / "artifacts" / "prepare" / "summary.json").is_file()
    assert (repo / "artifacts" / "tokenizer" / "model.safetensors").is_file()
    assert any((repo / "artifacts" / "encode").glob("train-*.npz"))
    assert (repo / "artifacts" / "pretrain" / "model.safetensors").is_file()
    # dvc repro agrees that nothing is left to do.
    assert "up to date" in _run([dvc_executable(), "status"], repo)


def test_flow_reports_which_stage_failed(tmp_path, prefect_server):
    from flows.lifecycle import StageFailed, lifecycle

    repo = _tiny_project(tmp_path)
    # Break the manifest: every record unusable, so prepare exits with its one-line error.
    (repo / "data" / "manifest.jsonl").write_text('{"id": "x", "task": "caption", "image": "no.png", "text": "t"}\n')
    with pytest.raises(StageFailed, match=r"stage 'prepare' failed[\s\S]*missing_file"):
        lifecycle(repo=str(repo))
