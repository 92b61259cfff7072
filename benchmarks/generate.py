"""Unified-model speed: the decoders side by side (the library's forward over its `DynamicCache`, the
static-cache decoder, and speculative Jacobi decoding on top of it) at batch 1, 16 and 64, unguided and
guided, with each decoder's world scores on a slice of the test split paired against the library's;
decoding without a KV cache, the cost of editing at source scale 1 (two rows) against 1.5 (three), and
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

from arm.machine import cpu_description


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


def _rate(fn, device, min_seconds: float = 2.0) -> float:
    """Seconds per call: one warm-up call, then as many calls as fill `min_seconds`."""
    fn()
    _sync(device)
    count, start = 0, time.perf_counter()
    while count == 0 or time.perf_counter() - start < min_seconds:
        fn()
        count += 1
    _sync(device)
    return (time.perf_counter() - start) / count


def decoding_variants(args, model, vocab, device, num_tokens: int) -> dict:
    """Images/s at each batch size, unguided and guided, for the library's forward (`DynamicCache`), the
    static decoder, and the static decoder with Jacobi windows; the forward steps each takes per image;
    the per-token time against the arithmetic; and each decoder's world scores on a slice of the test
    split, paired against the library's."""
    from arm.evaluate.samples import SplitData
    from arm.generate import Engine, Sampling
    from arm.model.saved import load_sampling
    from arm.pipeline import Pipeline

    pipe = Pipeline.load(args.model, args.tokenizer, device=str(device), batch_size=64)
    own = load_sampling(args.model)
    data = SplitData(args.prepare, "test")
    texts = [r["text"] for r in data.task("t2i", None)]
    variants = {"library": (False, 0, False), "static": (True, 0, False)}
    variants.update({f"static+jacobi{w}": (True, w, False) for w in args.windows})
    if args.compile:
        variants["compiled"] = (True, 0, True)
        variants.update({f"compiled+jacobi{w}": (True, w, True) for w in args.windows})
    out: dict = {"sampling": {"temperature": own.temperature, "generation_guidance": own.generation_guidance}}
    for name, (static, window, compile) in variants.items():
        engine = Engine(pipe.model, pipe.vocab, static_cache=static, compile=compile)
        for b in args.batches:
            cond = [pipe.generation_prompt(pipe.text_ids(t)) for t in (texts * b)[:b]]
            uncond = [pipe.generation_prompt([])] * b
            sampling = [Sampling(own.temperature, own.top_k, own.top_p, seed=i) for i in range(b)]

            def plain():
                engine.generate_images(cond, num_tokens, sampling=sampling, window=window)

            def guided():
                engine.generate_images(cond, num_tokens, uncond=uncond, guidance_scale=own.generation_guidance,
                                       sampling=sampling, window=window)

            plain_s = _rate(plain, device)
            plain_steps = engine.decode_steps
            guided_s = _rate(guided, device)
            out[f"{name}/images_per_s_batch{b}"] = b / plain_s
            out[f"{name}/guided_images_per_s_batch{b}"] = b / guided_s
            out[f"{name}/guidance_cost_ratio_batch{b}"] = guided_s / plain_s
            out[f"{name}/ms_per_token_batch{b}"] = 1e3 * plain_s / (b * num_tokens)
            out[f"{name}/steps_per_image_batch{b}"] = plain_steps + 1      # the prefill's code included
            print(f"{name:>18} batch {b:>3}: {b / plain_s:8.2f} images/s, guided {b / guided_s:8.2f} "
                  f"({guided_s / plain_s:.2f}x), {plain_steps + 1} steps", flush=True)
    # The arithmetic of one token at batch 1: 2 FLOPs per weight of every matmul (embedding lookup not),
    # plus attention over about half the prompt + image; its time at the measured matmul speed.
    cfg = model.config
    weights = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and p.dim() == 2)
    context = len(pipe.generation_prompt(pipe.text_ids(texts[0]))) + num_tokens // 2
    flops = 2 * weights + 4 * cfg.num_hidden_layers * cfg.hidden_size * context
    peak = matmul_flops(device, torch.float32)
    out.update({"flops_per_token": flops, "arithmetic_ms_per_token_at_matmul_speed": 1e3 * flops / peak,
                "matmul_flops_per_s_decode_run": peak})
    if args.score_records:  # compiled steps sample inside the graph too: every variant is scored
        out.update(decoder_scores(pipe, own, data, variants, args.score_records))
    return out


def decoder_scores(pipe, own, data, variants: dict, records: int) -> dict:
    """Generation accuracy and edit G_O of each decoder on the first `records` test prompts and edits
    (image i drawn with seed i), paired with the library decoder's on the same items."""
    import dataclasses

    from arm.evaluate.samples import EvalSettings, Samples
    from arm.evaluate.stats import paired_difference_ci, record_of
    from arm.evaluate.world import evaluate_editing, evaluate_generation
    from arm.generate import Engine

    scored: dict[str, dict[str, dict]] = {}
    for name, (static, window, compile) in variants.items():
        pipe.engine = Engine(pipe.model, pipe.vocab, static_cache=static, compile=compile)
        settings = EvalSettings(limit=records, samples_per_prompt=1, seed=0,
                                sampling=dataclasses.replace(own, jacobi_window=window))
        samples = Samples()
        evaluate_generation(pipe, data, settings, samples)
        evaluate_editing(pipe, data, settings, samples)
        scored[name] = {}
        for s in samples.scores:
            if s["metric"] in ("gen/acc", "edit/g_o"):
                scored[name].setdefault(s["metric"], {})[s["item"]] = s["value"]
    out = {}
    for name in variants:
        for metric, values in scored[name].items():
            reference = scored["library"][metric]
            items = sorted(values)
            a, b = [reference[i] for i in items], [values[i] for i in items]
            d = paired_difference_ci(a, b, clusters=[record_of(i) for i in items])
            out[f"{name}/{metric}"] = sum(b) / len(b)
            if name != "library":
                out[f"{name}/{metric}_minus_library"] = {"delta": d.value, "low": d.low, "high": d.high}
                out[f"{name}/{metric}_identical_to_library"] = sum(x == y for x, y in zip(a, b)) / len(a)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="artifacts/pretrain")
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--windows", type=int, nargs="+", default=[8, 16], help="Jacobi windows to measure")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the torch.compile'd decoder (each batch size compiles once, untimed)")
    parser.add_argument("--tokenizer", default="artifacts/tokenizer")
    parser.add_argument("--prepare", default="artifacts/prepare")
    parser.add_argument("--score-records", type=int, default=200,
                        help="test records per task scored by each decoder (0: timings only)")
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
              "machine": cpu_description() if device.type == "cpu" else torch.cuda.get_device_name(device),
              "python": platform.python_version(), "image_tokens": num_tokens}

    def prompts(b):
        return [[vocab["<|t2i|>"]] + [(7 * i + j) % 200 for j in range(prompt_len)] + [vocab["<|soi|>"]] for i in range(b)]

    # KV cache vs a full forward per token, batch 1, greedy.
    ids = torch.tensor(prompts(1), device=device)
    with torch.no_grad():
        no_cache = _timed(lambda: decode_without_cache(model, ids, num_tokens, lo, hi), device)
    cached = _timed(lambda: engine.generate_images(prompts(1), num_tokens, sampling=Sampling(temperature=0.0)), device)
    result.update({"tokens_per_s_no_cache_batch1": num_tokens / no_cache, "tokens_per_s_kv_cache_batch1": num_tokens / cached,
                   "kv_cache_speedup_batch1": no_cache / cached})

    # The decoders, on the test split's own prompts at the model's own sampling (its sampling.json).
    if source == args.model:
        result.update(decoding_variants(args, model, vocab, device, num_tokens))

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
