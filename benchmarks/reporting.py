"""What every benchmark ends with: the figures printed as a table and written as JSON."""

from __future__ import annotations

import json
from pathlib import Path


def report(result: dict, out: str | Path, skip: tuple[str, ...] = ("config", "machine"), width: int = 34) -> None:
    for key, value in result.items():
        if key not in skip:
            print(f"{key:>{width}}: {value:,.3f}" if isinstance(value, float) else f"{key:>{width}}: {value}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
