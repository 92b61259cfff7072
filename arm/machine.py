"""Which machine a run is on, measured rather than assumed: the CPU's model and vector units and how
fast it multiplies matrices right now. Training stages print it at their start (a slow machine or a busy
hour is then named in the log, not guessed from a stage's minutes); benchmarks store it beside their
timings.

>>> info = cpu_description(seconds=0.05)
>>> sorted(k for k in info if k in ("cores", "fp32_matmul_gflops")), info["fp32_matmul_gflops"] > 0
(['cores', 'fp32_matmul_gflops'], True)
>>> machine_line({"model": "AMD EPYC 9R14", "cores": 2, "avx512": True, "avx512_bf16": True, "amx": False,
...               "fp32_matmul_gflops": 195.3})
'AMD EPYC 9R14, 2 cores, AVX-512 with bf16, fp32 matmul 195 GFLOP/s'
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def cpu_description(seconds: float = 1.0) -> dict:
    """Which CPU a timing comes from: its model name, whether it has AVX-512 (and bf16 / AMX) units, the
    cores this process may use, and a 2,048^2 fp32 matmul's speed measured now. The matrices come from
    their own generator: measuring never moves the global random state a seeded run draws from."""
    import torch

    info: dict = {"processor": platform.machine(), "cores": len(os.sched_getaffinity(0))}
    try:
        text = Path("/proc/cpuinfo").read_text()
        names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
        flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
        info.update(model=names[0] if names else None, avx512="avx512f" in flags,
                    avx512_bf16="avx512_bf16" in flags, amx="amx_tile" in flags)
    except OSError:
        pass
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(2048, 2048, generator=generator) for _ in range(2))
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    info["fp32_matmul_gflops"] = round(2 * 2048**3 * count / (time.perf_counter() - start) / 1e9, 1)
    return info


def machine_line(info: dict) -> str:
    """`cpu_description`'s answer in one line for a log."""
    if info.get("avx512"):
        units = "AVX-512 with bf16" if info.get("avx512_bf16") else "AVX-512"
        units += " and AMX" if info.get("amx") else ""
    else:
        units = "no AVX-512"
    name = info.get("model") or info.get("processor", "unknown CPU")
    return f"{name}, {info['cores']} cores, {units}, fp32 matmul {info['fp32_matmul_gflops']:.0f} GFLOP/s"


def describe_machine(accelerator: str = "cpu") -> str:
    """The line a training stage prints at its start: the CPU measured (0.3 s), or the GPU by name."""
    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        count = torch.cuda.device_count()
        return f"{torch.cuda.get_device_name(0)} x {count}" if count > 1 else torch.cuda.get_device_name(0)
    return machine_line(cpu_description(seconds=0.3))
