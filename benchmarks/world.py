"""World benchmark: rendering and verifier throughput on one core, import throughput on 10,000 records.

    python benchmarks/world.py                 # prints a table, writes benchmarks/results/world.json
    python benchmarks/world.py --scenes 500    # quicker

Targets (issue 2): rendering and the verifier each at least 1,000 images per second on one core.
"""

from __future__ import annotations

import argparse
import os

# One core: pin every BLAS/OpenMP pool before numpy loads.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import platform  # noqa: E402
import tempfile  # noqa: E402

from reporting import report  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def bench_render_and_parse(num_scenes: int) -> dict:
    from arm.world.render import render
    from arm.world.scene import sample_scene
    from arm.world.verifier import parse

    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, int(rng.integers(1, 4)), jitter=0.04) for _ in range(num_scenes)]
    render(scenes[0]), parse(render(scenes[0]))  # warm up (template cache)
    t = time.perf_counter()
    images = [render(s) for s in scenes]
    render_s = time.perf_counter() - t
    t = time.perf_counter()
    parsed = [parse(im) for im in images]
    parse_s = time.perf_counter() - t
    return {
        "scenes": num_scenes,
        "render_per_s": num_scenes / render_s,
        "verifier_per_s": num_scenes / parse_s,
        "verifier_exact": float(np.mean([p == s for p, s in zip(parsed, scenes)])),
    }


def bench_import(num_records: int) -> dict:
    from arm.data.importers import import_jsonl
    from arm.data.manifest import Limits, Report, read_manifest
    from arm.world.dataset import WorldSpec, generate_world

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        # ~5.5 records per scene: enough scenes for num_records.
        generate_world(src, WorldSpec(num_scenes=num_records // 5, num_eval_scenes=0, num_holdout_scenes=0))
        lines = (src / "manifest.jsonl").read_text().splitlines()[:num_records]
        (src / "manifest.jsonl").write_text("\n".join(lines) + "\n")
        t = time.perf_counter()
        report = import_jsonl(src / "manifest.jsonl", Path(tmp) / "out")
        import_s = time.perf_counter() - t
        t = time.perf_counter()
        read_manifest(Path(tmp) / "out" / "manifest.jsonl", Limits(), Report())
        validate_s = time.perf_counter() - t
    return {"records": report.kept, "import_records_per_s": report.kept / import_s,
            "validate_records_per_s": report.kept / validate_s}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=5000)
    parser.add_argument("--records", type=int, default=10000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "world.json"))
    args = parser.parse_args()
    result = {"machine": {"python": platform.python_version(), "processor": platform.machine(), "threads": 1},
              **bench_render_and_parse(args.scenes), **bench_import(args.records)}
    report(result, args.out)
    ok = result["render_per_s"] >= 1000 and result["verifier_per_s"] >= 1000
    print("targets (>= 1,000/s render and verifier):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
