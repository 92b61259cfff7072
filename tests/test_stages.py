"""One list of stages (arm/stages.py): the CLI's subcommands and the flow's tasks come from it, and
dvc.yaml runs exactly those stages, in that order, each as `arm <stage> --config ${config}`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from arm.stages import NAMES, STAGES, by_name

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_yaml_runs_the_registry_in_order():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert tuple(stages) == NAMES
    for name, spec in stages.items():
        assert spec["cmd"] == f"arm {name} --config ${{config}}", name


def test_cli_and_flow_read_the_registry():
    import sys

    from arm.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(NAMES) <= set(commands)
    for stage in STAGES:
        has_stop = any("--stop-at-step" in a.option_strings for a in commands[stage.name]._actions)
        assert has_stop == stage.resumable, stage.name
    sys.path.insert(0, str(ROOT))
    try:
        from flows.lifecycle import STAGES as flow_stages
    finally:
        sys.path.remove(str(ROOT))
    assert tuple(flow_stages) == NAMES


def test_every_stage_entry_point_resolves_and_every_stage_section_is_a_stage():
    import dataclasses
    import importlib

    from arm.config import ArmConfig

    for stage in STAGES:
        module, function = stage.entry.split(":")
        assert callable(getattr(importlib.import_module(module), function)), stage.entry
    sections = {f.name for f in dataclasses.fields(ArmConfig)} - {"run", "data", "sampling"}
    assert sections <= set(NAMES), sections - set(NAMES)  # encode alone has no settings of its own
    with pytest.raises(ValueError, match="unknown stage 'train'"):
        by_name("train")


def test_a_training_stage_names_its_machine_once_per_job(capsys, monkeypatch):
    """Training stages start with the machine measured (CPU model, vector units, fp32 matmul speed now);
    in a data-parallel job only rank 0 prints it, and measuring leaves the seeded random state alone."""
    import re

    import torch
    from lightning.pytorch.utilities import rank_zero_only

    from arm.stages import announce_machine

    monkeypatch.setattr(rank_zero_only, "rank", 0)
    torch.manual_seed(0)
    announce_machine("pretrain", "cpu")
    drawn = torch.rand(3)
    line = capsys.readouterr().err
    assert re.fullmatch(r"pretrain: on .+, \d+ cores, .+, fp32 matmul \d+ GFLOP/s\n", line), line
    torch.manual_seed(0)
    assert torch.equal(drawn, torch.rand(3))
    monkeypatch.setattr(rank_zero_only, "rank", 1)   # what LOCAL_RANK=1 gives a process Lightning starts
    announce_machine("pretrain", "cpu")
    assert capsys.readouterr().err == ""


def _record_call(cfg, stop_at_step=None):
    return cfg.pretrain.accelerator, stop_at_step


def test_running_a_training_stage_announces_the_machine_from_its_config_section(capsys, monkeypatch):
    from lightning.pytorch.utilities import rank_zero_only

    from arm.config import load_config
    from arm.stages import Stage

    monkeypatch.setattr(rank_zero_only, "rank", 0)
    stage = Stage("pretrain", "", "tests.test_stages:_record_call", resumable=True)
    assert stage.run(load_config("configs/default.yaml"), stop_at_step=3) == ("auto", 3)
    assert capsys.readouterr().err.startswith("pretrain: on ")
