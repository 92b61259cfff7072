"""What every benchmark ends with: the figures printed as a table and written as JSON."""

from __future__ import annotations

import json
from pathlib import Path


def report(result: dict, out: str | Path, skip: tuple[str, ...] = ("config", "machine"), width: int = 34) -> None:
    for key, value in result.items():
        if key not in skip:
            print(f"{key:>{width}}: {value:,.3f}" if isinstance(value, float) else f"{key:>{width}}: {value}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def cpu_description(seconds: float = 1.0) -> dict:
    """Which CPU a timing comes from: its model name, whether it has AVX-512 (and bf16 / AMX) units, the
    cores this process may use, and a 2,048^2 fp32 matmul's speed measured now (a slow machine or a
    busy hour shows here)."""
    import os
    import platform
    import time

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
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    info["fp32_matmul_gflops"] = round(2 * 2048**3 * count / (time.perf_counter() - start) / 1e9, 1)
    return info
