"""`benchmarks/gpu.py`, the check a session lent a GPU runs, at tiny sizes on the CPU: every section runs
through the same code (FSDP2 on a one-process gloo mesh, activation checkpointing, compiled blocks, the
engine) and writes finite figures; its FLOP count and its memory fallback are checked on their own."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu(request):
    sys.path.insert(0, str(REPO / "benchmarks"))
    request.addfinalizer(lambda: sys.path.remove(str(REPO / "benchmarks")))
    return importlib.import_module("gpu")


@pytest.mark.slow
def test_gpu_check_runs_every_section_on_cpu_at_tiny_size(tmp_path, encoded_stages):
    out = tmp_path / "gpu.json"
    sections = ["ceilings", "small", "decode", "fsdp_1b", "preset_7b", "compiled", "lightning"]
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--device", "cpu", "--tiny",
                          "--sections", *sections, "--artifacts", str(encoded_stages), "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["errors"] == {}, result["errors"]
    assert result["tiny"] is True and result["device"] == "cpu"
    for section in ("small", "fsdp_1b", "preset_7b", "compiled"):
        steps = [result[section]] if section != "compiled" else [result[section]["small"], result[section]["fsdp_1b"]]
        if section == "fsdp_1b":
            steps.append(result[section]["without_checkpointing"])
        for step in steps:
            assert step["loss_finite"], section
            assert step["ms_per_step"] > 0 and math.isfinite(step["mfu"]) and 0 < step["mfu"] < 1, (section, step)
    assert result["preset_7b"]["fits_on_one_device"] is True
    decode = result["decode"]
    for batch in (1, 4):
        for kind in ("guided", "unguided"):
            assert decode[f"batch{batch}_{kind}_image_tokens_per_s"] > 0
    lightning = result["lightning"]      # `arm pretrain` itself: FSDP2, bf16, checkpointing, one process
    assert lightning["steps"] == 8 and math.isfinite(lightning["val_loss"]) and lightning["parameters"] > 0
    assert lightning["inputs"]["grid"] == 8
    assert "wrote" in run.stdout


def test_training_flops_count_the_matmuls_head_at_targets_and_causal_attention(gpu):
    from arm.model.backbone import build_causal_lm
    from arm.model.sequences import IGNORE

    d, layers, heads, kv, inter, vocab = 32, 2, 4, 2, 64, 600
    model = build_causal_lm("qwen2", vocab_size=vocab, hidden_size=d, num_layers=layers, num_heads=heads,
                            num_kv_heads=kv, intermediate_size=inter)
    ids = torch.randint(0, vocab, (3, 10))
    labels = ids.clone()
    labels[:, :6] = IGNORE                       # positions 5..8 predict targets 6..9: 4 per row
    per_layer = d * d * 2 + 2 * d * (d // heads * kv) + 3 * d * inter       # q, o; k, v; gate, up, down
    expected = (6 * layers * per_layer * 30          # every token through every block
                + 6 * d * vocab * 12                 # the head at the 12 target-predicting positions
                + 6 * layers * d * 10 * 30)          # causal attention: 6 L d_q T per token
    assert gpu.training_flops(model, {"input_ids": ids, "labels": labels}) == expected


def test_t2i_batch_puts_every_code_in_a_real_cell(gpu):
    from arm.model.positions import image_cell_indices
    from arm.model.sequences import IGNORE

    vocab = gpu.synthetic_vocab(256, 512)
    batch = gpu.t2i_batch(vocab, grid=4, batch=2, seq_len=64, device=torch.device("cpu"))
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == labels.shape == (2, 64)
    cells = image_cell_indices(ids, vocab.image_offset, vocab.codebook_size, vocab["<|soi|>"])
    assert int(cells.max()) == 15                # 4 x 4 grids, each whole
    assert bool((labels[:, :32] == IGNORE).all()) and bool((labels[:, 32:] != IGNORE).all())


def test_7b_section_falls_back_to_fewer_blocks_and_projects_memory(gpu):
    """Where one device cannot hold the 7B model, two smaller block counts are measured and the peak
    memory is extrapolated linearly to all 28."""
    def measure(device, tiny, peak, layers=None):
        if layers is None or layers > 7:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"layers": layers, "peak_memory_gb": 10.0 + 3.0 * layers}

    result = gpu.preset_7b(torch.device("cpu"), True, 1.0, measure=measure)
    assert result["fits_on_one_device"] is False
    assert [m["layers"] for m in result["measured"]] == [7, 4]
    assert result["peak_memory_gb_per_layer"] == pytest.approx(3.0)
    assert result["projected_peak_memory_gb"] == pytest.approx(10.0 + 3.0 * 28)


def test_7b_section_reraises_errors_other_than_memory(gpu):
    def measure(device, tiny, peak, layers=None):
        raise ValueError("a bug, not a size")

    with pytest.raises(ValueError, match="a bug"):
        gpu.preset_7b(torch.device("cpu"), True, 1.0, measure=measure)


def test_scaling_memory_terms_agree_with_the_committed_gpu_run(tmp_path):
    """`benchmarks/scaling.py`'s memory terms, at one process, against the peaks the GPU check measured
    (benchmarks/results/gpu.json): never under them, and not more than 20% over (an upper estimate)."""
    out = tmp_path / "scaling.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scaling.py"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    for name, check in result["check_against_one_device"].items():
        assert 1.0 <= check["ratio"] <= 1.2, (name, check)
    per_gpu = result["memory_per_gpu_gib"]["checkpointed"]
    assert result["processes"] == 32 and per_gpu["total"] < 40       # fits an 80 GB GPU with room
    assert result["model"]["parameters"] == pytest.approx(8.07e9, rel=0.002)
