"""Canonical texts: references, prompts of every category, edits, questions and their parsers."""

from __future__ import annotations

import numpy as np
import pytest

from arm.world.render import render
from arm.world.scene import HOLDOUT_PAIRS, SEEN_THINGS, Obj, Scene
from arm.world.scores import generation_pass
from arm.world.texts import (
    EDIT_TYPES, GEN_CATEGORIES, QUESTION_TYPES, caption, parse_caption, parse_prompt, prompt_for_scene, refer,
    resolve, sample_edit, sample_question, sample_scene_for_category,
)
from arm.world.verifier import parse

RED_CIRCLE = Obj(cell=0, shape="circle", color="red", size="large")
BLUE_CIRCLE = Obj(cell=4, shape="circle", color="blue", size="small")
SMALL_BLUE_CIRCLE = Obj(cell=8, shape="circle", color="blue", size="large")


def test_reference_is_the_shortest_unique_expression():
    square = Obj(cell=2, shape="square", color="green", size="small")
    scene = Scene((RED_CIRCLE, BLUE_CIRCLE, square))
    assert refer(square, scene) == "square"
    assert refer(RED_CIRCLE, scene) == "red circle"
    scene2 = Scene((BLUE_CIRCLE, SMALL_BLUE_CIRCLE))
    assert refer(BLUE_CIRCLE, scene2) == "small blue circle"
    twin = Obj(cell=6, shape="circle", color="blue", size="small")
    scene3 = Scene((BLUE_CIRCLE, twin))
    assert refer(BLUE_CIRCLE, scene3) == "circle at the center"
    for s in (scene, scene2, scene3):
        for o in s.objects:
            assert resolve(refer(o, s), s) == o


def test_caption_is_row_major_and_parses_back():
    scene = Scene((BLUE_CIRCLE, RED_CIRCLE))
    assert caption(scene) == "a large red circle at the top left and a small blue circle at the center"
    assert parse_caption(caption(scene)) == scene
    with pytest.raises(ValueError):
        parse_caption("a red circle")  # not fully specified


@pytest.mark.parametrize("text, category, n", [
    ("a large red circle at the top left", "single", 1),
    ("a red circle", "single", 1),
    ("a small square at the center", "single", 1),
    ("a red circle at the top left and a small blue square at the center", "two", 2),
    ("a circle and a square and a triangle", "three", 3),
    ("two red circles", "counting", 2),
    ("one blue square", "counting", 1),
    ("a red circle to the left of a blue square", "relation", 2),
    ("a yellow diamond below a green circle", "relation", 2),
    ("a circle with the color of a ripe tomato", "knowledge", 1),
    ("a square with the color of a plum at the bottom right", "knowledge", 1),
])
def test_every_canonical_prompt_form_parses(text, category, n):
    spec = parse_prompt(text)
    assert spec.category == category and len(spec.objects) == n


def test_knowledge_prompt_maps_thing_to_colour():
    assert parse_prompt("a circle with the color of a lime").objects[0].color == "green"
    with pytest.raises(ValueError, match="unknown thing"):
        parse_prompt("a circle with the color of a banana boat")
    with pytest.raises(ValueError, match="not a canonical prompt"):
        parse_prompt("draw me something nice")


@pytest.mark.parametrize("category", GEN_CATEGORIES)
def test_generated_prompts_describe_their_scene_and_parse_back(category):
    rng = np.random.default_rng(3)
    for _ in range(100):
        scene = sample_scene_for_category(rng, category, 0.04)
        spec = prompt_for_scene(scene, category, rng)
        assert generation_pass(spec, scene), (spec.text, scene.keys())
        parsed = parse_prompt(spec.text)
        assert parsed.category == category
        assert generation_pass(parsed, scene)
        # The rendered image, read by the verifier, passes too.
        assert generation_pass(spec, parse(render(scene)))
        if category == "knowledge":
            assert spec.thing in SEEN_THINGS


def test_edits_apply_their_instruction_and_keep_the_rest():
    rng = np.random.default_rng(11)
    seen_types = set()
    for _ in range(600):
        scene = sample_scene_for_category(rng, "two", 0.04)
        edit = sample_edit(scene, rng, 0.04)
        assert edit is not None
        seen_types.add(edit.type)
        assert not edit.target.has_holdout_pair()
        touched = {edit.source_cell, edit.target_cell} - {None}
        for o in scene.objects:
            if o.cell not in touched:
                assert edit.target.at(o.cell) == o
        if edit.type == "remove":
            assert len(edit.target.objects) == len(scene.objects) - 1
        if edit.type == "add":
            assert len(edit.target.objects) == len(scene.objects) + 1
        if edit.type in ("recolor", "resize", "reshape"):
            before, after = scene.at(edit.source_cell), edit.target.at(edit.target_cell)
            changed = [a for a in ("color", "size", "shape") if getattr(before, a) != getattr(after, a)]
            assert changed == [{"recolor": "color", "resize": "size", "reshape": "shape"}[edit.type]]
        if edit.type != "add":
            ref = edit.instruction.split("the ", 1)[1]
            assert resolve(_ref_of(edit.instruction, edit.type), scene).cell == edit.source_cell, ref
    assert seen_types == set(EDIT_TYPES)


def _ref_of(instruction: str, kind: str) -> str:
    body = instruction.split("the ", 1)[1]
    if kind == "recolor" or kind == "resize":
        return body.rsplit(" ", 1)[0]
    if kind == "reshape":
        return body.split(" into a ")[0]
    if kind == "move":
        return body.split(" to the ")[0]
    return body  # remove


def test_question_answers_are_exact():
    scene = Scene((RED_CIRCLE, BLUE_CIRCLE, Obj(cell=5, shape="square", color="red", size="small")))
    rng = np.random.default_rng(0)
    answers = {}
    for _ in range(300):
        q = sample_question(scene, rng)
        answers[q.text] = q.answer
    assert answers.get("how many circles are there?", "two") == "two"
    assert answers.get("how many red objects are there?", "two") == "two"
    assert answers.get("what color is the square?", "red") == "red"
    assert answers.get("where is the square?", "right") == "right"
    assert answers.get("is there a blue circle?", "yes") == "yes"
    assert answers.get("describe the image.") == caption(scene)
    assert {q.split()[0] for q in answers} >= {"how", "what", "where", "is", "describe"}
    assert len(QUESTION_TYPES) == 7


def test_existence_questions_never_name_held_out_pairs_by_default():
    rng = np.random.default_rng(1)
    scene = Scene((RED_CIRCLE,))
    for _ in range(500):
        q = sample_question(scene, rng, "exists")
        colour, shape = q.text[len("is there a "):-1].split()
        assert (colour, shape) not in HOLDOUT_PAIRS
