"""The scale path on one GPU, measured: what a session lent a GPU runs, in one command of a few minutes.

    python benchmarks/gpu.py                          # on a CUDA GPU: writes benchmarks/results/gpu.json
    python benchmarks/gpu.py --device cpu --tiny      # the same code at tiny sizes (the test suite runs it)

Each section prints a line as it finishes and the JSON is rewritten after every section, so a run cut
short keeps what it measured. A section that fails records its error and the rest still run.

    ceilings     a bf16 matmul (n = 8,192) and a device-to-device copy, timed here: the peaks MFU and the
                 decode bound are taken against
    small        `configs/small.yaml`'s unified model (its sizes and its 66,048-id vocabulary), one
                 training step in bf16 autocast with fp32 weights as Lightning's `bf16-mixed` runs it
                 (forward, `target_loss`, backward, gradient clipping, AdamW), t2i-shaped sequences
    fsdp_1b      a ~1.2B configuration (Llama-3.2-1B's body over the same vocabulary) under FSDP2 with bf16
                 parameters, fp32 reduction and activation checkpointing (`shard_with_fsdp2`, what
                 `pretrain.strategy=fsdp` runs), one process
    preset_7b    `configs/arm-7b.yaml`'s model (Qwen2.5-7B's shape, 215,672 ids): one forward and backward
                 at its per-GPU micro-batch (2 sequences of 1,024) under FSDP2 + activation checkpointing,
                 the peak memory measured; if it does not fit, the largest layer count that does and a
                 projection to 28 layers
    decode       the engine (`arm.generate.Engine`, KV cache) on the small model in bf16: image tokens/s
                 at batch 1 and 64, guided (guidance 2, two rows per image) and not, against the bound
                 of reading every weight once per decoding step at the measured copy bandwidth

FLOPs are counted per step from the model (PaLM's accounting: 6 per matmul weight per token, the output
head only at the positions that predict a target, attention's scores and values counted causally,
6 L d_q T per token); activation checkpointing's recomputation is not counted (it is model FLOP
utilisation, not hardware). Synthetic batches: random text, `<|soi|>`, random image codes, the loss on
the image half, no padding, the same layout `arm pretrain` trains on for text-to-image.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arm.config import load_config  # noqa: E402
from arm.model.backbone import build_causal_lm  # noqa: E402
from arm.model.sequences import IGNORE, generation_prefix  # noqa: E402
from arm.model.vocab import EOI, SOI, Vocab  # noqa: E402
from arm.model.stage import backbone_kwargs  # noqa: E402
from arm.model.train import compile_blocks  # noqa: E402
from arm.text_tokenizer import SPECIAL_TOKENS  # noqa: E402

QWEN25_TOKENIZER = 151_665         # tokens Qwen2.5's tokenizer.json defines (the 7B preset's text side)
# Llama-3.2-1B's body: 16 blocks of width 2,048, 8,192 in the MLP, grouped-query attention (8 KV heads).
ONE_B = dict(hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8, intermediate_size=8192)
TINY = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)

# Per section: (micro-batch, sequence length) at full size and with --tiny.
SIZES = {"small": ((64, 192), (2, 32)), "fsdp_1b": ((16, 1024), (2, 32)), "preset_7b": ((2, 1024), (2, 32))}


# --- timing -------------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, warmup: int, repeats: int) -> tuple[float, list[float]]:
    """Median wall seconds of `fn()` over `repeats` calls after `warmup` calls; device work is waited for
    (CUDA events on a GPU, the host clock on a CPU)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_memory(device: torch.device) -> None:
    gc.collect()                     # a failed section's model may sit in reference cycles
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# --- the ceilings ---------------------------------------------------------------------------------------

def ceilings(device: torch.device, tiny: bool) -> dict:
    """bf16 matmul FLOP/s (random operands, never zeros) and copy bandwidth (bytes read + written)."""
    n = 256 if tiny else 8192
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    seconds, _ = median_seconds(lambda: a @ b, device, warmup=3, repeats=10 if tiny else 20)
    elements = (1 << 20) if tiny else (1 << 30)          # 2 GiB of bf16 on a GPU: far past the L2
    src = torch.randn(elements, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy_s, _ = median_seconds(lambda: dst.copy_(src), device, warmup=3, repeats=10 if tiny else 20)
    return {"matmul_n": n, "bf16_matmul_tflops": 2 * n**3 / seconds / 1e12,
            "copy_bytes": 2 * src.numel() * src.element_size(),
            "copy_gb_per_s": 2 * src.numel() * src.element_size() / copy_s / 1e9}


# --- models and batches ---------------------------------------------------------------------------------

def synthetic_vocab(text_size: int, codebook_size: int) -> Vocab:
    """A unified id space of the given sizes, our special tokens at the end of the text ids."""
    specials = {token: text_size - len(SPECIAL_TOKENS) + i for i, token in enumerate(SPECIAL_TOKENS)}
    return Vocab(text_size, codebook_size, specials)


def preset_model(preset: str, device: torch.device, tiny: bool, text_size: int | None = None,
                 overrides: dict | None = None):
    """(model, vocab) of a preset's unified model, randomly initialised on `device` (built there, not
    copied). `text_size`: the text side's ids (default: the preset's `prepare.vocab_size`)."""
    cfg = load_config(preset)
    codes = 512 if tiny else math.prod(cfg.tokenizer.fsq_levels)
    vocab = synthetic_vocab(256 if tiny else (text_size or cfg.prepare.vocab_size), codes)
    kwargs = backbone_kwargs(cfg, vocab, cfg.tokenizer.grid)
    kwargs["pretrained_path"] = None            # the preset's sizes; no checkpoint is needed to time them
    kwargs.update(TINY if tiny else {})
    kwargs.update(overrides or {})
    return build_causal_lm(**kwargs, device=device), vocab, cfg


def t2i_batch(vocab: Vocab, grid: int, batch: int, seq_len: int, device: torch.device, seed: int = 0) -> dict:
    """(batch, seq_len) rows shaped like text-to-image training sequences: `<|t2i|>` text `<|soi|>`, then
    image codes on the second half of the row, the loss on them. A half longer than one grid holds
    several whole grids, `<|eoi|> <|soi|>` between them, so every code sits in a real cell."""
    g = torch.Generator().manual_seed(seed)
    image_len = seq_len // 2
    text_len = seq_len - image_len - 2                                   # <|t2i|> ... <|soi|>
    rows, labels = [], []
    for _ in range(batch):
        prompt = torch.randint(0, vocab.text_size - len(SPECIAL_TOKENS), (text_len,), generator=g).tolist()
        prefix = generation_prefix(vocab, prompt)
        image: list[int] = []
        while len(image) < image_len:
            cells = min(grid * grid, image_len - len(image))
            image += vocab.image_id(torch.randint(0, vocab.codebook_size, (cells,), generator=g)).tolist()
            if len(image) + 2 <= image_len:
                image += [vocab[EOI], vocab[SOI]]
        image = image[:image_len]
        rows.append(prefix + image)
        labels.append([IGNORE] * len(prefix) + image)
    return {"input_ids": torch.tensor(rows, device=device), "labels": torch.tensor(labels, device=device)}


def training_flops(model, batch: dict) -> float:
    """Model FLOPs of one training step (forward + backward) on `batch`; see the module docstring."""
    from arm.model.train import predicts_target

    cfg = model.config
    body = sum(p.numel() for name, p in model.named_parameters()
               if p.ndim == 2 and (".layers." in name or "source_projection" in name))
    b, t = batch["input_ids"].shape
    targets = int(predicts_target(batch["labels"]).sum())
    head = cfg.hidden_size * cfg.vocab_size
    q_dim = cfg.num_attention_heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    attention = 6 * cfg.num_hidden_layers * q_dim * t * (b * t)
    return 6 * body * b * t + 6 * head * targets + attention


def train_step_fn(model, batch: dict, device: torch.device, autocast: bool, optimizer=None, grad_clip: float = 1.0):
    """One training step as `arm pretrain` takes it; returns a closure and a list that collects losses."""
    from arm.model.train import target_loss

    losses: list[torch.Tensor] = []

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = target_loss(model, batch["input_ids"], batch["labels"])
        loss.backward()
        if optimizer is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            for p in model.parameters():
                p.grad = None
        losses.append(loss.detach())

    return step, losses


def throughput(model, batch: dict, seconds: float, peak_tflops: float) -> dict:
    flops = training_flops(model, batch)
    tokens = batch["input_ids"].numel()
    return {"tokens_per_step": tokens, "ms_per_step": 1000 * seconds, "tokens_per_s": tokens / seconds,
            "model_tflops_per_step": flops / 1e12, "model_tflops_per_s": flops / seconds / 1e12,
            "mfu": flops / seconds / 1e12 / peak_tflops}


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --- (a) the small preset, plain bf16 autocast --------------------------------------------------------

def small_preset_step(device: torch.device, tiny: bool, peak: float, compiled: bool = False) -> dict:
    from arm.optim import build_optimizer

    reset_memory(device)
    torch.manual_seed(0)
    model, vocab, cfg = preset_model("configs/small.yaml", device, tiny)
    if compiled:
        compile_blocks(model)
    batch_size, seq_len = SIZES["small"][tiny]
    batch = t2i_batch(vocab, cfg.tokenizer.grid, batch_size, seq_len, device)
    opt = build_optimizer(model, "adamw", lr=1e-5, weight_decay=0.1)
    step, losses = train_step_fn(model, batch, device, autocast=True, optimizer=opt, grad_clip=cfg.pretrain.grad_clip)
    seconds, _ = median_seconds(step, device, warmup=3, repeats=4 if tiny else 15)
    result = {"parameters": parameter_count(model), "batch": batch_size, "seq_len": seq_len,
              **throughput(model, batch, seconds, peak), "peak_memory_gb": peak_memory_gb(device),
              "loss_finite": bool(torch.isfinite(torch.stack(losses)).all())}
    del model, opt, step
    return result


# --- (b) and (c): FSDP2 with activation checkpointing --------------------------------------------------

def data_parallel_mesh(device: torch.device):
    """A one-process data-parallel mesh (NCCL on a GPU, gloo on a CPU): FSDP2's code path on one device."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_initialized():
        from arm.processes import free_port

        # Its own port, not MASTER_PORT in the environment, which `arm pretrain` started later would inherit.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{free_port()}",
                                rank=0, world_size=1)
    return init_device_mesh(device.type, (1,), mesh_dim_names=("data_parallel",))


def fsdp_model(model, device: torch.device, checkpointing: bool = True, compiled: bool = False):
    """Activation checkpointing, then FSDP2 with bf16 parameters: what `PretrainModule` does under
    `pretrain.strategy=fsdp`, `pretrain.activation_checkpointing=true`, `bf16-mixed`."""
    from arm.model.train import enable_activation_checkpointing, shard_with_fsdp2

    if checkpointing:
        enable_activation_checkpointing(model)
    if compiled:
        compile_blocks(model)
    model.train()
    shard_with_fsdp2(model, data_parallel_mesh(device), bf16=True)
    return model


def fsdp_1b(device: torch.device, tiny: bool, peak: float) -> dict:
    """The step with activation checkpointing, and without it to show what the recomputation costs."""
    result = fsdp_1b_step(device, tiny, peak, checkpointing=True)
    result["without_checkpointing"] = fsdp_1b_step(device, tiny, peak, checkpointing=False)
    return result


def fsdp_1b_step(device: torch.device, tiny: bool, peak: float, checkpointing: bool, compiled: bool = False) -> dict:
    from arm.optim import build_optimizer

    reset_memory(device)
    torch.manual_seed(0)
    model, vocab, cfg = preset_model("configs/small.yaml", device, tiny, overrides=None if tiny else ONE_B)
    model = fsdp_model(model, device, checkpointing, compiled)
    batch_size, seq_len = SIZES["fsdp_1b"][tiny]
    batch = t2i_batch(vocab, cfg.tokenizer.grid, batch_size, seq_len, device)
    opt = build_optimizer(model, "adamw", lr=1e-5, weight_decay=0.1)
    step, losses = train_step_fn(model, batch, device, autocast=False, optimizer=opt)
    seconds, _ = median_seconds(step, device, warmup=3, repeats=4 if tiny else 10)
    result = {"config": dict(ONE_B) if not tiny else dict(TINY), "parameters": parameter_count(model),
              "batch": batch_size, "seq_len": seq_len, **throughput(model, batch, seconds, peak),
              "peak_memory_gb": peak_memory_gb(device), "loss_finite": bool(torch.isfinite(torch.stack(losses)).all())}
    del model, opt, step
    return result


def preset_7b_forward_backward(device: torch.device, tiny: bool, peak: float, layers: int | None = None) -> dict:
    """One forward and backward of the 7B preset's model (or its first `layers` blocks) under FSDP2 and
    activation checkpointing, at the preset's per-GPU micro-batch; no optimizer state is allocated."""
    reset_memory(device)
    torch.manual_seed(0)
    overrides = {"num_layers": layers} if layers else {}
    model, vocab, cfg = preset_model("configs/arm-7b.yaml", device, tiny,
                                     text_size=QWEN25_TOKENIZER + len(SPECIAL_TOKENS), overrides=overrides)
    model = fsdp_model(model, device)
    weights_gb = peak_memory_gb(device)
    batch_size, seq_len = SIZES["preset_7b"][tiny]
    batch = t2i_batch(vocab, cfg.tokenizer.grid, batch_size, seq_len, device)
    step, losses = train_step_fn(model, batch, device, autocast=False)
    seconds, _ = median_seconds(step, device, warmup=1, repeats=2 if tiny else 3)
    result = {"layers": model.config.num_hidden_layers, "parameters": parameter_count(model),
              "vocab_size": vocab.size, "batch": batch_size, "seq_len": seq_len,
              **throughput(model, batch, seconds, peak), "weights_gb": weights_gb,
              "peak_memory_gb": peak_memory_gb(device), "loss_finite": bool(torch.isfinite(torch.stack(losses)).all())}
    del model, step
    return result


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def preset_7b(device: torch.device, tiny: bool, peak: float, measure=preset_7b_forward_backward) -> dict:
    """The whole 7B model if one device holds it; else the largest of 14, 7, 4, 2 blocks that fits, one
    smaller still, and the peak memory projected to all blocks from the two (it grows linearly in them)."""
    full_layers = load_config("configs/arm-7b.yaml").pretrain.num_layers
    try:
        return {"fits_on_one_device": True, **measure(device, tiny, peak)}
    except Exception as error:  # noqa: BLE001 - only running out of memory is an answer here
        if not is_out_of_memory(error):
            raise
    reset_memory(device)
    fitted = []
    for layers in (14, 7, 4, 2, 1):
        try:
            fitted.append(measure(device, tiny, peak, layers=layers))
        except Exception as error:  # noqa: BLE001
            if not is_out_of_memory(error):
                raise
            reset_memory(device)
            continue
        if len(fitted) == 2:
            break
    if len(fitted) < 2:
        raise RuntimeError("the 7B preset's model does not fit on this device even with two blocks")
    big, small = fitted
    per_layer = (big["peak_memory_gb"] - small["peak_memory_gb"]) / (big["layers"] - small["layers"])
    return {"fits_on_one_device": False, "measured": fitted, "peak_memory_gb_per_layer": per_layer,
            "projected_peak_memory_gb": big["peak_memory_gb"] + per_layer * (full_layers - big["layers"])}


# --- (d) decoding -----------------------------------------------------------------------------------------

def decode(device: torch.device, tiny: bool, bandwidth_gb_per_s: float) -> dict:
    """Image tokens/s of `Engine.generate_images` (one grid per prompt) against the weight-reading bound."""
    from arm.generate import Engine, Sampling

    torch.manual_seed(0)
    model, vocab, cfg = preset_model("configs/small.yaml", device, tiny)
    model = model.to(torch.bfloat16).eval()
    engine = Engine(model, vocab)
    tokens = cfg.tokenizer.grid ** 2
    # Bytes one decoding step must read at least: every weight once (the input embedding: one row per
    # sequence, so none of it counts), the KV cache not counted.
    weight_bytes = sum(p.numel() * p.element_size() for name, p in model.named_parameters() if "embed_tokens" not in name)
    steps_per_s_bound = bandwidth_gb_per_s * 1e9 / weight_bytes
    g = torch.Generator().manual_seed(1)
    result = {"parameters": parameter_count(model), "image_tokens": tokens, "weight_bytes_per_step": weight_bytes,
              "bound_steps_per_s": steps_per_s_bound}
    for batch in (1, 64) if not tiny else (1, 4):
        prompts = [generation_prefix(vocab, torch.randint(0, 200, (12,), generator=g).tolist()) for _ in range(batch)]
        empty = [generation_prefix(vocab, []) for _ in range(batch)]
        for guided in (False, True):
            def run():
                return engine.generate_images(prompts, tokens, uncond=empty if guided else None,
                                              guidance_scale=2.0 if guided else 1.0,
                                              sampling=Sampling(temperature=1.0, seed=0))
            seconds, _ = median_seconds(run, device, warmup=1, repeats=2 if tiny else 3)
            key = f"batch{batch}_{'guided' if guided else 'unguided'}"
            result[f"{key}_seconds_per_call"] = seconds
            result[f"{key}_image_tokens_per_s"] = batch * tokens / seconds
            result[f"{key}_steps_per_s"] = tokens / seconds
            result[f"{key}_fraction_of_bound"] = tokens / seconds / steps_per_s_bound
        result[f"batch{batch}_guided_cost"] = (result[f"batch{batch}_guided_seconds_per_call"]
                                               / result[f"batch{batch}_unguided_seconds_per_call"])
    return result


# --- the run ------------------------------------------------------------------------------------------------

def stage_inputs(artifacts: Path) -> dict:
    """What the prepared data holds: image size, text vocabulary, codebook, grid, images per split."""
    prepared = json.loads((artifacts / "prepare" / "summary.json").read_text())
    encoded = json.loads((artifacts / "encode" / "summary.json").read_text())
    return {"image_size": prepared["image_size"], "text_vocab_size": prepared["vocab_size"],
            "records": prepared["validation"]["kept"], "codebook_size": encoded["codebook_size"],
            "grid": encoded["grid"], "images": encoded["images"]}


def lightning_pretrain(device: torch.device, tiny: bool, artifacts: Path | None) -> dict:
    """`arm pretrain` itself, in a fresh process as a user starts it: Lightning's Trainer with
    `pretrain.strategy=fsdp` (ModelParallelStrategy, FSDP2), bf16 and activation checkpointing, on the
    prepare, tokenizer and encode outputs in `artifacts` (copied; made anywhere: the GPU machine may lack
    the packaged text encoder the tokenizer stage trains with). The small preset's model on a GPU."""
    import shutil
    import subprocess
    import tempfile

    if artifacts is None or not (artifacts / "encode" / "summary.json").is_file():
        raise ValueError("the lightning section needs --artifacts: a folder with the prepare, tokenizer and "
                         "encode stages' outputs (e.g. artifacts/ after `dvc repro encode`)")
    work = Path(tempfile.mkdtemp(prefix="arm-gpu-pretrain-"))
    for stage in ("prepare", "tokenizer", "encode"):
        shutil.copytree(artifacts / stage, work / stage)
    steps = 8 if tiny else 300
    overrides = [f"run.artifacts_dir={work}", f"run.log_dir={work / 'logs'}", "pretrain.strategy=fsdp",
                 "pretrain.devices=1", "pretrain.activation_checkpointing=true", "pretrain.precision=bf16-mixed",
                 f"pretrain.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}", f"pretrain.max_steps={steps}",
                 f"pretrain.val_every_steps={steps}", "pretrain.sample_every_steps=0", "pretrain.warmup_steps=2"]
    if tiny:
        overrides += [f"pretrain.{k}={v}" for k, v in TINY.items()] + ["pretrain.batch_size=4",
                                                                        "pretrain.val_records_per_task=8"]
    command = [sys.executable, "-m", "arm", "pretrain", "--config",
               "configs/default.yaml" if tiny else "configs/small.yaml", *overrides]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"arm pretrain exited with {done.returncode}: {done.stderr[-1500:]}")
    metrics = json.loads((work / "pretrain" / "metrics.json").read_text())
    result = {"command": " ".join(command[1:]).replace(str(work), "WORK"), "inputs": stage_inputs(work),
              "preset_compile": load_config(ROOT / command[command.index("--config") + 1]).pretrain.compile, "steps": steps,
              "process_seconds": seconds, "train_minutes": metrics["train_minutes"],
              "steps_per_s": steps / (60 * metrics["train_minutes"]), "parameters": metrics["parameters"],
              "val_loss": metrics.get("val/loss")}
    shutil.rmtree(work, ignore_errors=True)
    return result


def decode_profile(device: torch.device, tiny: bool) -> dict:
    """Where a decoding step's time goes at batch 64, guided (not in the default sections): the
    profiler's top operators by self host time over 8 steps, and the sampling call alone."""
    from torch.profiler import ProfilerActivity, profile

    from arm.generate import Engine, Sampling, sample

    model, vocab, cfg = preset_model("configs/small.yaml", device, tiny)
    engine = Engine(model.to(torch.bfloat16).eval(), vocab)
    batch = 4 if tiny else 64
    prompts = [generation_prefix(vocab, list(range(10, 22))) for _ in range(batch)]
    empty = [generation_prefix(vocab, []) for _ in range(batch)]
    run = lambda n: engine.generate_images(prompts, n, uncond=empty, guidance_scale=2.0,  # noqa: E731
                                           sampling=Sampling(temperature=1.0, seed=0))
    run(2)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run(8)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    print(table)
    logits = torch.randn(batch, vocab.codebook_size)
    g = torch.Generator().manual_seed(0)
    host_s, _ = median_seconds(lambda: sample(logits, Sampling(temperature=1.0), g), torch.device("cpu"), 1, 5)
    on_device = logits.to(device)
    device_s, _ = median_seconds(lambda: torch.multinomial(on_device.softmax(-1), 1), device, 1, 5)
    return {"batch": batch, "sample_on_host_ms": 1000 * host_s, "multinomial_on_device_ms": 1000 * device_s,
            "top_ops_by_self_host_time": table.splitlines()[:20]}


def compiled(device: torch.device, tiny: bool, peak: float) -> dict:
    """The small preset's step and the 1B FSDP2 + checkpointing step with every block compiled."""
    return {"small": small_preset_step(device, tiny, peak, compiled=True),
            "fsdp_1b": fsdp_1b_step(device, tiny, peak, checkpointing=True, compiled=True)}


SECTIONS = ("ceilings", "small", "decode", "fsdp_1b", "preset_7b", "compiled")
EXTRA_SECTIONS = ("decode_profile", "lightning")


def machine(device: torch.device) -> dict:
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, cuda=torch.version.cuda)
    return info


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: the code path, not the speed")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS + EXTRA_SECTIONS, default=list(SECTIONS))
    parser.add_argument("--artifacts", type=Path, default=None,
                        help="prepare, tokenizer and encode outputs for the lightning section")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/gpu.json (gpu_tiny.json with --tiny)")
    args = parser.parse_args(argv)
    os.chdir(ROOT)                                   # the presets are read by their relative paths
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu --tiny for the code path")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    out = Path(args.out or ROOT / "benchmarks" / "results" / ("gpu_tiny.json" if args.tiny else "gpu.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {"device": str(device), "tiny": args.tiny, "machine": machine(device), "errors": {}}
    started = time.perf_counter()

    def save():
        result["wall_seconds"] = round(time.perf_counter() - started, 1)
        out.write_text(json.dumps(result, indent=2) + "\n")

    peak = bandwidth = None
    for section in args.sections:
        t0 = time.perf_counter()
        print(f"[{time.perf_counter() - started:6.1f} s] {section} ...", flush=True)
        try:
            if section == "ceilings":
                value = ceilings(device, args.tiny)
            else:
                if peak is None:  # a later section on its own still needs the ceilings
                    result["ceilings"] = ceilings(device, args.tiny)
                    peak, bandwidth = result["ceilings"]["bf16_matmul_tflops"], result["ceilings"]["copy_gb_per_s"]
                value = {"small": lambda: small_preset_step(device, args.tiny, peak),
                         "fsdp_1b": lambda: fsdp_1b(device, args.tiny, peak),
                         "preset_7b": lambda: preset_7b(device, args.tiny, peak),
                         "decode": lambda: decode(device, args.tiny, bandwidth),
                         "compiled": lambda: compiled(device, args.tiny, peak),
                         "decode_profile": lambda: decode_profile(device, args.tiny),
                         "lightning": lambda: lightning_pretrain(device, args.tiny, args.artifacts)}[section]()
            value["section_seconds"] = round(time.perf_counter() - t0, 1)
            result[section] = value
            if section == "ceilings":
                peak, bandwidth = value["bf16_matmul_tflops"], value["copy_gb_per_s"]
        except Exception as error:  # noqa: BLE001 - record it; the other sections still run
            traceback.print_exc()
            result["errors"][section] = f"{type(error).__name__}: {error}"[:2000]
        reset_memory(device)
        save()
        print(f"[{time.perf_counter() - started:6.1f} s] {section}: "
              + json.dumps(result.get(section, result["errors"].get(section)))[:600], flush=True)
    save()
    summary(result)
    print(f"wrote {out}")
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return result


def summary(result: dict) -> None:
    rows = []
    if "ceilings" in result:
        c = result["ceilings"]
        rows.append(("bf16 matmul TFLOP/s", f"{c['bf16_matmul_tflops']:.1f}"))
        rows.append(("copy GB/s", f"{c['copy_gb_per_s']:.0f}"))
    for name, r in [(n, result[n]) for n in ("small", "fsdp_1b") if n in result] + [
            (f"compiled {n}", r) for n, r in result.get("compiled", {}).items() if isinstance(r, dict)]:
        if True:
            rows.append((f"{name}: tokens/s, MFU, peak GB",
                         f"{r['tokens_per_s']:,.0f}, {r['mfu']:.3f}, {r['peak_memory_gb'] or 0:.1f}"))
    if "preset_7b" in result:
        r = result["preset_7b"]
        if r["fits_on_one_device"]:
            rows.append(("preset_7b: s/fwd+bwd, MFU, peak GB",
                         f"{r['ms_per_step'] / 1000:.2f}, {r['mfu']:.3f}, {r['peak_memory_gb'] or 0:.1f}"))
        else:
            rows.append(("preset_7b: projected peak GB", f"{r['projected_peak_memory_gb']:.1f}"))
    if "decode" in result:
        r = result["decode"]
        for key in sorted(k for k in r if k.endswith("_image_tokens_per_s")):
            rows.append((f"decode {key[:-len('_image_tokens_per_s')]}: image tok/s, of bound",
                         f"{r[key]:,.0f}, {r[key.replace('_image_tokens_per_s', '_fraction_of_bound')]:.3f}"))
    for key, error in result["errors"].items():
        rows.append((f"{key} FAILED", error[:100]))
    width = max(len(k) for k, _ in rows) if rows else 0
    for key, value in rows:
        print(f"{key:>{width}}: {value}")


if __name__ == "__main__":
    main()
