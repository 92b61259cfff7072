"""The world dataset: deterministic bytes, hold-outs respected, every record valid and consistent."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from arm.data.manifest import Limits, Report, read_manifest
from arm.world.dataset import WorldSpec, generate_world
from arm.world.scene import HELD_OUT_THINGS, HOLDOUT_PAIRS, Scene
from arm.world.scores import generation_pass
from arm.world.texts import Edit, GenSpec, parse_prompt
from arm.world.verifier import parse


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def test_same_arguments_give_byte_identical_files(tmp_path, tiny_world, tiny_world_spec):
    again = tmp_path / "again"
    generate_world(again, tiny_world_spec)
    assert _digest(again) == _digest(tiny_world)
    other = tmp_path / "other"
    generate_world(other, WorldSpec(**{**tiny_world_spec.__dict__, "seed": 8}))
    assert _digest(other) != _digest(tiny_world)


def test_refuses_to_write_over_existing_data(tmp_path, tiny_world_spec):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        generate_world(tmp_path, tiny_world_spec)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_every_record_validates_and_every_task_is_present(tiny_world):
    report = Report()
    records = read_manifest(tiny_world / "manifest.jsonl", Limits(), report)
    assert report.skipped == {} and len(records) == report.kept > 0
    tasks = {(r["split"], r["task"]) for r in records}
    for split in ("train", "val", "test", "holdout"):
        assert {(split, t) for t in ("caption", "vqa", "t2i", "edit")} <= tasks
    assert ("train", "text") in tasks


def test_compositional_holdout_never_reaches_training(tiny_world):
    pairs_text = [f"{c} {s}" for c, s in HOLDOUT_PAIRS]
    holdout_seen = False
    for r in _records(tiny_world):
        scenes = [Scene.from_dict(r["meta"]["scene"])] if "scene" in r["meta"] else []
        if r["task"] == "edit":
            scenes.append(Edit.from_dict(r["meta"]["edit"]).target)
        if r["split"] == "holdout":
            holdout_seen = holdout_seen or any(s.has_holdout_pair() for s in scenes)
            continue
        assert not any(s.has_holdout_pair() for s in scenes), r["id"]
        for text in (r.get("text", ""), r.get("answer", "")):
            assert not any(p in text for p in pairs_text), (r["id"], text)
    assert holdout_seen


def test_held_out_things_never_in_training_generation_or_editing(tiny_world):
    for r in _records(tiny_world):
        if r["split"] == "train" and r["task"] in ("t2i", "edit"):
            assert not any(thing in r["text"] for thing in HELD_OUT_THINGS), r["text"]
    text_qa = [r for r in _records(tiny_world) if r["task"] == "text" and r["split"] == "train"]
    assert {r["answer"] for r in text_qa} == {"red", "green", "blue", "yellow", "purple", "orange"}
    assert sum(r["meta"]["held_out_thing"] for r in text_qa) == len(HELD_OUT_THINGS)


def test_images_texts_and_meta_agree(tiny_world):
    for r in _records(tiny_world)[:400]:
        if r["task"] in ("caption", "vqa", "t2i"):
            scene = Scene.from_dict(r["meta"]["scene"])
            assert parse(Image.open(tiny_world / r["image"])) == scene
        if r["task"] == "t2i":
            spec = GenSpec.from_dict(r["meta"]["spec"])
            assert spec.text == r["text"]
            assert generation_pass(parse_prompt(r["text"]), scene)
        if r["task"] == "edit":
            edit = Edit.from_dict(r["meta"]["edit"])
            assert edit.instruction == r["text"]
            assert parse(Image.open(tiny_world / r["target_image"])) == edit.target


def test_splits_use_disjoint_seeds(tiny_world):
    # Scene i of each split differs: the splits are not copies of each other.
    by_split = {}
    for r in _records(tiny_world):
        if r["task"] == "caption":
            by_split.setdefault(r["split"], []).append(r["text"])
    assert by_split["val"] != by_split["test"]
    assert by_split["val"] != by_split["train"][: len(by_split["val"])]


def test_world_spec_rejects_impossible_settings():
    with pytest.raises(ValueError, match="max_objects"):
        WorldSpec(max_objects=5)
    with pytest.raises(ValueError, match="size"):
        WorldSpec(size=16)


def test_knowledge_prompts_in_test_use_held_out_things(tmp_path):
    out = tmp_path / "w"
    generate_world(out, WorldSpec(num_scenes=0, num_eval_scenes=300, num_holdout_scenes=0, seed=1))
    things = [r["meta"]["spec"]["thing"] for r in _records(out)
              if r["task"] == "t2i" and r["split"] == "test" and r["meta"]["spec"]["category"] == "knowledge"]
    assert any(t in HELD_OUT_THINGS for t in things) and any(t not in HELD_OUT_THINGS for t in things)


WORLD_ARGS = ["--num-scenes", "4", "--num-eval-scenes", "1", "--num-holdout-scenes", "1", "--size", "32"]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _photos(folder: Path) -> Path:
    folder.mkdir()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(folder / "a.png")
    (folder / "a.txt").write_text("a red square")
    return folder


def test_overwrite_refuses_a_folder_of_imported_data(tmp_path, capsys):
    """`arm world generate --overwrite` over a user's imported dataset would delete their pictures: it
    refuses in one line that says why, and leaves every file as it was."""
    from arm.cli import main
    from arm.data.importers import import_captions

    data = tmp_path / "data"
    import_captions(_photos(tmp_path / "photos"), data)
    before = _files(data)
    assert main(["world", "generate", "--out", str(data), "--overwrite", *WORLD_ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a Shapes world" in err and "world.json" in err
    assert _files(data) == before


def test_overwrite_refuses_a_world_with_imported_records(tmp_path, capsys):
    """A world with the user's records appended is not what the generator wrote: regenerating it would
    drop those records."""
    from arm.cli import main
    from arm.data.importers import import_captions

    data = tmp_path / "data"
    generate_world(data, WorldSpec(num_scenes=4, num_eval_scenes=1, num_holdout_scenes=1, size=32))
    import_captions(_photos(tmp_path / "photos"), data, mode="append")
    before = _files(data)
    assert main(["world", "generate", "--out", str(data), "--overwrite", *WORLD_ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'a:caption'" in err
    assert _files(data) == before


def test_overwrite_replaces_the_world_and_nothing_else(tmp_path):
    """Over a world, --overwrite writes the new world (the same bytes as a fresh folder) and keeps what
    the generator did not write: a note, a picture of the user's in images/."""
    from arm.cli import main

    data, fresh = tmp_path / "data", tmp_path / "fresh"
    assert main(["world", "generate", "--out", str(data), *WORLD_ARGS, "--num-scenes", "8"]) == 0
    (data / "notes.txt").write_text("mine")
    Image.new("RGB", (4, 4)).save(data / "images" / "train" / "mine.png")
    mine = (data / "images" / "train" / "mine.png").read_bytes()
    assert main(["world", "generate", "--out", str(data), "--overwrite", *WORLD_ARGS]) == 0
    assert main(["world", "generate", "--out", str(fresh), *WORLD_ARGS]) == 0
    kept = _files(data)
    assert kept.pop("notes.txt") == b"mine" and kept.pop("images/train/mine.png") == mine
    assert kept == _files(fresh)


def test_a_stopped_generation_leaves_no_manifest_and_can_be_overwritten(tmp_path):
    """A generation stopped midway leaves no manifest (so `arm data ensure` never takes half a world for
    the data) and is marked as the generator's, so --overwrite may replace it."""
    data, fresh = tmp_path / "data", tmp_path / "fresh"
    spec = WorldSpec(num_scenes=4, num_eval_scenes=1, num_holdout_scenes=1, size=32)

    def stop(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_world(data, spec, progress=stop)
    assert not (data / "manifest.jsonl").exists() and list((data / "images" / "train").iterdir())
    generate_world(data, spec, overwrite=True)
    generate_world(fresh, spec)
    assert _files(data) == _files(fresh)
