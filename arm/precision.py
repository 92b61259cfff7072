"""Which numeric precision a stage trains in, and a warning where bf16 would be slow.

bf16 autocast on a CPU pays off only where the CPU multiplies bf16 natively (AVX512-BF16 or AMX): on
the project's 2-core AMD EPYC a bf16 matmul runs about 4.2 times as fast as fp32, and a training step
of a 5.5M-parameter Qwen2 takes about half the time (`benchmarks/generate.py` measures it for a
config's model: `train_bf16_speedup`). Elsewhere oneDNN emulates it, slower than fp32.

>>> cpu_has_native_bf16() in (True, False)
True
"""

from __future__ import annotations

import sys

import torch


def cpu_has_native_bf16() -> bool:
    """Whether this CPU's matrix kernels run bf16 natively (oneDNN's own check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def warn_if_bf16_is_emulated(precision: str, accelerator: str, key: str) -> None:
    """Say so (and how to change it) when `precision` asks for bf16 on a CPU that would emulate it."""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if precision.startswith("bf16") and on_cpu and not cpu_has_native_bf16():
        print(f"warning: {key}={precision} on a CPU without native bf16 (AVX512-BF16 or AMX) runs slower "
              f"than fp32; set {key}=32-true", file=sys.stderr)
