"""The data manifest: JSON Lines, one example per line, image paths relative to the manifest.

    {"id", "task": "caption" | "vqa" | "t2i" | "edit" | "text", "image", "source_image", "target_image",
     "text", "answer", "split", "meta"}

`validate_record` turns one raw line into a clean record or raises `Skip` with a reason; callers count
skips by reason in a report and go on, so a bad record in a user's data never stops a run with a
traceback and never silently disappears.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> validate_record({"id": "q1", "task": "text", "text": "what color is a lime?", "answer": "green"}, root, Limits())
{'id': 'q1', 'task': 'text', 'text': 'what color is a lime?', 'answer': 'green', 'meta': {}}
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

TASKS = ("caption", "vqa", "t2i", "edit", "text")
SPLITS = ("train", "val", "test", "holdout")
IMAGE_FIELDS = ("image", "source_image", "target_image")
TEXT_FIELDS = ("text", "answer")
REQUIRED = {
    "caption": ("image", "text"),
    "vqa": ("image", "text", "answer"),
    "t2i": ("image", "text"),
    "edit": ("source_image", "target_image", "text"),
    "text": ("text", "answer"),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# Skip reasons, as they appear in reports.
BAD_JSON = "bad_json"
BAD_UTF8 = "bad_utf8"
WRONG_TYPE = "wrong_type"
MISSING_FIELD = "missing_field"
UNKNOWN_TASK = "unknown_task"
EMPTY_TEXT = "empty_text"
TEXT_TOO_LONG = "text_too_long"
MISSING_FILE = "missing_file"
OUTSIDE_ROOT = "path_outside_root"
UNREADABLE_IMAGE = "unreadable_image"
IMAGE_TOO_LARGE = "image_too_large"
DUPLICATE_ID = "duplicate_id"
REASONS = (BAD_JSON, BAD_UTF8, WRONG_TYPE, MISSING_FIELD, UNKNOWN_TASK, EMPTY_TEXT, TEXT_TOO_LONG,
           MISSING_FILE, OUTSIDE_ROOT, UNREADABLE_IMAGE, IMAGE_TOO_LARGE, DUPLICATE_ID)


class Skip(Exception):
    """A record that cannot be used: `reason` is one of REASONS, `detail` says what to fix."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    max_image_side: int = 4096
    max_image_pixels: int = 4096 * 4096
    max_text_chars: int = 2000

    @classmethod
    def from_config(cls, data_cfg) -> "Limits":
        return cls(data_cfg.max_image_side, data_cfg.max_image_pixels, data_cfg.max_text_chars)


@dataclass
class Report:
    """Kept and skipped counts by reason, with the first few offenders of each reason."""

    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    samples: dict = field(default_factory=dict)
    max_samples: int = 5

    def skip(self, where: str, error: Skip) -> None:
        self.skipped[error.reason] += 1
        examples = self.samples.setdefault(error.reason, [])
        if len(examples) < self.max_samples:
            examples.append({"where": where, "detail": error.detail})

    def to_dict(self) -> dict:
        return {"kept": self.kept, "skipped_total": sum(self.skipped.values()),
                "skipped": dict(sorted(self.skipped.items())), "examples": self.samples}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def summary(self) -> str:
        if not self.skipped:
            return f"kept {self.kept} records, skipped none"
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        return f"kept {self.kept} records, skipped {sum(self.skipped.values())} ({parts})"


def decode_line(raw: bytes) -> dict:
    """One manifest line (bytes) to a dict, or Skip (bad UTF-8, lone surrogates included; bad JSON, nested
    too deeply included; not an object)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Skip(BAD_UTF8, f"not valid UTF-8 at byte {e.start}") from None
    try:
        value = json.loads(text)
        if "\\u" in text:   # only an escape can make a lone surrogate: the text itself decoded strictly
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except json.JSONDecodeError as e:
        raise Skip(BAD_JSON, f"not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise Skip(BAD_JSON, "nested too deeply to read") from None
    except UnicodeEncodeError as e:
        # JSON's \ud800 escapes half of a UTF-16 pair, which no UTF-8 text holds: the record could not be
        # written into a manifest, nor its text tokenized.
        raise Skip(BAD_UTF8, f"holds a lone UTF-16 surrogate ({e.object[e.start]!r}); fix the escaping of the "
                   "program that wrote the line") from None
    if not isinstance(value, dict):
        raise Skip(WRONG_TYPE, f"a record must be a JSON object, got {type(value).__name__}")
    return value


def iter_jsonl(path: str | Path):
    """(line number, raw bytes) of every non-blank line; reading bytes keeps one bad line from
    spoiling the rest of the file."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                yield number, raw.rstrip(b"\r\n")


def resolve_inside(root: Path, relative: str) -> Path:
    """root / relative, refusing absolute paths and any path that leaves root (.., symlinks)."""
    if Path(relative).is_absolute():
        raise Skip(OUTSIDE_ROOT, f"{relative!r} is absolute; give paths relative to the manifest")
    full = (root / relative).resolve()
    try:
        full.relative_to(root.resolve())
    except ValueError:
        raise Skip(OUTSIDE_ROOT, f"{relative!r} points outside the dataset folder {root}") from None
    return full


def check_image(path: Path, limits: Limits) -> tuple[int, int]:
    """(width, height) of a readable image within the limits; Skip otherwise. Reads every pixel, so a
    truncated file is caught here and not in the middle of training."""
    if not path.is_file():
        raise Skip(MISSING_FILE, f"{path.name} does not exist")
    try:
        with Image.open(path) as im:
            width, height = im.size
            if max(width, height) > limits.max_image_side or width * height > limits.max_image_pixels:
                raise Skip(IMAGE_TOO_LARGE, f"{path.name} is {width}x{height}; the limits are "
                           f"{limits.max_image_side} px a side and {limits.max_image_pixels} pixels "
                           "(data.max_image_side, data.max_image_pixels)")
            im.load()
    except Skip:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise Skip(UNREADABLE_IMAGE, f"{path.name} cannot be decoded ({type(e).__name__}: {e})") from None
    return width, height


def validate_record(raw: dict, root: Path, limits: Limits, image_cache: dict | None = None,
                    check_images: bool = True) -> dict:
    """A clean record (known fields only, in schema order) or Skip. `image_cache` maps checked paths to
    their result so an image shared by many records is decoded once."""
    task = raw.get("task")
    if not isinstance(task, str):
        raise Skip(WRONG_TYPE if "task" in raw else MISSING_FIELD, "'task' must be a string, one of " + ", ".join(TASKS))
    if task not in TASKS:
        raise Skip(UNKNOWN_TASK, f"task {task!r} is not one of {', '.join(TASKS)}")
    rid = raw.get("id")
    if not isinstance(rid, str) or not rid:
        raise Skip(WRONG_TYPE if "id" in raw else MISSING_FIELD, "'id' must be a non-empty string")
    for name in REQUIRED[task]:
        if raw.get(name) is None:
            raise Skip(MISSING_FIELD, f"a {task} record needs '{name}'")
    record: dict = {"id": rid, "task": task}
    for name in IMAGE_FIELDS + TEXT_FIELDS + ("split",):
        value = raw.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise Skip(WRONG_TYPE, f"'{name}' must be a string, got {type(value).__name__}")
        if name in TEXT_FIELDS:
            if not value.strip():
                raise Skip(EMPTY_TEXT, f"'{name}' is empty")
            if len(value) > limits.max_text_chars:
                raise Skip(TEXT_TOO_LONG, f"'{name}' has {len(value)} characters; the limit is "
                           f"{limits.max_text_chars} (data.max_text_chars)")
        if name == "split" and value not in SPLITS:
            raise Skip(WRONG_TYPE, f"split {value!r} is not one of {', '.join(SPLITS)}")
        record[name] = value
    meta = raw.get("meta", {})
    if not isinstance(meta, dict):
        raise Skip(WRONG_TYPE, f"'meta' must be an object, got {type(meta).__name__}")
    record["meta"] = meta
    if check_images:
        for name in IMAGE_FIELDS:
            if name in record:
                path = resolve_inside(root, record[name])
                key = str(path)
                cached = image_cache.get(key) if image_cache is not None else None
                if cached is None:
                    try:
                        cached = check_image(path, limits)
                    except Skip as e:
                        cached = e
                    if image_cache is not None:
                        image_cache[key] = cached
                if isinstance(cached, Skip):
                    raise cached
    return record


def read_manifest(path: str | Path, limits: Limits, report: Report, check_images: bool = True) -> list[dict]:
    """Every valid record of a manifest file; the rest are counted in `report`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no manifest at {path}; generate the default world with `arm world generate --out "
                         f"{path.parent}` or import your data with `arm import ... --out {path.parent}`")
    root = path.parent
    records, seen, cache = [], set(), {}
    for number, raw in iter_jsonl(path):
        where = f"{path.name}:{number}"
        try:
            record = validate_record(decode_line(raw), root, limits, cache, check_images)
            if record["id"] in seen:
                raise Skip(DUPLICATE_ID, f"id {record['id']!r} appears earlier in the file")
        except Skip as e:
            report.skip(where, e)
            continue
        seen.add(record["id"])
        records.append(record)
        report.kept += 1
    return records
