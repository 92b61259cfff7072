"""A stage never deletes what it did not write: pointed at a folder that holds other files, it stops
before any work, naming them and the fix, and the files stay."""

from __future__ import annotations

import pytest

STRANGER = "notes.npz"   # a name no stage writes, with the suffix `encode` used to clear


@pytest.fixture()
def stages(tmp_path, tiny_world, pretrained_stages):
    """Overrides for a copy of the session's tiny prepared, tokenized, encoded and pretrained stages."""
    from tests.conftest import copy_stages, tiny_overrides

    return tiny_overrides(tiny_world, copy_stages(pretrained_stages, tmp_path / "a"))


@pytest.mark.parametrize("stage, setting", [("prepare", None), ("encode", None), ("pretrain", None),
                                            ("rl", "rl.out_dir"), ("evaluate", "evaluate.out_dir"),
                                            ("package", None)])
def test_a_stage_refuses_a_folder_holding_files_it_did_not_write(stages, tmp_path, stage, setting):
    from arm.config import load_config
    from arm.stages import by_name

    extra = [f"{setting}={tmp_path / 'mine'}"] if setting else []
    cfg = load_config("configs/default.yaml", [*stages, *extra, "evaluate.model=pretrain", "package.model=pretrain"])
    folder = cfg.stage_dir(stage)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STRANGER).write_bytes(b"the user's")
    with pytest.raises(ValueError, match=f"{STRANGER}.*(empty folder|remove)"):
        by_name(stage).run(cfg)
    assert (folder / STRANGER).read_bytes() == b"the user's"


def test_rl_keeps_its_logs_and_checkpoints_inside_out_dir_and_replaces_only_its_own_outputs(stages, tmp_path):
    """`rl.out_dir` with the run's logs inside (`run.log_dir=<out_dir>/logs`): the run writes its
    checkpoints and logs there, and a second run replaces the model but keeps both."""
    from arm.config import load_config
    from arm.rl.stage import rl_stage

    out = tmp_path / "rl-run"
    cfg = load_config("configs/default.yaml", [*stages, f"rl.out_dir={out}", f"run.log_dir={out / 'logs'}"])
    rl_stage(cfg)
    assert {"checkpoints", "logs", "model.safetensors", "metrics.json"} <= {p.name for p in out.iterdir()}
    (out / "model.safetensors").write_bytes(b"stale")
    rl_stage(cfg)
    assert (out / "model.safetensors").read_bytes() != b"stale"
    assert (out / "logs").is_dir() and (out / "checkpoints" / "last.ckpt").is_file()
