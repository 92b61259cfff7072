"""The Bento under load, on loopback: generation requests per second and p50 / p95 latency at
concurrency 1, 4 and 16, with adaptive batching on and off, and the server's memory before and after
500 requests.

    python benchmarks/serve.py                       # serves arm:latest (run `arm package` first)
    python benchmarks/serve.py --bento arm:<version> --requests 200

Adaptive batching off means ARM_MAX_BATCH=1: every request is its own forward. First, side by side,
the engine alone: the Bento's model loaded in this process, `Pipeline.generate` on the same prompts and
seeds. Prints a table and writes benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def server_rss_mb(proc: subprocess.Popen) -> float:
    import psutil

    root = psutil.Process(proc.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def load(url: str, requests: int, concurrency: int) -> dict:
    import httpx

    def one(i: int) -> float:
        start = time.perf_counter()
        r = httpx.post(f"{url}/generate", json={"prompt": f"a red circle at the center {i % 8}", "seed": i}, timeout=600)
        r.raise_for_status()
        return time.perf_counter() - start

    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - began
    return {"requests_per_s": requests / wall, "p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "p95_ms": 1000 * float(np.percentile(latencies, 95))}


def engine_alone(requests: int) -> dict:
    """The same work without the service: the Bento's own model and tokenizer loaded in this process,
    `Pipeline.generate` (the engine, then codes to pixels) on the same prompts and seeds, one request at
    a time, then 16 at once (what adaptive batching can at best make of concurrency 16)."""
    import bentoml

    from arm.pipeline import Pipeline

    folder = Path(bentoml.models.get(model_tag()).path)
    pipe = Pipeline.load(folder / "model", folder / "tokenizer", batch_size=64)
    prompts = [f"a red circle at the center {i % 8}" for i in range(requests)]
    pipe.generate(prompts[:2], seed=0)  # warm-up
    latencies = []
    for i, prompt in enumerate(prompts):
        start = time.perf_counter()
        pipe.generate([prompt], seed=i)
        latencies.append(time.perf_counter() - start)
    start = time.perf_counter()
    for a in range(0, requests, 16):
        pipe.generate(prompts[a:a + 16], seed=list(range(a, min(a + 16, requests))))
    batched = time.perf_counter() - start
    return {"engine/c1/requests_per_s": requests / sum(latencies),
            "engine/c1/p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "engine/batch16/requests_per_s": requests / batched}


def model_tag() -> str:
    """The model tag the Bento serves: ARM_MODEL_TAG if set, else the service default (bentos/service.py)."""
    return os.environ.get("ARM_MODEL_TAG", "arm-unified:latest")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bento", default="arm:latest")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--memory-requests", type=int, default=500)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from reporting import report

    result: dict = {"bento": args.bento, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                    "requests_per_level": args.requests}
    from arm.serving import local_server

    result.update(engine_alone(args.requests))   # before any server: nothing else on the CPU
    for batching, max_batch in (("on", 32), ("off", 1)):
        with local_server(args.bento, env={"ARM_MAX_BATCH": str(max_batch)}, timeout=300) as (url, proc):
            load(url, 4, 1)  # warm-up
            for concurrency in (1, 4, 16):
                row = load(url, args.requests, concurrency)
                for key, value in row.items():
                    result[f"batching_{batching}/c{concurrency}/{key}"] = value
                print(f"batching {batching:>3}, concurrency {concurrency:>2}: {row['requests_per_s']:.2f} req/s, "
                      f"p50 {row['p50_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms", flush=True)
            if batching == "on":
                before = server_rss_mb(proc)
                load(url, args.memory_requests, 16)
                after = server_rss_mb(proc)
                result.update({"memory_mb_before": before, "memory_mb_after": after,
                               "memory_requests": args.memory_requests})
    for c in (1, 4, 16):
        result[f"batching_speedup/c{c}"] = (result[f"batching_on/c{c}/requests_per_s"]
                                            / result[f"batching_off/c{c}/requests_per_s"])
    # What the service adds: its p50 against the engine's own time for the same request, and how much of
    # concurrency 16 adaptive batching turns into throughput.
    result["service_over_engine_p50/c1"] = result["batching_on/c1/p50_ms"] / result["engine/c1/p50_ms"]
    result["throughput_c16_over_c1"] = result["batching_on/c16/requests_per_s"] / result["batching_on/c1/requests_per_s"]
    report(result, args.out, width=40)


if __name__ == "__main__":
    main()
