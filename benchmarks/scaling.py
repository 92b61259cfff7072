"""The 7B run on paper, checked against the GPU check's measurements (`benchmarks/results/gpu.json`).

    python benchmarks/scaling.py                    # writes benchmarks/results/scaling.json
    python benchmarks/scaling.py --link-gb-per-s 50 --seq-len 1024

Memory per GPU under FSDP2 (each term in bytes; P parameters, W processes, b sequences of T tokens per
process per micro-batch, L blocks of width h, MLP width i, key/value width kv, V ids):

    sharded state        4P/W parameters (fp32) + 4P/W gradients (fp32) + 8P/W AdamW moments (fp32)
    gathered parameters  2 P_root (embeddings, head, final norm: gathered for the whole step)
                         + 2 x 2 P_block (a block and the next, prefetched, in bf16)
                         + 4 P_block (one block's gradients in fp32 for the reduction)
    activations          without checkpointing: L b T (24h + 4kv + 8i), counted from the tensors a
                         Qwen2 block keeps for backward in bf16 (its two RMSNorms keep fp32 copies);
                         with it: L b T 2h (each block's input) + b T (24h + 4kv + 8i) (one block recomputed)
    logits               8 V per target-predicting position (fp32 log-probabilities and their gradient)

The same terms at W = 1 are set against what `benchmarks/gpu.py` measured on one device (no optimizer
state for the 7B forward and backward). Step time is projected two ways: compute at the measured model
FLOP utilisation, and FSDP2's traffic (each micro-batch gathers every block in bf16 for forward and again
for backward, and reduce-scatters fp32 gradients) at an assumed per-GPU network bandwidth, which this
project has not measured: the slower of the two bounds the step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

GIB = 2**30


def shape(model) -> dict:
    """The sizes the memory terms need, read off a model (meta tensors are enough)."""
    cfg = model.config
    blocks = model.model.layers
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    block = sum(p.numel() for p in blocks[0].parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"parameters": total, "block_parameters": block, "root_parameters": total - block * len(blocks),
            "layers": len(blocks), "hidden": cfg.hidden_size, "mlp": cfg.intermediate_size,
            "kv": cfg.num_key_value_heads * head_dim, "vocab": cfg.vocab_size}


def activation_bytes_per_token_block(s: dict) -> int:
    return 24 * s["hidden"] + 4 * s["kv"] + 8 * s["mlp"]


def memory(s: dict, processes: int, seqs: int, seq_len: int, checkpointing: bool, optimizer: bool) -> dict:
    """Bytes per GPU, by term (see the module docstring); targets are half the tokens (t2i's layout)."""
    p, w, tokens = s["parameters"], processes, seqs * seq_len
    per_block = activation_bytes_per_token_block(s) * tokens
    terms = {
        "parameters_fp32": 4 * p / w,
        "gradients_fp32": 4 * p / w,
        "adamw_moments_fp32": 8 * p / w if optimizer else 0,
        "gathered_bf16": 2 * s["root_parameters"] + 4 * s["block_parameters"],
        "block_gradients_fp32": 4 * s["block_parameters"],
        "activations": (s["layers"] * tokens * 2 * s["hidden"] + per_block) if checkpointing
        else s["layers"] * per_block,
        "logits": 8 * s["vocab"] * tokens // 2,
    }
    terms["total"] = sum(terms.values())
    return {k: v / GIB for k, v in terms.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpu", default=str(ROOT / "benchmarks" / "results" / "gpu.json"))
    parser.add_argument("--preset", default="configs/arm-7b.yaml")
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence (the measured length)")
    parser.add_argument("--link-gb-per-s", type=float, default=50.0,
                        help="assumed network bandwidth per GPU across nodes (400 Gb/s InfiniBand per GPU)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scaling.json"))
    args = parser.parse_args()

    import torch

    import gpu as check
    from arm.config import load_config

    measured = json.loads(Path(args.gpu).read_text())
    cfg = load_config(ROOT / args.preset)
    p = cfg.pretrain
    meta = torch.device("meta")
    s7 = shape(check.preset_model(str(ROOT / args.preset), meta, False,
                                  text_size=check.QWEN25_TOKENIZER + len(check.SPECIAL_TOKENS))[0])
    s1 = shape(check.preset_model(str(ROOT / "configs" / "small.yaml"), meta, False, overrides=check.ONE_B)[0])

    # The terms at one process against the measured peaks.
    m7, m1 = measured["preset_7b"], measured["fsdp_1b"]
    checks = {
        "7b_forward_backward_checkpointed": (memory(s7, 1, m7["batch"], m7["seq_len"], True, False)["total"],
                                             m7["peak_memory_gb"]),
        "1b_step_checkpointed": (memory(s1, 1, m1["batch"], m1["seq_len"], True, True)["total"],
                                 m1["peak_memory_gb"]),
        "1b_step_not_checkpointed": (memory(s1, 1, m1["batch"], m1["seq_len"], False, True)["total"],
                                     m1["without_checkpointing"]["peak_memory_gb"]),
    }
    result: dict = {"preset": args.preset, "gpu_run": measured["machine"].get("gpu"), "seq_len": args.seq_len,
                    "model": s7, "activation_bytes_per_token_per_block": activation_bytes_per_token_block(s7),
                    "check_against_one_device": {k: {"predicted_gib": a, "measured_gib": b, "ratio": a / b}
                                                 for k, (a, b) in checks.items()}}

    processes = p.devices * p.num_nodes
    micro = p.batch_size // processes
    result["processes"], result["sequences_per_process_per_micro_batch"] = processes, micro
    result["accumulate_grad_batches"] = p.accumulate_grad_batches
    result["memory_per_gpu_gib"] = {"checkpointed": memory(s7, processes, micro, args.seq_len, True, True),
                                    "not_checkpointed": memory(s7, processes, micro, args.seq_len, False, True)}

    # Compute: FLOPs per token from the measured 7B step, at the measured MFU of the 7B and 1.2B runs.
    flops_per_token = m7["model_tflops_per_step"] * 1e12 / m7["tokens_per_step"]
    peak = measured["ceilings"]["bf16_matmul_tflops"] * 1e12
    tokens_per_step = p.batch_size * p.accumulate_grad_batches * args.seq_len
    compute = {}
    for name, mfu in (("7b_measured_mfu", m7["mfu"]), ("1b_checkpointed_mfu", m1["mfu"])):
        seconds = tokens_per_step * flops_per_token / (mfu * peak * processes)
        compute[name] = {"mfu": mfu, "seconds_per_step": seconds,
                         "tokens_per_day_billions": tokens_per_step / seconds * 86400 / 1e9}
    # Traffic: every micro-batch gathers all parameters twice in bf16 and reduce-scatters fp32
    # gradients; a ring moves (W-1)/W of each whole tensor through every GPU.
    ring = (processes - 1) / processes
    bytes_per_micro = ring * s7["parameters"] * (2 + 2 + 4)
    traffic_s = p.accumulate_grad_batches * bytes_per_micro / (args.link_gb_per_s * 1e9)
    result["step"] = {
        "tokens_per_step": tokens_per_step, "flops_per_token": flops_per_token,
        "compute": compute,
        "traffic_gb_per_gpu_per_step": p.accumulate_grad_batches * bytes_per_micro / 1e9,
        "traffic_seconds_per_step_at_link": traffic_s, "link_gb_per_s_assumed": args.link_gb_per_s,
        "bound_seconds_per_step": max(traffic_s, compute["7b_measured_mfu"]["seconds_per_step"]),
    }
    result["step"]["bound_tokens_per_day_billions"] = tokens_per_step / result["step"]["bound_seconds_per_step"] * 86400 / 1e9
    result["step"]["steps_to_max_steps_days"] = p.max_steps * result["step"]["bound_seconds_per_step"] / 86400

    for key, (predicted, got) in checks.items():
        print(f"{key:>34}: predicted {predicted:6.1f} GiB, measured {got:6.1f} GiB ({predicted / got:.2f}x)")
    for kind, terms in result["memory_per_gpu_gib"].items():
        print(f"{'per GPU, ' + kind:>34}: " + ", ".join(f"{k} {v:.2f}" for k, v in terms.items()))
    st = result["step"]
    print(f"{'tokens per optimizer step':>34}: {tokens_per_step:,}")
    for name, c in compute.items():
        print(f"{'compute at ' + name:>34}: {c['seconds_per_step']:.2f} s/step, {c['tokens_per_day_billions']:.1f}B tokens/day")
    print(f"{'FSDP2 traffic at assumed link':>34}: {st['traffic_gb_per_gpu_per_step']:.0f} GB/GPU/step, "
          f"{st['traffic_seconds_per_step_at_link']:.2f} s at {args.link_gb_per_s:.0f} GB/s")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
