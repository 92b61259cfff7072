"""The tools the project runs as subprocesses (dvc, bentoml, prefect), and background servers for
tests, benchmarks and local runs: a free loopback port, a wait until one answers, and a stop that takes
a process's whole group (servers fork workers that must not outlive them).

>>> port = free_port()
>>> 1024 < port < 65536
True
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def executable(name: str) -> str:
    """The command `name` installed beside this Python (the project's environment), else on PATH: a stage
    run from another shell still calls the same installation as the code that started it."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise ValueError(f"{name} is not installed in this environment; run `make install` (pip install -e .)")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(url: str, proc: subprocess.Popen, timeout: float, what: str) -> None:
    """Poll `url` until it answers 200; fail early, naming `what`, if `proc` exits or `timeout` passes."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s")
        time.sleep(1)


def stop_group(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM to the process group `proc` leads (started with start_new_session=True), SIGKILL after
    `grace` seconds if it is still there."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
