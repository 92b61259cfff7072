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
