"""Every shipped config loads; mistakes fail at load naming the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from arm.config import ArmConfig, load_config, to_yaml

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_the_three_presets_ship():
    assert {p.name for p in CONFIGS} >= {"default.yaml", "small.yaml", "arm-7b.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, ArmConfig)
    # Round trip: the printed config loads back to the same values.
    again = path.parent / f".roundtrip-{path.name}"
    try:
        again.write_text(to_yaml(cfg))
        assert load_config(again) == cfg
    finally:
        again.unlink()


def test_dotlist_overrides_the_file():
    cfg = load_config("configs/default.yaml", ["data.num_scenes=2000", "prepare.vocab_size=1024"])
    assert (cfg.data.num_scenes, cfg.prepare.vocab_size) == (2000, 1024)


def test_unknown_key_in_a_file_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  num_scene: 3\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*data\.num_scene"):
        load_config(bad)


def test_unknown_section_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  lr: 3\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*trainer"):
        load_config(bad)


def test_wrong_type_names_key_and_file(tmp_path):
    bad = tmp_path / "typed.yaml"
    bad.write_text("data:\n  image_size: large\n")
    with pytest.raises(ValueError, match=r"typed\.yaml.*data\.image_size"):
        load_config(bad)


def test_bad_override_and_bad_value_are_explained():
    with pytest.raises(ValueError, match="command-line override.*data.num_scenes"):
        load_config("configs/default.yaml", ["data.num_scenes=many"])
    with pytest.raises(ValueError, match="section.key=value"):
        load_config("configs/default.yaml", ["data.num_scenes"])
    with pytest.raises(ValueError, match="prepare.vocab_size"):
        load_config("configs/default.yaml", ["prepare.vocab_size=10"])
    with pytest.raises(ValueError, match="not found"):
        load_config("configs/nope.yaml")
    with pytest.raises(ValueError, match="image_position_embedding=true"):
        load_config("configs/default.yaml", ["pretrain.image_position_embedding=false",
                                             "pretrain.image_span_stride=98"])
    with pytest.raises(ValueError, match="image_position_embedding=true"):
        load_config("configs/default.yaml", ["pretrain.image_position_embedding=false",
                                             "pretrain.edit_source_embedding=true"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_preset_sets_every_key_dvc_tracks(path):
    """dvc.yaml's params point into the preset params.yaml names, so a value left to arm/config.py's
    defaults would change outputs without DVC noticing: every preset spells out every key."""
    import yaml

    from arm.config import to_dict

    written = yaml.safe_load(path.read_text())
    for section, values in to_dict(load_config(path)).items():
        assert set(written.get(section) or {}) == set(values), (
            f"{path.name} [{section}] lacks {sorted(set(values) - set(written.get(section) or {}))}")
    stages = yaml.safe_load((path.parents[1] / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for entry in stage.get("params", []):
            for key in next(iter(entry.values())):
                node = written
                for part in key.split("."):
                    assert part in node, f"stage {name} tracks {key}, which {path.name} lacks"
                    node = node[part]


def test_params_yaml_names_the_default_preset():
    import yaml

    root = CONFIGS[0].parents[1]
    assert yaml.safe_load((root / "params.yaml").read_text()) == {"config": "configs/default.yaml"}


def test_sampling_takes_a_jacobi_window_in_range_and_old_sampling_files_load(tmp_path):
    """`sampling.jacobi_window` is a number of draft codes (0 = off); a model saved before it existed
    has no such key in its sampling.json and decodes one code per step."""
    import json

    from arm.model.saved import load_sampling

    assert load_config("configs/default.yaml", ["sampling.jacobi_window=16"]).sampling.jacobi_window == 16
    with pytest.raises(ValueError, match="jacobi_window must be in"):
        load_config("configs/default.yaml", ["sampling.jacobi_window=-1"])
    (tmp_path / "sampling.json").write_text(json.dumps({"generation_guidance": 2.0, "edit_guidance": 2.5,
                                                        "edit_image_guidance": 1.0, "temperature": 0.5,
                                                        "top_k": 0, "top_p": 1.0}))
    assert load_sampling(tmp_path).jacobi_window == 0
