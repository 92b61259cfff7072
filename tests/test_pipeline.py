"""The real engines on a fresh copy of the project: `dvc repro`, data.dvc restore, the Prefect flow."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
import yaml

from arm.data.versioning import data_in_sync, dvc_executable, ensure_data, read_meta
from tests.conftest import project_copy, run_ok, tiny_project

pytestmark = pytest.mark.slow


def test_dvc_repro_runs_prepare_then_skips_then_reruns_on_param_change(tmp_path):
    repo = tiny_project(tmp_path)
    dvc = dvc_executable()
    first = run_ok([dvc, "repro", "prepare"], repo)
    assert "Running stage 'prepare'" in first
    assert (repo / "artifacts" / "prepare" / "tokenizer.json").is_file()
    assert (repo / "dvc.lock").is_file()

    second = run_ok([dvc, "repro", "prepare"], repo)
    assert "Running stage" not in second and "up to date" in second

    config = repo / "configs" / "default.yaml"
    doc = yaml.safe_load(config.read_text())
    doc["prepare"]["vocab_size"] = 400
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    third = run_ok([dvc, "repro", "prepare"], repo)
    assert "Running stage 'prepare'" in third


def test_data_is_restored_from_the_cache_or_regenerated_from_data_dvc(tmp_path):
    repo = tiny_project(tmp_path)
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

    repo = tiny_project(tmp_path)
    first = lifecycle(repo=str(repo))
    second = lifecycle(repo=str(repo))
    assert first == {"data": "present", **{stage: "ran" for stage in STAGES}}
    assert second == {"data": "present", **{stage: "skipped" for stage in STAGES}}
    assert (repo / "artifacts" / "prepare" / "summary.json").is_file()
    assert (repo / "artifacts" / "tokenizer" / "model.safetensors").is_file()
    assert any((repo / "artifacts" / "encode").glob("train-*.npz"))
    assert (repo / "artifacts" / "pretrain" / "model.safetensors").is_file()
    # dvc repro agrees that nothing is left to do.
    assert "up to date" in run_ok([dvc_executable(), "status"], repo)

    # A rerun that trains the same weights at another speed changes only the minutes in metrics.json:
    # what reads the model depends on its files, so nothing after it becomes stale.
    metrics_file = repo / "artifacts" / "pretrain" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics_file.write_text(json.dumps({**metrics, "train_minutes": metrics["train_minutes"] + 1.0}))
    run_ok([dvc_executable(), "commit", "--force", "pretrain"], repo)
    assert "up to date" in run_ok([dvc_executable(), "status"], repo)
    # A forced rerun (it resumes from its finished checkpoint) writes the same weights: still nothing to do.
    run_ok([dvc_executable(), "repro", "--force", "--single-item", "pretrain"], repo)
    assert "up to date" in run_ok([dvc_executable(), "status"], repo)

    # Reproducible: the whole chain again from nothing (no outputs, no checkpoints, no run cache), same
    # seed and config, gives the same numbers at every stage.
    before = stage_metrics(repo)
    assert set(before) == {"tokenizer", "pretrain", "rl", "evaluate"}
    shutil.rmtree(repo / "artifacts")
    run_ok([dvc_executable(), "repro", "--force"], repo)
    assert stage_metrics(repo) == before


def stage_metrics(repo) -> dict:
    """Each training and evaluation stage's metrics.json, less wall-clock timings."""
    found = {}
    for stage in ("tokenizer", "pretrain", "rl", "evaluate"):
        path = repo / "artifacts" / stage / "metrics.json"
        if path.is_file():
            found[stage] = {k: v for k, v in json.loads(path.read_text()).items()
                            if "minutes" not in k and "seconds" not in k}
    return found


def test_overrides_run_as_a_dvc_experiment_that_records_them(tmp_path, prefect_server):
    from flows.lifecycle import lifecycle

    repo = tiny_project(tmp_path)
    dvc = dvc_executable()
    assert lifecycle(stages=["prepare", "tokenizer"], repo=str(repo))["tokenizer"] == "ran"
    # Changing a tokenizer value reruns the tokenizer only, as an experiment.
    result = lifecycle(stages=["prepare", "tokenizer"], overrides=["tokenizer.max_steps=3"], repo=str(repo))
    assert result == {"data": "present", "prepare": "skipped", "tokenizer": "ran"}
    assert yaml.safe_load((repo / "configs" / "default.yaml").read_text())["tokenizer"]["max_steps"] == 3
    assert '"steps": 3' in (repo / "artifacts" / "tokenizer" / "metrics.json").read_text()
    # The experiment keeps the value with its outputs: `dvc exp show` lists it.
    table = run_ok([dvc, "exp", "show", "--csv"], repo)
    rows = list(csv.DictReader(io.StringIO(table)))
    assert any(row["Experiment"] and row["tokenizer.max_steps"] == "3" for row in rows), table
    # A mistaken override stops the run before any stage, naming the key.
    with pytest.raises(ValueError, match="max_stepz"):
        lifecycle(stages=["prepare"], overrides=["tokenizer.max_stepz=3"], repo=str(repo))
    with pytest.raises(ValueError, match="section.key=value"):
        lifecycle(stages=["prepare"], overrides=["max_steps"], repo=str(repo))


def test_flow_reports_which_stage_failed(tmp_path, prefect_server):
    from flows.lifecycle import StageFailed, lifecycle

    repo = tiny_project(tmp_path)
    # Break the manifest: every record unusable, so prepare exits with its one-line error.
    (repo / "data" / "manifest.jsonl").write_text('{"id": "x", "task": "caption", "image": "no.png", "text": "t"}\n')
    with pytest.raises(StageFailed, match=r"stage 'prepare' failed[\s\S]*missing_file"):
        lifecycle(repo=str(repo))
