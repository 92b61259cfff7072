"""Progress for long work: a live bar on a terminal, a few plain lines in logs (DVC and Prefect capture
output, where carriage-return bars turn into noise)."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


class _LogProgress:
    """tqdm's interface, printing `desc: done/total (pct) elapsed` at most every `interval` seconds."""

    def __init__(self, iterable=None, desc: str = "", total: int | None = None, interval: float = 10.0):
        self.iterable, self.desc, self.interval = iterable, desc, interval
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.start, self.last = 0, time.monotonic(), 0.0

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.monotonic()
        if now - self.last >= self.interval or (self.total and self.n >= self.total):
            self.last = now
            pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
            print(f"{self.desc}: {self.n}/{self.total or '?'}{pct} {now - self.start:.0f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(iterable=None, desc: str = "", total: int | None = None):
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True)
    return _LogProgress(iterable, desc, total)


def quiet_lightning() -> None:
    """Silence Lightning's advertising and warnings that do not apply to us (a frozen backbone is meant to
    stay in eval mode; small CPU runs need no dataloader workers)."""
    import logging
    import warnings

    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    for message in (r".*module\(s\) in eval mode.*", r".*does not have many workers.*",
                    r".*LeafSpec.*is deprecated.*", r".*isinstance\(treespec, LeafSpec\).*"):
        warnings.filterwarnings("ignore", message=message)
