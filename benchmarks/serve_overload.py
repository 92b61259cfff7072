"""The Bento overloaded, on loopback: 64 clients send generation requests back to back for a minute,
twice ARM_MAX_CONCURRENCY (32). Past the limit the service answers 503 with Retry-After at once instead
of queueing; the server's memory (all its processes) is sampled every second and must stay bounded.

    python benchmarks/serve_overload.py                       # serves arm:latest (run `arm package` first)
    python benchmarks/serve_overload.py --bento arm:<version> --seconds 60 --clients 64

A client that gets a 503 waits its Retry-After (at most `--max-wait` s) and sends again, as a polite
client does. Prints a table and writes benchmarks/results/serve_overload.json: answers by status,
p50 / p95 latency of the served requests, whether every 503 carried Retry-After, and the memory at
start, at its peak and at the end, with its growth over the second half of the run (what a leak or
an unbounded queue would show).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its children (the `bentoml serve` supervisor and workers)."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.Error:  # a worker restarting between listing and reading
            pass
    return total / 2**20


def client(url: str, deadline: float, seed: int, max_wait: float, log: list) -> None:
    """Generation requests back to back until `deadline`; each answer logged as (status, seconds,
    Retry-After or None)."""
    import httpx

    with httpx.Client(timeout=600) as http:
        i = 0
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                r = http.post(f"{url}/generate", json={"prompt": f"a red circle at the center {i % 8}", "seed": seed + i})
                status, retry_after = r.status_code, r.headers.get("retry-after")
            except httpx.HTTPError as e:
                status, retry_after = type(e).__name__, None
            log.append((status, time.perf_counter() - start, retry_after))
            i += 1
            if status == 503:
                time.sleep(min(max_wait, float(retry_after or 1)))


def sample_memory(pid: int, until: float, samples: list) -> None:
    while time.monotonic() < until:
        samples.append((time.monotonic(), tree_rss_mb(pid)))
        time.sleep(1)


def summarise(log: list, samples: list, seconds: float) -> dict:
    statuses = Counter(str(status) for status, _, _ in log)
    served = [t for status, t, _ in log if status == 200]
    refused = [(status, retry_after) for status, _, retry_after in log if status == 503]
    memory = [mb for _, mb in samples]
    half = [mb for t, mb in samples if t >= samples[0][0] + seconds / 2]
    return {
        "requests": len(log), **{f"status_{k}": v for k, v in sorted(statuses.items())},
        "served_per_s": len(served) / seconds,
        "served_p50_ms": 1000 * float(np.percentile(served, 50)) if served else None,
        "served_p95_ms": 1000 * float(np.percentile(served, 95)) if served else None,
        "every_503_has_retry_after": all(retry_after for _, retry_after in refused),
        "memory_mb_start": memory[0], "memory_mb_peak": max(memory), "memory_mb_end": memory[-1],
        "memory_mb_growth_second_half": (half[-1] - half[0]) if len(half) > 1 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bento", default="arm:latest")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-wait", type=float, default=2.0, help="longest a client honours Retry-After")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_overload.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from reporting import report

    from arm.machine import cpu_description
    from arm.serving import local_server

    result: dict = {"bento": args.bento, "machine": cpu_description(),  # measured before the server starts
                    "clients": args.clients, "seconds": args.seconds}
    with local_server(args.bento, timeout=300) as (url, proc):
        import httpx

        httpx.post(f"{url}/generate", json={"prompt": "a red circle"}, timeout=600).raise_for_status()  # warm-up
        deadline = time.monotonic() + args.seconds
        log: list = []
        samples: list = []
        threads = [threading.Thread(target=client, args=(url, deadline, 1000 * k, args.max_wait, log))
                   for k in range(args.clients)]
        threads.append(threading.Thread(target=sample_memory, args=(proc.pid, deadline, samples)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        result.update(summarise(log, samples, args.seconds))
        result["answers_after"] = httpx.get(f"{url}/livez", timeout=30).status_code
    report(result, args.out, width=30)


if __name__ == "__main__":
    main()
