"""Unified-model speed: decoding with and without the KV cache, the cost of batched classifier-free
guidance (and of editing at source scale 1, two rows, against 1.5, three rows), batch scaling, and
training throughput (fp32 and bf16 autocast) with its achieved FLOP/s against a plain matmul of the
same dtype measured in the same run (a CPU's practical peak, the denominator of our MFU).

    python benchmarks/generate.py                                   # the trained artifacts/pretrain
    python benchmarks/generate.py --model path --config configs/small.yaml --device cuda
    # a randomly initialised model of other sizes (config overrides):
    python benchmarks/generate.py --model none --out benchmarks/results/generate_d256.json pretrain.hidden_size=256 pretrain.intermediate_size=768

Prints a table and writes benchmarks/results/generate.json. Without a trained model it measures a
randomly initialised one of the config's sizes (same architecture, same cost).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from reporting import report


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, repeats: int = 1) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    _sync(device)
    return 2 * n**3 * count / (time.perf_counter() - start)


def training_flops_per_token(model, seq_len: int) -> float:
    """6 N (forward + backward of every matmul weight, the output head included, the input embedding
    lookup not) + the attention scores and values, 12 L d T (Kaplan et al. / PaLM's MFU accounting)."""
    cfg = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def decode_without_cache(model, prompt: torch.Tensor, num_tokens: int, lo: int, hi: int) -> torch.Tensor:
    """The reference a KV cache replaces: a full forward over the whole sequence for every new token."""
    ids = prompt
    for _ in range(num_tokens):
        logits = model(input_ids=ids, use_cache=False).logits[:, -1, lo:hi]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True) + lo], dim=1)
    return ids[:, prompt.shape[1]:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="artifacts/pretrain")
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "generate.json"))
    parser.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    args = parser.parse_args()

    from arm.config import load_config
    from arm.generate import Engine, Sampling
    from arm.model.backbone import build_causal_lm
    from arm.model.train import next_token_loss
    from arm.model.vocab import Vocab
    from arm.model.saved import load_unified_model
    from arm.model.stage import backbone_kwargs
    from arm.text_tokenizer import SPECIAL_TOKENS

    device = torch.device(args.device)
    cfg = load_config(args.config, args.overrides)
    if (Path(args.model) / "vocab.json").exists():
        model, info, _ = load_unified_model(args.model)
        vocab, grid, source = info.vocab(), info.grid, args.model
    else:
        text_size, codebook, grid = cfg.prepare.vocab_size, 1, cfg.tokenizer.grid
        for level in cfg.tokenizer.fsq_levels:
            codebook *= level
        vocab = Vocab(text_size, codebook, {t: text_size - len(SPECIAL_TOKENS) + i for i, t in enumerate(SPECIAL_TOKENS)})
        model, source = build_causal_lm(**backbone_kwargs(cfg, vocab, grid)), "random init"
    model = model.to(device).eval()
    num_tokens, prompt_len = grid * grid, 12
    lo, hi = vocab.image_offset, vocab.image_offset + vocab.codebook_size
    engine = Engine(model, vocab)
    params = sum(p.numel() for p in model.parameters())
    result = {"model": source, "parameters": params, "device": str(device), "threads": torch.get_num_threads(),
              "python": platform.python_version(), "image_tokens": num_tokens}

    def prompts(b):
        return [[vocab["<|t2i|>"]] + [(7 * i + j) % 200 for j in range(prompt_len)] + [vocab["<|soi|>"]] for i in range(b)]

    # KV cache vs a full forward per token, batch 1 and 16, greedy.
    for b in (1, 16):
        ids = torch.tensor(prompts(b), device=device)
        with torch.no_grad():
            no_cache = _timed(lambda: decode_without_cache(model, ids, num_tokens, lo, hi), device)
        cached = _timed(lambda: engine.generate_images(prompts(b), num_tokens, sampling=Sampling(temperature=0.0)), device)
        result[f"tokens_per_s_no_cache_batch{b}"] = b * num_tokens / no_cache
        result[f"tokens_per_s_kv_cache_batch{b}"] = b * num_tokens / cached
        result[f"kv_cache_speedup_batch{b}"] = no_cache / cached

    # Batch scaling, unguided and guided (cond + uncond rows in one batch), sampled.
    for b in args.batches:
        plain = _timed(lambda: engine.generate_images(prompts(b), num_tokens, sampling=Sampling(seed=0)), device)
        uncond = [[vocab["<|t2i|>"], vocab["<|soi|>"]]] * b
        guided = _timed(lambda: engine.generate_images(prompts(b), num_tokens, uncond=uncond, guidance_scale=3.0,
                                                       sampling=Sampling(seed=0)), device)
        result[f"images_per_s_batch{b}"] = b / plain
        result[f"image_tokens_per_s_batch{b}"] = b * num_tokens / plain
        result[f"guided_images_per_s_batch{b}"] = b / guided
        result[f"guidance_cost_ratio_batch{b}"] = guided / plain

    # Editing's two guidance scales: at source scale != 1 each edit runs three rows (cond, uncond,
    # source-only); at source scale 1 (the default's evaluation) the unconditional row drops out.
    edits = 16
    source = [lo + (5 * k) % (hi - lo) for k in range(num_tokens)]
    edit_cond = [[vocab["<|edit|>"], vocab["<|soi|>"], *source, vocab["<|eoi|>"]] + [(7 * i + j) % 200 for j in range(8)]
                 + [vocab["<|soi|>"]] for i in range(edits)]
    edit_src = [[vocab["<|edit|>"], vocab["<|soi|>"], *source, vocab["<|eoi|>"], vocab["<|soi|>"]]] * edits
    edit_uncond = [[vocab["<|edit|>"], vocab["<|soi|>"]]] * edits
    for image_scale in (1.5, 1.0):
        seconds = _timed(lambda: engine.generate_images(edit_cond, num_tokens, uncond=edit_uncond, source_only=edit_src,
                                                        guidance_scale=2.5, image_guidance_scale=image_scale,
                                                        sampling=Sampling(seed=0)), device)
        result[f"edits_per_s_batch{edits}_source_scale{image_scale}"] = edits / seconds
    result[f"edit_cost_ratio_source_scale1_vs_1.5_batch{edits}"] = (
        result[f"edits_per_s_batch{edits}_source_scale1.5"] / result[f"edits_per_s_batch{edits}_source_scale1.0"])

    # Training throughput: forward, backward and AdamW on a batch like the task mix's (length ~90), in fp32
    # and under bf16 autocast (what `pretrain.precision: bf16-mixed` runs), each against a matmul of its dtype.
    p = cfg.pretrain
    seq_len = 90
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab.size, (p.batch_size, seq_len), device=device)
    result.update({"train_batch": p.batch_size, "train_seq_len": seq_len, "train_precision": p.precision})
    for dtype, suffix in ((torch.float32, ""), (torch.bfloat16, "_bf16")):
        def train_step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                logits = model(input_ids=ids).logits
            next_token_loss(logits, ids).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        seconds = _timed(train_step, device, repeats=args.train_steps)
        tokens_per_s = p.batch_size * seq_len / seconds
        achieved = tokens_per_s * training_flops_per_token(model, seq_len)
        peak = matmul_flops(device, dtype)
        result.update({f"train_tokens_per_s{suffix}": tokens_per_s, f"train_flops_per_s{suffix}": achieved,
                       f"matmul_flops_per_s{suffix}": peak, f"mfu_vs_matmul{suffix}": achieved / peak})
    result["train_bf16_speedup"] = result["train_tokens_per_s_bf16"] / result["train_tokens_per_s"]

    report(result, args.out)


if __name__ == "__main__":
    main()
