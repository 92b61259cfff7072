"""Keeping freed memory: the next step's tensors reuse pages instead of faulting in fresh ones."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest

STEPS = """
import resource, sys, torch
from arm.memory import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
def step():                                   # a training step's worth of tensors, all freed at its end
    tensors = [torch.ones(1 << 20) for _ in range(40)]      # 40 x 4 MiB
    del tensors
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def faults_per_step(memory: str) -> float:
    out = subprocess.run([sys.executable, "-c", STEPS, memory], check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or not ctypes.util.find_library("c"), reason="glibc only")
def test_kept_memory_cuts_the_page_faults_of_repeated_steps():
    default = faults_per_step("default")
    if default < 1000:  # 160 MiB freed a step is 40,960 small pages: fewer faults means huge pages or another allocator
        pytest.skip(f"this machine's allocator already faults little ({default:.0f} per step)")
    assert faults_per_step("kept") < default / 3
