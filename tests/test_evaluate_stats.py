"""Bootstrap intervals and the per-group summaries the evaluation report is built from."""

from __future__ import annotations

import math

import numpy as np
import pytest

from arm.evaluate.stats import difference_ci, mean_ci, paired_difference_ci
from arm.evaluate.samples import Samples, summarise


def test_interval_brackets_the_mean_and_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    small = mean_ci(rng.random(20) < 0.7, seed=1)
    large = mean_ci(rng.random(2000) < 0.7, seed=1)
    for e in (small, large):
        assert e.low <= e.value <= e.high
    assert large.high - large.low < (small.high - small.low) / 4
    # For a proportion, the bootstrap interval is close to the normal one, 1.96 sqrt(p (1 - p) / n).
    p = large.value
    assert (large.high - large.low) / 2 == pytest.approx(1.96 * math.sqrt(p * (1 - p) / 2000), rel=0.15)


def test_intervals_are_deterministic_for_a_seed_and_constant_data_has_none():
    data = [0, 1, 1, 0, 1]
    assert mean_ci(data, seed=3) == mean_ci(data, seed=3)
    e = mean_ci([2.5] * 10)
    assert (e.value, e.low, e.high, e.n) == (2.5, 2.5, 2.5, 10)
    assert mean_ci([]).n == 0 and math.isnan(mean_ci([]).value)


def test_difference_interval_excludes_zero_only_for_a_real_change():
    rng = np.random.default_rng(0)
    a, b = rng.random(500) < 0.5, rng.random(500) < 0.7
    d = difference_ci(a, b)
    assert d.low > 0 and abs(d.value - (b.mean() - a.mean())) < 1e-12
    same = difference_ci(a, rng.random(500) < 0.5)
    assert same.low < 0 < same.high


def test_paired_interval_sees_a_small_change_the_unpaired_one_misses():
    """Hard and easy items shared by both systems: B passes everything A passes plus 4% more items.
    Pairing cancels the item-to-item spread; the hand-computed mean gain is 20 / 500."""
    rng = np.random.default_rng(1)
    a = (rng.random(500) < 0.3).astype(float)
    b = a.copy()
    b[np.flatnonzero(a == 0)[:20]] = 1.0
    paired, unpaired = paired_difference_ci(a, b), difference_ci(a, b)
    assert paired.value == pytest.approx(20 / 500) == unpaired.value
    assert paired.low > 0 and unpaired.low < 0           # 0.04 is inside the unpaired interval's noise
    assert paired.high - paired.low < unpaired.high - unpaired.low
    with pytest.raises(ValueError, match="one b per a"):
        paired_difference_ci([1, 0], [1])


def test_summary_keys_overall_and_per_group():
    s = Samples()
    for group, value in (("two", 1), ("two", 0), ("single", 1)):
        s.add("gen/acc", group, value)
    for value in (4.0, 8.0):
        s.add("edit/g_o", "move", value)
    s.add("und/text_knowledge_seen", None, 1)
    summary = summarise(s)
    assert summary["gen/acc"].value == 2 / 3 and summary["gen/acc"].n == 3
    assert summary["gen/two"].value == 0.5 and summary["gen/single"].value == 1.0
    assert summary["edit/g_o"].value == 6.0 and summary["edit/move/g_o"].value == 6.0
    assert summary["und/text_knowledge_seen"].n == 1 and "und/None" not in summary


def test_several_images_of_a_prompt_are_resampled_together():
    """Four images of each of 50 prompts: the interval counts prompts (n = 50), not images, so it is
    no narrower than one from 50 independent scores, and the value is the plain mean over images."""
    s = Samples()
    rng = np.random.default_rng(2)
    easy = rng.random(50) < 0.3                       # a prompt's images pass or fail together, mostly
    for p in range(50):
        for k in range(4):
            s.add("gen/acc", "single", float(easy[p]), f"p{p}#{k}")
    e = summarise(s)["gen/acc"]
    assert e.n == 50 and e.value == pytest.approx(easy.mean())
    naive = mean_ci(np.repeat(easy, 4).astype(float))
    assert (e.high - e.low) > 1.5 * (naive.high - naive.low)
