"""Each RL reward on images whose right score is known: exact renders of the right and wrong scenes."""

from __future__ import annotations

import numpy as np
import pytest

from arm.rl.rewards import RewardSample, combined_reward, resolve
from arm.world.render import render
from arm.world.scene import Obj, Scene
from arm.world.texts import parse_prompt, sample_edit

RED_CIRCLE = Scene((Obj(cell=4, shape="circle", color="red", size="large"),))


def _px(scene: Scene) -> np.ndarray:
    return np.asarray(render(scene, 64))


def test_generation_rewards_on_right_wrong_and_empty_images():
    spec = parse_prompt("a large red circle at the center")
    score = combined_reward({"instruction": 1.0, "quality": 1.0, "consistency": 1.0})
    right = score(RewardSample("t2i", _px(RED_CIRCLE), spec=spec))
    assert right["instruction"] == 1.0 and right["quality"] == 1.0 and right["total"] == 3.0
    blue = Scene((Obj(cell=4, shape="circle", color="blue", size="large"),))
    wrong = score(RewardSample("t2i", _px(blue), spec=spec))
    assert 0 < wrong["instruction"] < 1  # the shape, size and position atoms hold, the colour does not
    empty = score(RewardSample("t2i", _px(Scene(())), spec=spec))
    assert empty["instruction"] == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_edit_rewards_on_the_target_and_on_a_no_op(seed):
    rng = np.random.default_rng(seed)
    source = Scene((Obj(cell=0, shape="square", color="green", size="small"),
                    Obj(cell=8, shape="triangle", color="yellow", size="large")))
    edit = sample_edit(source, rng, jitter=0.0)
    score = combined_reward({"instruction": 1.0, "consistency": 1.0})
    done = score(RewardSample("edit", _px(edit.target), source=_px(source), source_scene=source, edit=edit))
    assert done["instruction"] == 1.0 and done["consistency"] == 1.0
    no_op = score(RewardSample("edit", _px(source), source=_px(source), source_scene=source, edit=edit))
    assert no_op["instruction"] < 1.0  # an edit that changes nothing has not followed the instruction


def test_over_editing_loses_consistency():
    rng = np.random.default_rng(0)
    source = Scene((Obj(cell=0, shape="square", color="green", size="small"),
                    Obj(cell=8, shape="triangle", color="yellow", size="large")))
    edit = sample_edit(source, rng, jitter=0.0, types=("recolor",))
    untouched = next(o for o in edit.target.objects if o.cell not in (edit.source_cell, edit.target_cell))
    over = edit.target.replace_object(untouched, Obj(cell=untouched.cell, shape=untouched.shape, color="purple",
                                                     size=untouched.size))
    score = combined_reward({"consistency": 1.0})
    s = score(RewardSample("edit", _px(over), source=_px(source), source_scene=source, edit=edit))
    assert s["consistency"] < 0.75


def test_a_users_reward_is_loaded_by_name_and_bad_names_are_clear():
    assert resolve("math:fabs")(-2.0) == 2.0
    with pytest.raises(ValueError, match="unknown reward"):
        resolve("beauty")
    with pytest.raises(ValueError, match="cannot load"):
        resolve("no_such_module:f")


def test_exact_reward_is_all_or_nothing():
    spec = parse_prompt("a large red circle at the center")
    exact = resolve("exact")
    assert exact(RewardSample("t2i", _px(RED_CIRCLE), spec=spec)) == 1.0
    extra = Scene(RED_CIRCLE.objects + (Obj(cell=0, shape="square", color="blue", size="small"),))
    # One extra object costs the dense reward one atom of several, the exact reward everything.
    assert resolve("instruction")(RewardSample("t2i", _px(extra), spec=spec)) > 0.5
    assert exact(RewardSample("t2i", _px(extra), spec=spec)) == 0.0
    source = Scene((Obj(cell=0, shape="square", color="green", size="small"),
                    Obj(cell=8, shape="triangle", color="yellow", size="large")))
    edit = sample_edit(source, np.random.default_rng(0), jitter=0.0)
    sample = dict(source=_px(source), source_scene=source, edit=edit)
    assert exact(RewardSample("edit", _px(edit.target), **sample)) == 1.0
    assert exact(RewardSample("edit", _px(source), **sample)) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_evaluation_reward_is_the_evaluations_score_of_the_sample(seed):
    """Generation: the prompt's pass; editing: G_O / 10 from `arm.world.scores.edit_score` itself."""
    from arm.world.scores import edit_score

    spec = parse_prompt("a large red circle at the center")
    evaluation = resolve("evaluation")
    extra = Scene(RED_CIRCLE.objects + (Obj(cell=0, shape="square", color="blue", size="small"),))
    assert evaluation(RewardSample("t2i", _px(RED_CIRCLE), spec=spec)) == 1.0
    assert evaluation(RewardSample("t2i", _px(extra), spec=spec)) == 0.0
    source = Scene((Obj(cell=0, shape="square", color="green", size="small"),
                    Obj(cell=8, shape="triangle", color="yellow", size="large")))
    edit = sample_edit(source, np.random.default_rng(seed), jitter=0.0)
    sample = dict(source=_px(source), source_scene=source, edit=edit)
    untouched = [o for o in edit.target.objects if o.cell not in (edit.source_cell, edit.target_cell)]
    over = edit.target.replace_object(untouched[0], Obj(untouched[0].cell, "circle", "purple", "large")) \
        if untouched else edit.target
    for scene, expected in ((edit.target, 1.0), (source, None), (over, None)):
        got = evaluation(RewardSample("edit", _px(scene), **sample))
        assert got == pytest.approx(edit_score(source, edit, _px(scene)).g_o / 10, abs=1e-9)
        if expected is not None:
            assert got == expected
    assert evaluation(RewardSample("edit", _px(source), **sample)) == 0.0   # a no-op did nothing asked
