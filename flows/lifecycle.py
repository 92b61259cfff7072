"""The lifecycle as a Prefect flow: one task per stage, each running `dvc repro <stage>` in a subprocess.

DVC owns caching and lineage (a stage whose deps and params are unchanged is skipped, for a Prefect
run and a plain `dvc repro` alike); Prefect owns orchestration: retries, parameters, logs, artifacts,
deployments. Stages run in subprocesses so Lightning's multi-process launchers never start inside the
Prefect process.

    python flows/lifecycle.py                       # the whole lifecycle on the preset params.yaml names
    python flows/lifecycle.py --stages prepare      # some stages only
    python flows/lifecycle.py --set pretrain.max_steps=100 --config configs/default.yaml

Another preset or overridden values never become untracked edits: the stages then run as a DVC
experiment (`dvc exp run -S params.yaml:config=<preset> -S <preset>:<key>=<value>`), which records the
values with the outputs and metrics (`dvc exp show`) and leaves them applied in the workspace.

With no PREFECT_API_URL set, Prefect starts a temporary local server for the run; with one set, the
run shows up in that server's UI.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
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
from arm.stages import NAMES as STAGES  # noqa: E402  (in lifecycle order: arm/stages.py)

REPO = Path(__file__).resolve().parents[1]


class StageFailed(RuntimeError):
    pass


def _stage_env(repo: str) -> dict:
    """The environment for stage subprocesses: this Python's scripts first on PATH, so `arm` in dvc.yaml
    resolves to the same installation as the flow. DVC experiments are git commits: where git has no
    identity (a fresh container), they are signed as the lifecycle rather than failing."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    for what in ("name", "email"):
        known = subprocess.run(["git", "config", f"user.{what}"], cwd=repo, capture_output=True, text=True)
        if not known.stdout.strip():
            value = "arm lifecycle" if what == "name" else "arm-lifecycle@localhost"
            for role in ("AUTHOR", "COMMITTER"):
                env.setdefault(f"GIT_{role}_{what.upper()}", value)
    return env


def pipeline_preset(repo: str | Path) -> str:
    """The preset dvc.yaml's stages read: `config` in params.yaml."""
    import yaml

    return yaml.safe_load((Path(repo) / "params.yaml").read_text())["config"]


def stage_command(stage: str, config: str, overrides: list[str] | tuple[str, ...] = (),
                  pipeline_config: str = "configs/default.yaml") -> list[str]:
    """`dvc repro <stage>` when the run uses the pipeline's own preset (params.yaml's) unchanged, else a
    DVC experiment that records the preset and the overrides.

    >>> stage_command("pretrain", "configs/default.yaml", ["pretrain.max_steps=100"])[1:]
    ['exp', 'run', 'pretrain', '-S', 'params.yaml:config=configs/default.yaml', '-S', 'configs/default.yaml:pretrain.max_steps=100']
    >>> stage_command("pretrain", "configs/default.yaml")[1:]
    ['repro', 'pretrain']
    """
    if config == pipeline_config and not overrides:
        return [dvc_executable(), "repro", stage]
    sets = [f"params.yaml:config={config}", *(f"{config}:{item}" for item in overrides)]
    return [dvc_executable(), "exp", "run", stage, *(arg for item in sets for arg in ("-S", item))]


@task(name="data")
def data(repo: str, config: str, overrides: list[str] | None = None) -> str:
    """Check the config and overrides (a mistake stops the run before any stage), then make sure data/ is
    there: as is, from the DVC cache, or regenerated from data.dvc."""
    from arm.config import load_config

    logger = get_run_logger()
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        cfg = load_config(config, overrides or [])
        return ensure_data(cfg.data.root, cfg.data.manifest, "data.dvc", log=logger.info)
    finally:
        os.chdir(cwd)


@task(name="stage", task_run_name="{stage}", retries=1, retry_delay_seconds=5)
def run_stage(stage: str, repo: str, config: str, overrides: list[str] | None = None,
              pipeline_config: str = "configs/default.yaml") -> str:
    """`dvc repro <stage>` (or `dvc exp run`, see stage_command) with its output streamed into the
    Prefect log; on failure, the stage's name and the tail of its log."""
    logger = get_run_logger()
    cmd = stage_command(stage, config, overrides or [], pipeline_config)
    logger.info("running dvc %s", " ".join(cmd[1:]))
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(cmd, cwd=repo, env=_stage_env(repo), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
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
def lifecycle(stages: list[str] | None = None, config: str | None = None, overrides: list[str] | None = None,
              repo: str = str(REPO)) -> dict:
    """Run the lifecycle stages in order through DVC; returns {stage: 'ran' | 'skipped'}.

    config: a preset (default: the one params.yaml names); overrides: `section.key=value` items. Either
    makes the stages a DVC experiment that records them.

        lifecycle(stages=["prepare", "tokenizer"], overrides=["tokenizer.max_steps=500"])
    """
    stages = list(stages or STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; the lifecycle has {list(STAGES)}")
    pipeline_config = pipeline_preset(repo)
    config = config or pipeline_config
    results = {"data": data(repo, config, overrides)}
    minutes = {}
    for stage in STAGES:
        if stage in stages:
            started = time.monotonic()
            results[stage] = run_stage(stage, repo, config, overrides, pipeline_config)
            minutes[stage] = (time.monotonic() - started) / 60
    print("stage timings: " + ", ".join(f"{stage} {results[stage]} in {m:.1f} min" for stage, m in minutes.items())
          + f"; total {sum(minutes.values()):.1f} min")
    if "evaluate" in stages:
        publish_scores(repo)
    return results


def scores_markdown(repo: str) -> str | None:
    """The evaluation's headline scores with their 95% intervals, as a markdown table (None if absent)."""
    from arm.evaluate.summary import folder_scores_table

    return folder_scores_table(Path(repo) / "artifacts" / "evaluate")


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
    parser.add_argument("--config", help="a preset (default: the one params.yaml names, configs/default.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one value (repeatable); runs the stages as a DVC experiment")
    args = parser.parse_args(argv)
    results = lifecycle(stages=args.stages, config=args.config, overrides=args.overrides)
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
