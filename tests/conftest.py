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
os.environ["HF_HUB_OFFLINE"] = "1"
# Stage subprocesses find `arm` and `dvc` of this environment.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")

REPO = Path(__file__).resolve().parents[1]


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)


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
