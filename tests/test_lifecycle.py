"""The lifecycle under stress and at a distance: a run killed during `pretrain` resumes from its
checkpoint, and the Prefect deployment runs on a process work pool through a real server and worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from arm.data.versioning import dvc_executable
from arm.processes import executable, free_port, stop_group, wait_until_ready
from tests.conftest import run_ok, tiny_project

pytestmark = pytest.mark.slow


def test_a_run_killed_during_pretrain_resumes_from_its_checkpoint(tmp_path):
    # Long enough to be caught mid-way (checkpoints every 20 of 300 steps), small enough to finish fast.
    repo = tiny_project(tmp_path, pretrain={"max_steps": 300, "val_every_steps": 20, "sample_every_steps": 0})
    dvc, last = dvc_executable(), repo / "artifacts" / "checkpoints" / "pretrain" / "last.ckpt"
    with open(tmp_path / "first.log", "w") as log:
        run = subprocess.Popen([dvc, "repro", "pretrain"], cwd=repo, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
        deadline = time.monotonic() + 600
        while not last.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert last.exists(), "pretrain wrote no checkpoint:\n" + (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(1.0)
        # What a scheduler does on preemption: SIGTERM to the whole job (dvc and the stage under it).
        os.killpg(run.pid, signal.SIGTERM)
        run.wait(timeout=120)
    assert run.returncode != 0 and not (repo / "artifacts" / "pretrain" / "metrics.json").exists()

    # The stages before pretrain finished and were recorded; their outputs are intact.
    status = run_ok([dvc, "status", "prepare", "tokenizer", "encode"], repo)
    assert "up to date" in status, status

    again = run_ok([dvc, "repro", "pretrain"], repo)
    for stage in ("prepare", "tokenizer", "encode"):
        assert f"Stage '{stage}' didn't change, skipping" in again, again
    resumed = [line for line in again.splitlines() if "pretrain: resuming from" in line]
    assert resumed, again
    assert int(resumed[0].rsplit("at step", 1)[1]) >= 20
    assert json.loads((repo / "artifacts" / "pretrain" / "metrics.json").read_text())["steps"] == 300
    assert "up to date" in run_ok([dvc, "status", "pretrain"], repo)


def test_the_deployment_runs_on_a_process_work_pool(tmp_path):
    """prefect.yaml as a user runs it: a local Prefect server, a process work pool and its worker, `prefect
    deploy`, then `prefect deployment run` drives the lifecycle in the checkout."""
    repo = tiny_project(tmp_path)
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    prefect = executable("prefect")
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("server", "worker")}
    server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path,
                              env=env, stdout=logs["server"], stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/api/health", server, 180, "prefect server start")
        run_ok([prefect, "work-pool", "create", "arm-process", "--type", "process"], repo, env=env, timeout=300)
        run_ok([prefect, "--no-prompt", "deploy", "--name", "lifecycle"], repo, env=env, timeout=300)
        worker = subprocess.Popen([prefect, "worker", "start", "--pool", "arm-process"], cwd=tmp_path, env=env,
                                  stdout=logs["worker"], stderr=subprocess.STDOUT, start_new_session=True)
        out = run_ok([prefect, "deployment", "run", "arm-lifecycle/lifecycle", "-p", 'stages=["prepare"]', "--watch",
                      "--watch-timeout", "400"], tmp_path, env=env, timeout=450)
        assert "Completed" in out, out + (tmp_path / "worker.log").read_text()[-3000:]
        assert (repo / "artifacts" / "prepare" / "summary.json").is_file()
        assert "up to date" in run_ok([dvc_executable(), "status", "prepare"], repo)
    finally:
        for proc in (worker, server):
            if proc is not None:
                stop_group(proc)
        for log in logs.values():
            log.close()
