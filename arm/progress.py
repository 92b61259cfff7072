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


def training_progress(label: str, interval: float = 30.0):
    """A Lightning callback for logs (no terminal): `label: step k/N (pct) loss x, elapsed, eta` at most
    every `interval` seconds, where a progress bar would print carriage-return noise."""
    import lightning as L

    class TrainingProgress(L.Callback):
        def __init__(self):
            self.start = self.last = None

        def on_train_start(self, trainer, module):
            self.start = self.last = time.monotonic()
            self.first_step = trainer.global_step

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            now, step, total = time.monotonic(), trainer.global_step, trainer.max_steps
            if trainer.global_rank or (now - self.last < interval and step < total):
                return
            self.last = now
            done = max(1, step - self.first_step)
            eta = (now - self.start) / done * max(0, total - step)
            loss = trainer.callback_metrics.get("train/loss")
            loss_text = f" loss {float(loss):.4f}" if loss is not None else ""
            print(f"{label}: step {step}/{total} ({100 * step / max(1, total):.0f}%){loss_text}, "
                  f"{now - self.start:.0f}s elapsed, eta {eta:.0f}s", file=sys.stderr, flush=True)

    return TrainingProgress()
