"""The lifecycle as a Prefect flow: one task per stage, each running `dvc repro <stage>` in a subprocess.

DVC owns caching and lineage (a stage whose deps and params are unchanged is skipped, for a Prefect
run and a plain `dvc repro` alike); Prefect owns orchestration: retries, parameters, logs, artifacts,
deployments. Stages run in subprocesses so Lightning's multi-process launchers never start inside the
Prefect process.

    python flows/lifecycle.py                       # the whole lifecycle on configs/default.yaml
    python flows/lifecycle.py --stages prepare      # some stages only

With no PREFECT_API_URL set, Prefect starts a temporary local server for the run; with one set, the
run shows up in that server's UI.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

# Offline by default: no telemetry, no hub lookups. Set before Prefect is imported.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A first start on a busy 2-core machine migrates the database and can pass the 20 s default.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow, get_run_logger, task  # noqa: E402

from arm.data.versioning import dvc_executable, ensure_data  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# In lifecycle order; each is a DVC stage, an `arm` subcommand and a config section.
STAGES = ("prepare", "tokenizer", "encode", "pretrain", "rl", "evaluate", "package")


class StageFailed(RuntimeError):
    pass


def _stage_env() -> dict:
    """The environment for stage subprocesses: this Python's scripts first on PATH, so `arm` in dvc.yaml
    resolves to the same installation as the flow."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@task(name="data")
def data(repo: str, config: str) -> str:
    """Make sure data/ is there: as is, from the DVC cache, or regenerated from data.dvc."""
    from arm.config import load_config

    logger = get_run_logger()
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        cfg = load_config(config)
        return ensure_data(cfg.data.root, cfg.data.manifest, "data.dvc", log=logger.info)
    finally:
        os.chdir(cwd)


@task(name="stage", task_run_name="{stage}", retries=1, retry_delay_seconds=5)
def run_stage(stage: str, repo: str) -> str:
    """`dvc repro <stage>` with its output streamed into the Prefect log; on failure, the stage's name
    and the tail of its log."""
    logger = get_run_logger()
    cmd = [dvc_executable(), "repro", stage]
    logger.info("running %s", " ".join(cmd[1:]))
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(cmd, cwd=repo, env=_stage_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            tail.append(line)
            logger.info("[%s] %s", stage, line)
    if proc.wait() != 0:
        raise StageFailed(f"stage '{stage}' failed (exit {proc.returncode}); last lines:\n" + "\n".join(tail))
    skipped = any("didn't change, skipping" in line and f"'{stage}'" in line for line in tail)
    return "skipped" if skipped else "ran"


@flow(name="arm-lifecycle", log_prints=True)
def lifecycle(stages: list[str] | None = None, config: str = "configs/default.yaml", repo: str = str(REPO)) -> dict:
    """Run the lifecycle stages in order through DVC; returns {stage: 'ran' | 'skipped'}."""
    stages = list(stages or STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; the lifecycle has {list(STAGES)}")
    results = {"data": data(repo, config)}
    for stage in STAGES:
        if stage in stages:
            results[stage] = run_stage(stage, repo)
    if "evaluate" in stages:
        publish_scores(repo)
    return results


HEADLINE = (("gen/acc", "generation accuracy"), ("gen/knowledge_heldout", "knowledge score, held-out things"),
            ("edit/g_sc", "edit G_SC"), ("edit/g_pq", "edit G_PQ"), ("edit/g_o", "edit G_O"),
            ("und/acc", "understanding accuracy"), ("tok/psnr", "tokenizer PSNR (dB)"),
            ("tok/exact_recovery", "tokenizer exact scene recovery"))


def scores_markdown(repo: str) -> str | None:
    """The evaluation's headline scores with their 95% intervals, as a markdown table (None if absent)."""
    import json

    folder = Path(repo) / "artifacts" / "evaluate"
    if not (folder / "metrics.json").is_file():
        return None
    metrics = json.loads((folder / "metrics.json").read_text())
    intervals = json.loads((folder / "scores.json").read_text()) if (folder / "scores.json").is_file() else {}
    rows = ["| score | test | 95% interval | n |", "| --- | --- | --- | --- |"]
    for key, label in HEADLINE:
        if key in metrics:
            ci = intervals.get(key)
            span = f"[{ci['low']:.3f}, {ci['high']:.3f}]" if ci else "-"
            rows.append(f"| {label} (`{key}`) | {metrics[key]:.3f} | {span} | {ci['n'] if ci else '-'} |")
    return "\n".join(rows)


@task(name="publish-scores")
def publish_scores(repo: str) -> None:
    """The evaluation table as a Prefect markdown artifact (shown on the flow run's page)."""
    from prefect.artifacts import create_markdown_artifact

    table = scores_markdown(repo)
    if table:
        create_markdown_artifact(markdown="## arm evaluation (world test split)\n\n" + table, key="arm-evaluation",
                                 description="headline world scores of the evaluated model")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", choices=STAGES, help="stages to run (default: all)")
    parser.add_argument("--config", default="configs/default.yaml")
    args = parser.parse_args(argv)
    results = lifecycle(stages=args.stages, config=args.config)
    print("lifecycle finished: " + ", ".join(f"{k} {v}" for k, v in results.items()))
    table = scores_markdown(str(REPO))
    if table:
        print("\n" + table + "\n")
    report, package = REPO / "artifacts" / "evaluate" / "report.html", REPO / "artifacts" / "package" / "package.json"
    if report.is_file():
        print(f"evaluation report: {report}")
    if package.is_file():
        import json

        info = json.loads(package.read_text())
        print(f"Bento: {info['bento_tag']} (exported to {info['bento_file']})\n"
              f"serve it:  bentoml serve {info['bento_tag']} --port 3000\n"
              "then:      curl -X POST localhost:3000/generate -H 'content-type: application/json' "
              "-d '{\"prompt\": \"a large red circle at the center\"}' -o out.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
