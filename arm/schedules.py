"""Learning-rate schedules as multipliers of the peak rate, for `torch.optim.lr_scheduler.LambdaLR`.

>>> f = warmup_cosine(warmup_steps=10, total_steps=110, floor=0.1)
>>> round(f(0), 2), f(9), f(10), round(f(60), 3), round(f(110), 3)
(0.1, 1.0, 1.0, 0.55, 0.1)
"""

from __future__ import annotations

import math


def warmup_cosine(warmup_steps: int, total_steps: int, floor: float = 0.05, constant: bool = False):
    """Linear warmup to the peak, then a half cosine down to `floor` (or flat with `constant`)."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if constant:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier
