"""Every score on hand-built cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from arm.world.render import render
from arm.world.scene import BACKGROUND, Obj, Scene
from arm.world.scores import (
    answer_correct, cleanliness, consistency, edit_score, g_o, generation_accuracy, generation_constraints,
    generation_pass, knowledge_score, realism, understanding_accuracy,
)
from arm.world.texts import Edit, parse_prompt
from arm.world.verifier import parse

RED = Obj(cell=0, shape="circle", color="red", size="large", dx=0.01)
BLUE = Obj(cell=4, shape="square", color="blue", size="small", dy=-0.02)
GREEN = Obj(cell=8, shape="triangle", color="green", size="large")


def scene(*objs) -> Scene:
    return Scene(tuple(objs))


def test_perfect_generation_passes_and_scores_one():
    spec = parse_prompt("a large red circle at the top left and a small blue square at the center")
    image = render(scene(RED, BLUE))
    assert generation_pass(spec, parse(image))
    assert consistency(spec, parse(image)) == 1.0
    assert realism(image) == 1.0 and cleanliness(image) == 1.0


def test_wrong_colour_fails_and_counts_one_atom():
    spec = parse_prompt("a large red circle at the top left")
    wrong = scene(Obj(cell=0, shape="circle", color="blue", size="large"))
    assert not generation_pass(spec, wrong)
    # atoms: shape, colour, size, position, count = 5; the colour misses.
    assert generation_constraints(spec, wrong) == (4, 5)


def test_extra_object_fails_geneval_accuracy():
    spec = parse_prompt("a red circle")
    assert generation_pass(spec, scene(RED))
    assert not generation_pass(spec, scene(RED, BLUE))
    assert generation_constraints(spec, scene(RED, BLUE)) == (2, 3)


def test_counting_and_relation():
    two = parse_prompt("two red circles")
    reds = scene(RED, Obj(cell=5, shape="circle", color="red", size="small"))
    assert generation_pass(two, reds)
    assert not generation_pass(two, scene(RED))
    left = parse_prompt("a red circle to the left of a blue square")
    assert generation_pass(left, scene(RED, BLUE))  # column 0 < column 1
    right_of = parse_prompt("a red circle to the right of a blue square")
    assert not generation_pass(right_of, scene(RED, BLUE))
    assert generation_constraints(right_of, scene(RED, BLUE)) == (5, 6)  # only the relation misses
    same_column = parse_prompt("a red circle above a blue square")
    below = scene(Obj(cell=0, shape="circle", color="red", size="large"),
                  Obj(cell=3, shape="square", color="blue", size="small"))
    assert generation_pass(same_column, below)
    assert not generation_pass(parse_prompt("a red circle to the left of a blue square"), below)  # strict


def test_knowledge_score_weights():
    spec = parse_prompt("a circle with the color of a ripe tomato")
    perfect = render(scene(RED))
    assert knowledge_score(spec, perfect) == pytest.approx(1.0)
    wrong_colour = render(scene(Obj(cell=0, shape="circle", color="blue", size="large")))
    # consistency: shape + count met, colour missed = 2/3; realism 1, cleanliness 1.
    assert knowledge_score(spec, wrong_colour) == pytest.approx(0.7 * 2 / 3 + 0.2 + 0.1)


def test_cleanliness_counts_off_palette_pixels():
    pixels = np.asarray(render(scene(RED))).copy()
    pixels[:8, 32:64] = (128, 128, 128)  # 256 grey pixels: far from every reference colour
    assert cleanliness(pixels) == pytest.approx(1 - 256 / 4096)
    pixels2 = np.asarray(render(scene(RED))).copy()
    pixels2[:8, 32:64] = (250, 250, 250)  # within 30 of white: clean
    assert cleanliness(pixels2) == 1.0


def test_realism_drops_for_a_smudge():
    pixels = np.asarray(render(scene(RED))).copy()
    fg = (pixels != 255).any(axis=2).sum()
    pixels[60:64, 0:4] = (40, 80, 220)  # 16 blue pixels: too small to be an object
    assert realism(pixels) == pytest.approx(fg / (fg + 16))
    assert realism(Image.new("RGB", (64, 64), BACKGROUND)) == 1.0


def _edit(kind, source, target, source_cell, target_cell, text="x"):
    return Edit(kind, text, target, source_cell, target_cell)


def test_perfect_edit_scores_ten():
    source = scene(RED, BLUE)
    target = scene(Obj(cell=0, shape="circle", color="yellow", size="large", dx=0.01), BLUE)
    edit = _edit("recolor", source, target, 0, 0)
    s = edit_score(source, edit, render(target))
    assert (s.g_sc, s.g_pq, s.g_o) == (10.0, 10.0, 10.0)


def test_no_op_edit_scores_zero_and_wrong_colour_fails():
    source = scene(RED, BLUE)
    target = scene(Obj(cell=0, shape="circle", color="yellow", size="large"), BLUE)
    edit = _edit("recolor", source, target, 0, 0)
    assert edit_score(source, edit, render(source)).g_sc == 0.0
    orange = scene(Obj(cell=0, shape="circle", color="orange", size="large"), BLUE)
    assert edit_score(source, edit, render(orange)).g_sc == 0.0


def test_over_edit_lowers_g_sc():
    source = scene(RED, BLUE, GREEN)
    target = scene(Obj(cell=0, shape="circle", color="yellow", size="large"), BLUE, GREEN)
    edit = _edit("recolor", source, target, 0, 0)
    # Right recolour, but the untouched blue square also turned purple.
    over = scene(Obj(cell=0, shape="circle", color="yellow", size="large"),
                 Obj(cell=4, shape="square", color="purple", size="small"), GREEN)
    s = edit_score(source, edit, render(over))
    # instruction 1/1; preservation: shape, size of the edited object, blue kept (no), green kept, no extra = 4/5
    assert (s.instruction_met, s.instruction_total, s.preserved, s.preservation_total) == (1, 1, 4, 5)
    assert s.g_sc == pytest.approx(8.0)


@pytest.mark.parametrize("kind", ["move", "remove", "add", "resize", "reshape"])
def test_each_edit_type_scores_ten_when_done_and_less_when_not(kind):
    source = scene(RED, BLUE)
    targets = {
        "move": (scene(Obj(cell=2, shape="circle", color="red", size="large"), BLUE), 0, 2),
        "remove": (scene(BLUE), 0, None),
        "add": (scene(RED, BLUE, GREEN), None, 8),
        "resize": (scene(Obj(cell=0, shape="circle", color="red", size="small"), BLUE), 0, 0),
        "reshape": (scene(Obj(cell=0, shape="diamond", color="red", size="large"), BLUE), 0, 0),
    }
    target, sc, tc = targets[kind]
    edit = _edit(kind, source, target, sc, tc)
    assert edit_score(source, edit, render(target)).g_sc == 10.0
    assert edit_score(source, edit, render(source)).g_sc < 10.0


def test_g_o_is_the_mean_of_geometric_means():
    from arm.world.scores import EditScore

    scores = [EditScore(1, 1, 1, 1, 9.0, 4.0), EditScore(1, 1, 1, 1, 1.0, 1.0)]
    assert g_o(scores) == pytest.approx((math.sqrt(36) + 1) / 2)


def test_understanding_accuracy_exact_match_and_captions_by_scene():
    records = [
        ("color", "Red.", "red"),
        ("color", "blue", "red"),
        ("describe", "a small blue square at the center and a large red circle at the top left",
         "a large red circle at the top left and a small blue square at the center"),
        ("describe", "a red circle", "a large red circle at the top left"),
    ]
    acc = understanding_accuracy(records)
    assert acc == {"color": 0.5, "describe": 0.5, "overall": 0.5}
    assert answer_correct("count_shape", " two ", "two")


def test_generation_accuracy_per_category():
    acc = generation_accuracy([("single", True), ("single", False), ("counting", True)])
    assert acc == {"counting": 1.0, "single": 0.5, "overall": pytest.approx(2 / 3)}
