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
import os
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
    """`requests` generation requests from `concurrency` clients at once, each sending its next request
    when its last is answered, over kept-alive connections. The clients are aiohttp tasks in one event
    loop: about 0.5 ms of CPU a request, where httpx threads took 9 ms of the two cores the server runs
    on. Also the mean number of requests per forward, from the service's /metrics."""
    import asyncio

    import aiohttp

    async def run() -> tuple[list[float], float]:
        latencies: list[float] = []
        todo = iter(range(requests))
        async with aiohttp.ClientSession(base_url=url, timeout=aiohttp.ClientTimeout(total=600)) as session:
            async def client() -> None:
                for i in todo:
                    start = time.perf_counter()
                    async with session.post("/generate", json={"prompt": f"a red circle at the center {i % 8}",
                                                               "seed": i}) as answer:
                        answer.raise_for_status()
                        await answer.read()
                    latencies.append(time.perf_counter() - start)

            began = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            return latencies, time.perf_counter() - began

    before = batch_counts(url)
    latencies, wall = asyncio.run(run())
    after = batch_counts(url)
    batches = after[1] - before[1]
    return {"requests_per_s": requests / wall, "p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "p95_ms": 1000 * float(np.percentile(latencies, 95)),
            "mean_batch": (after[0] - before[0]) / batches if batches else float("nan")}


def batch_counts(url: str) -> tuple[float, float]:
    """(requests, forwards) the model service has batched so far: its adaptive batch size histogram."""
    import httpx

    total = {"sum": 0.0, "count": 0.0}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        for part in total:
            if line.startswith(f"bentoml_service_adaptive_batch_size_{part}{{"):
                total[part] += float(line.split()[-1])
    return total["sum"], total["count"]


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

    from arm.machine import cpu_description
    from arm.serving import local_server

    result: dict = {"bento": args.bento, "machine": cpu_description(),  # measured before the server starts
                    "requests_per_level": args.requests}

    result.update(engine_alone(args.requests))   # before any server: nothing else on the CPU
    for batching, max_batch in (("on", 32), ("off", 1)):
        with local_server(args.bento, env={"ARM_MAX_BATCH": str(max_batch)}, timeout=300) as (url, proc):
            load(url, 4, 1)  # warm-up
            for concurrency in (1, 4, 16):
                row = load(url, args.requests, concurrency)
                for key, value in row.items():
                    result[f"batching_{batching}/c{concurrency}/{key}"] = value
                print(f"batching {batching:>3}, concurrency {concurrency:>2}: {row['requests_per_s']:.2f} req/s, "
                      f"p50 {row['p50_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms, {row['mean_batch']:.1f} requests "
                      "a forward", flush=True)
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
    # The most batching can give on this machine: the engine's own batch of 16 against its batch of 1.
    result["engine_batch16_over_c1"] = result["engine/batch16/requests_per_s"] / result["engine/c1/requests_per_s"]
    report(result, args.out, width=40)


if __name__ == "__main__":
    main()
