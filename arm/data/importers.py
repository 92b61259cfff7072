"""Importers: users' data into the manifest format under one dataset folder (default `data/`).

Four kinds of input, each a command:

    arm import captions  PHOTOS/            # images with .txt caption sidecars -> caption + t2i records
    arm import jsonl     their/manifest.jsonl   # a manifest already in this schema
    arm import edits     triplets.jsonl     # {"source", "instruction", "target"} -> edit records
    arm import qa        qa.jsonl           # {"image"?, "question", "answer"} -> vqa (or text) records

Images are copied under `<out>/images/` keeping their path relative to the source folder, so the dataset
folder is self-contained and `dvc add data` versions it. Every bad record is skipped and counted by
reason in `<out>/import_report.json`; an import with nothing usable stops with a one-line error.
An existing manifest is never overwritten unless asked (`--append` adds, `--overwrite` replaces).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from arm.data.manifest import (
    BAD_UTF8, DUPLICATE_ID, EMPTY_TEXT, IMAGE_FIELDS, IMAGE_SUFFIXES, MISSING_FILE, TEXT_TOO_LONG, Limits,
    Report, Skip, check_image, decode_line, iter_jsonl, resolve_inside, validate_record,
)

MODES = ("new", "append", "overwrite")


class DatasetWriter:
    """Collects validated records, copies their images into `out/images/`, writes the manifest and the
    report. Nothing is written to the manifest until `finish`, so a failed import leaves it as it was."""

    def __init__(self, out: str | Path, source_root: Path, mode: str = "new"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.out = Path(out)
        self.source_root = source_root
        self.mode = mode
        self.manifest = self.out / "manifest.jsonl"
        self.records: list[dict] = []
        self.ids: set[str] = set()
        if self.manifest.exists():
            if mode == "new":
                raise ValueError(f"{self.manifest} already exists; pass --append to add these records to it "
                                 "or --overwrite to replace it")
            if mode == "append":
                for _, raw in iter_jsonl(self.manifest):
                    try:
                        self.ids.add(decode_line(raw).get("id"))
                    except Skip:
                        pass

    def add(self, record: dict, where: str, report: Report) -> None:
        """Add a validated record whose image paths are relative to the source root."""
        if record["id"] in self.ids:
            report.skip(where, Skip(DUPLICATE_ID, f"id {record['id']!r} is already in the dataset"))
            return
        for name in IMAGE_FIELDS:
            if name in record:
                record[name] = self._copy(record[name])
        self.ids.add(record["id"])
        self.records.append(record)
        report.kept += 1

    def _copy(self, relative: str) -> str:
        source = resolve_inside(self.source_root, relative)
        rel = source.relative_to(self.source_root.resolve()).as_posix()
        target = self.out / "images" / rel
        if source != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        return f"images/{rel}"

    def finish(self, report: Report) -> Report:
        self.out.mkdir(parents=True, exist_ok=True)
        report.write(self.out / "import_report.json")
        if not self.records:
            reasons = ", ".join(f"{n} {r}" for r, n in report.skipped.most_common()) or "the input is empty"
            raise ValueError(f"nothing usable to import ({reasons}); see {self.out / 'import_report.json'}")
        lines = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in self.records)
        if self.mode == "append" and self.manifest.exists():
            with open(self.manifest, "a", encoding="utf-8") as f:
                f.write(lines)
        else:
            tmp = self.manifest.with_suffix(".jsonl.tmp")
            tmp.write_text(lines, encoding="utf-8")
            tmp.replace(self.manifest)
        forget_world_parameters(self.out)
        return report


def forget_world_parameters(folder: Path) -> None:
    """Drop the Shapes world's generation parameters from the folder's .dvc file (`data.dvc` beside
    `data/`), which `dvc add` would otherwise carry over: the folder now holds imported data, and a
    fresh clone must not try to regenerate it as the world."""
    from arm.data.versioning import read_meta, write_meta

    dvc_file = folder.parent / f"{folder.name}.dvc"
    if dvc_file.is_file():
        meta = read_meta(dvc_file)
        if "world" in meta:
            meta.pop("world")
            write_meta(dvc_file, meta)
            print(f"import: {dvc_file} no longer records the Shapes world's parameters; `dvc add {folder}` "
                  "tracks the imported data")


def _read_sidecar(root: Path, rel: str, limits: Limits) -> str:
    """The caption in `rel`, which, like an image, must not lead out of the folder: a link to a file
    elsewhere would copy that file's text into the dataset."""
    path = resolve_inside(root, rel)
    if not path.is_file():
        raise Skip(MISSING_FILE, f"{rel} (the caption sidecar) does not exist")
    try:
        text = path.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise Skip(BAD_UTF8, f"{rel} is not valid UTF-8 (byte {e.start})") from None
    if not text:
        raise Skip(EMPTY_TEXT, f"{rel} is empty")
    if len(text) > limits.max_text_chars:
        raise Skip(TEXT_TOO_LONG, f"{rel} has {len(text)} characters; the limit is {limits.max_text_chars}")
    return text


def import_captions(src: str | Path, out: str | Path, limits: Limits = Limits(), *, mode: str = "new",
                    tasks: tuple[str, ...] = ("caption", "t2i"), split: str | None = None) -> Report:
    """A folder of images, each with `<name>.txt` beside it holding its caption. Each pair becomes a
    caption record (image -> text) and a t2i record (text -> image)."""
    root = Path(src)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder of images with .txt captions")
    writer, report = DatasetWriter(out, root, mode), Report()
    for image in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        rel = image.relative_to(root).as_posix()
        stem = rel.rsplit(".", 1)[0]
        try:
            resolve_inside(root, rel)  # a symlink out of the folder
            text = _read_sidecar(root, image.with_suffix(".txt").relative_to(root).as_posix(), limits)
            check_image(image, limits)
        except Skip as e:
            report.skip(rel, e)
            continue
        for task in tasks:
            record = {"id": f"{stem}:{task}", "task": task, "image": rel, "text": text, "meta": {}}
            if split:
                record["split"] = split
            writer.add(record, rel, report)
    return writer.finish(report)


def _import_lines(src: Path, out, limits: Limits, mode: str, convert) -> Report:
    if not src.is_file():
        raise ValueError(f"{src} is not a file")
    root = src.parent
    writer, report, cache = DatasetWriter(out, root, mode), Report(), {}
    for number, raw in iter_jsonl(src):
        where = f"{src.name}:{number}"
        try:
            record = validate_record(convert(decode_line(raw), number), root, limits, cache)
        except Skip as e:
            report.skip(where, e)
            continue
        writer.add(record, where, report)
    return writer.finish(report)


def import_jsonl(src: str | Path, out: str | Path, limits: Limits = Limits(), *, mode: str = "new") -> Report:
    """A manifest in this project's schema, with image paths relative to it."""
    src = Path(src)
    if src.resolve() == (Path(out) / "manifest.jsonl").resolve():
        raise ValueError(f"{src} is already the dataset's manifest; `arm prepare` validates it in place")
    return _import_lines(src, out, limits, mode, lambda raw, n: raw)


def import_edits(src: str | Path, out: str | Path, limits: Limits = Limits(), *, mode: str = "new") -> Report:
    """Edit triplets, one JSON object a line: {"source", "instruction", "target", "id"?, "split"?}."""

    def convert(raw: dict, number: int) -> dict:
        record = {"id": raw.get("id", f"edit-{number:06d}"), "task": "edit", "source_image": raw.get("source"),
                  "target_image": raw.get("target"), "text": raw.get("instruction"), "meta": raw.get("meta", {})}
        if "split" in raw:
            record["split"] = raw["split"]
        return record

    return _import_lines(Path(src), out, limits, mode, convert)


def import_qa(src: str | Path, out: str | Path, limits: Limits = Limits(), *, mode: str = "new") -> Report:
    """Question-answer pairs, one JSON object a line: {"image"?, "question", "answer", "id"?, "split"?};
    with an image a vqa record, without one a text-only record."""

    def convert(raw: dict, number: int) -> dict:
        record = {"id": raw.get("id", f"qa-{number:06d}"), "task": "vqa" if raw.get("image") is not None else "text",
                  "text": raw.get("question"), "answer": raw.get("answer"), "meta": raw.get("meta", {})}
        if raw.get("image") is not None:
            record["image"] = raw["image"]
        if "split" in raw:
            record["split"] = raw["split"]
        return record

    return _import_lines(Path(src), out, limits, mode, convert)


IMPORTERS = {"captions": import_captions, "jsonl": import_jsonl, "edits": import_edits, "qa": import_qa}
