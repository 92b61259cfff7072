"""Means with 95% bootstrap confidence intervals, deterministic for a seed.

>>> s = mean_ci([1, 0, 1, 1], seed=0)
>>> s.value, s.n, s.low <= s.value <= s.high
(0.75, 4, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def record_of(item: str | None) -> str | None:
    """The record an evaluated item belongs to: items are `<record id>` or `<record id>#<k>`, the k-th
    image of a prompt."""
    return item.split("#", 1)[0] if item else None


def mean_ci(values, resamples: int = 1000, level: float = 0.95, seed: int = 0, clusters=None) -> Estimate:
    """Mean and percentile-bootstrap interval of `values` (resampled with replacement). `clusters` (one
    label per value) resamples whole groups instead, e.g. the several images of one prompt, which are
    not independent of each other; n is then the number of groups."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    units = x
    if clusters is not None:
        labels = list(clusters)
        if len(labels) != x.size:
            raise ValueError(f"one cluster label per value, got {len(labels)} for {x.size}")
        groups: dict = {}
        for label, v in zip(labels, x):
            groups.setdefault(label, []).append(v)
        units = np.array([np.mean(v) for v in groups.values()])
    rng = np.random.default_rng(seed)
    means = units[rng.integers(0, units.size, size=(resamples, units.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return Estimate(float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)),
                    int(units.size))


def paired_difference_ci(a, b, clusters=None, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Estimate:
    """mean(b - a) over paired values (two systems scored on the same items, a[i] with b[i]) with a
    bootstrap interval that resamples items, each item's two scores together: what varies between
    items (some prompts are harder) cancels, so a real change shows with fewer items. `clusters` as in
    `mean_ci`.

    >>> paired_difference_ci([0, 1, 0, 1], [1, 2, 1, 2]).low    # every item gained exactly 1
    1.0
    """
    x, y = np.asarray(list(a), np.float64), np.asarray(list(b), np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired values need one b per a, got {x.size} and {y.size}")
    return mean_ci(y - x, resamples, level, seed, clusters=clusters)


def difference_ci(a, b, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Estimate:
    """mean(b) - mean(a) with a bootstrap interval, the two samples resampled independently (for
    unpaired samples; `paired_difference_ci` when both scored the same items)."""
    x, y = np.asarray(list(a), np.float64), np.asarray(list(b), np.float64)
    if x.size == 0 or y.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    dx = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    dy = y[rng.integers(0, y.size, size=(resamples, y.size))].mean(axis=1)
    diffs = dy - dx
    alpha = (1 - level) / 2
    return Estimate(float(y.mean() - x.mean()), float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha)),
                    int(min(x.size, y.size)))
