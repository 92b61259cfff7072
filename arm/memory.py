"""Keeping freed memory inside a training process instead of handing it back to the OS every step.

glibc returns large freed blocks to the kernel: blocks above its mmap threshold are unmapped when freed,
and free space above its trim threshold is cut from the heap's top. A training step frees nearly all it
allocated (activations, gradients of activations, logits), so the next step's tensors land on fresh
pages that the kernel must fault in and zero again: 5,000 to 17,000 page faults per step of the default
model on the project's CPU, which cost up to 14% of the step depending on the machine's hour
(`benchmarks/train_step.py` measures it).
PyTorch's CPU performance guide suggests preloading jemalloc or tcmalloc for the same reason; this is
the in-process glibc equivalent, with nothing to install or preload.

It changes where memory comes from, never what is computed. Elsewhere (macOS, musl) it does nothing.

>>> keep_freed_memory() in (True, False)
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


@functools.cache
def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Serve blocks up to `mmap_threshold` bytes (glibc's largest allowed, 32 MiB) from the heap and keep
    up to `trim_threshold` bytes of freed heap in the process. True when applied (glibc), else False.
    Called once by each training stage; a GPU run is unaffected beyond its host-side tensors."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
