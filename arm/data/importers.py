"""Importers: users' data into the manifest format under one dataset folder (default `data/`).

Four kinds of input, each a command:

    arm import captions  PHOTOS/            # images with .txt caption sidecars -> caption + t2i records
    arm import jsonl     their/manifest.jsonl   # a manifest already in this schema
    arm import edits     triplets.jsonl     # {"source", "instruction", "target"} -> edit records
    arm import qa        qa.jsonl           # {"image"?, "question", "answer"} -> vqa (or text) records

Images are copied under `<out>/images/` keeping their path relative to the source folder, so the dataset
folder is self-contained and `dvc add data` versions it. Every bad record is skipped and counted by
reason in `<out>/import_report.json`; an import with nothing usable stops with a one-line error.
An existing manifest is never overwritten unless asked (`--append` adds, `--overwrite` replaces), an
existing image never (another picture under the same name is stored beside it), and an import stopped
at any point, even by SIGKILL, leaves the folder as it was (see `DatasetWriter`).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
from pathlib import Path, PurePosixPath

from arm.data.manifest import (
    BAD_UTF8, DUPLICATE_ID, EMPTY_TEXT, IMAGE_FIELDS, IMAGE_SUFFIXES, MISSING_FILE, TEXT_TOO_LONG, Limits,
    Report, Skip, check_image, decode_line, iter_jsonl, resolve_inside, validate_record,
)

MODES = ("new", "append", "overwrite")
# Inside the dataset folder, so moving a file out of it is a rename on one filesystem. Only an import
# writes here, and it removes what it finds (left by an import that was killed) before it starts.
STAGING = ".import-staging"
PENDING_ID = "pending"   # stands in for an id made from the record once its images are placed


class DatasetWriter:
    """Collects validated records and writes them into the dataset folder so that an import stopped at
    any point (an error, Ctrl-C, SIGKILL) leaves the folder as it was:

    - the folder is locked for the whole import, so two imports cannot interleave;
    - a record's images are copied into `<out>/.import-staging/` and moved into `<out>/images/` at the
      end; an image already there is never replaced: the same bytes are reused, other bytes get a name
      of their own (`a-1f2e3d4c.png`);
    - the new manifest (for --append: the old one's bytes, a newline if it lacked one, the new lines) is
      written in the staging folder and renamed over the old one last, the one step that changes what
      the dataset holds.

    Use it as a context manager: leaving the block without `finish` drops everything staged."""

    def __init__(self, out: str | Path, source_root: Path, mode: str = "new"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.out = Path(out)
        self.source_root = source_root
        self.real_source_root = source_root.resolve()
        self.mode = mode
        self.manifest = self.out / "manifest.jsonl"
        self.staging = self.out / STAGING
        self.lines: list[bytes] = []
        self.ids: set[str] = set()
        self.placed: dict[Path, str] = {}    # source file -> its dataset path
        self.digests: dict[str, str] = {}    # dataset path -> digest of the bytes there (or staged for it)
        self.staged: list[str] = []          # dataset paths to move out of the staging folder
        self._lock = None

    def __enter__(self) -> "DatasetWriter":
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"{self.out} is a file; --out takes a dataset folder")
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = lock_folder(self.out)
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)   # releases the lock
            self._lock = None

    def _start(self) -> None:
        if self.staging.exists():
            print(f"import: removing {self.staging}, left by an import that was stopped")
            shutil.rmtree(self.staging)
        if not self.manifest.exists():
            return
        if self.mode == "new":
            raise ValueError(f"{self.manifest} already exists; pass --append to add these records to it "
                             "or --overwrite to replace it")
        if self.mode == "append":
            for _, raw in iter_jsonl(self.manifest):
                try:
                    self.ids.add(decode_line(raw).get("id"))
                except Skip:
                    pass

    def add(self, record: dict, where: str, report: Report, make_id=None) -> None:
        """Add a validated record whose image paths are relative to the source root. `make_id`, when
        given, makes the record's id from the record once its images have their dataset paths."""
        try:
            if make_id is None:
                self._refuse_duplicate(record["id"])
            for name in IMAGE_FIELDS:
                if name in record:
                    record[name] = self._place(record[name])
            if make_id is not None:
                # After placing: the id says which pictures the record shows, and a duplicate's pictures
                # are its twin's, already in the dataset, so placing them staged nothing.
                record["id"] = make_id(record)
                self._refuse_duplicate(record["id"])
        except Skip as e:
            report.skip(where, e)
            return
        self.ids.add(record["id"])
        self.lines.append((json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
        report.kept += 1

    def _refuse_duplicate(self, rid: str) -> None:
        if rid in self.ids:
            raise Skip(DUPLICATE_ID, f"id {rid!r} is already in the dataset")

    def _place(self, relative: str) -> str:
        """The dataset path for the image at `relative` (to the source root): the first of its candidate
        names that is free (its bytes are then staged) or already holds these very bytes."""
        source = resolve_inside(self.source_root, relative)
        if source in self.placed:
            return self.placed[source]
        rel = utf8_name(source.relative_to(self.real_source_root).as_posix())
        digest = file_digest(source)
        for name in candidate_names(rel, digest):
            held = self._digest_at(name)
            if held is None:
                self._stage(source, name)
                break
            if held == digest:
                break
        else:
            raise ValueError(f"{self.out / name} holds other bytes than the digest in its name says; "
                             "move it out of the dataset folder and import again")
        self.digests[name] = digest
        self.placed[source] = name
        return name

    def _digest_at(self, name: str) -> str | None:
        """The digest of what the dataset holds (or will hold) at `name`; None when it is free. A folder
        or a dangling link there is taken, with no digest any file could match."""
        if name not in self.digests:
            path = self.out / name
            if path.is_file():
                self.digests[name] = file_digest(path)
            elif os.path.lexists(path):
                self.digests[name] = "not a file"
            else:
                return None
        return self.digests[name]

    def _stage(self, source: Path, name: str) -> None:
        staged = self.staging / name
        staged.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, staged)
        self.staged.append(name)

    def finish(self, report: Report) -> Report:
        self._replace_from_staging(self.out / "import_report.json", report.to_json().encode("utf-8"))
        if not self.lines:
            reasons = ", ".join(f"{n} {r}" for r, n in report.skipped.most_common()) or "the input is empty"
            raise ValueError(f"nothing usable to import ({reasons}); see {self.out / 'import_report.json'}")
        manifest = self._stage_manifest()
        self._move_staged_images()
        os.replace(manifest, self.manifest)
        forget_world_parameters(self.out)
        return report

    def _stage_manifest(self) -> Path:
        staged = self.staging / "manifest.jsonl"
        staged.parent.mkdir(parents=True, exist_ok=True)
        with open(staged, "wb") as f:
            if self.mode == "append" and self.manifest.exists():
                copy_ending_with_newline(self.manifest, f)
            f.writelines(self.lines)
            f.flush()
            os.fsync(f.fileno())
        return staged

    def _move_staged_images(self) -> None:
        for name in self.staged:
            target = self.out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(target):   # the folder is locked against imports: someone put it there by hand
                raise ValueError(f"{target} appeared while importing; run the import again")
            os.replace(self.staging / name, target)

    def _replace_from_staging(self, path: Path, data: bytes) -> None:
        staged = self.staging / path.name
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_bytes(data)
        os.replace(staged, path)


def lock_folder(folder: Path) -> int:
    """An exclusive lock on the folder (its descriptor, to close to release it). The kernel drops it when
    the process dies, so a killed import never leaves the folder locked."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(f"another import is writing to {folder}; run this one when it has finished") from None
    return fd


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def candidate_names(rel: str, digest: str):
    """Where an image may go in the dataset, in order: `images/<rel>`, then, when that holds other bytes
    (a picture of the same name from another folder or an earlier import), the name with the start of
    its digest and, should that be taken too, longer starts of it."""
    yield f"images/{rel}"
    path = PurePosixPath(rel)
    for length in (8, 16, 64):
        yield f"images/{path.with_name(f'{path.stem}-{digest[:length]}{path.suffix}')}"


def utf8_name(rel: str) -> str:
    """`rel` if the manifest (UTF-8) can hold it. Python gives a file name whose bytes are not UTF-8 as
    lone surrogates, which no UTF-8 text holds."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise Skip(BAD_UTF8, f"the file name {rel!r} is not valid UTF-8; rename the file") from None
    return rel


def copy_ending_with_newline(path: Path, out) -> None:
    """The bytes of `path` into the open file `out`, then a newline if they do not end with one (a
    manifest edited by hand often lacks it, and the next record must not join its last line)."""
    last = b""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            out.write(block)
            last = block
    if last and not last.endswith(b"\n"):
        out.write(b"\n")


def content_id(prefix: str, record: dict) -> str:
    """An id made from what the record says (its dataset image paths, texts, split, meta), for records
    given without one: the same record imported again gets the same id and is skipped as a duplicate,
    and records from different files never share one (line numbers start at 1 in every file)."""
    body = json.dumps({k: v for k, v in record.items() if k != "id"}, ensure_ascii=False, sort_keys=True)
    return f"{prefix}-{hashlib.sha256(body.encode('utf-8')).hexdigest()[:16]}"


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


def caption_id(task: str):
    """`<stem>:<task>`, the stem of the image's dataset path: `a:caption` for images/a.png, and for a
    picture stored beside another of its name, `a-1f2e3d4c:caption`."""
    return lambda record: f"{record['image'].removeprefix('images/').rsplit('.', 1)[0]}:{task}"


def import_captions(src: str | Path, out: str | Path, limits: Limits = Limits(), *, mode: str = "new",
                    tasks: tuple[str, ...] = ("caption", "t2i"), split: str | None = None) -> Report:
    """A folder of images, each with `<name>.txt` beside it holding its caption. Each pair becomes a
    caption record (image -> text) and a t2i record (text -> image)."""
    root = Path(src)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder of images with .txt captions")
    report = Report()
    with DatasetWriter(out, root, mode) as writer:
        for image in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
            rel = image.relative_to(root).as_posix()
            try:
                utf8_name(rel)
                resolve_inside(root, rel)  # a symlink out of the folder
                text = _read_sidecar(root, image.with_suffix(".txt").relative_to(root).as_posix(), limits)
                check_image(image, limits)
            except Skip as e:
                report.skip(rel, e)
                continue
            for task in tasks:
                record = {"id": PENDING_ID, "task": task, "image": rel, "text": text, "meta": {}}
                if split:
                    record["split"] = split
                writer.add(record, rel, report, make_id=caption_id(task))
        return writer.finish(report)


def _import_lines(src: Path, out, limits: Limits, mode: str, convert, id_prefix: str | None = None) -> Report:
    """Each line of `src` through `convert` and validation into the dataset. A record `convert` gives no
    id gets one from its content (`content_id`) when `id_prefix` is set, else it is skipped."""
    if not src.is_file():
        raise ValueError(f"{src} is not a file")
    root = src.parent
    report, cache = Report(), {}
    auto_id = functools.partial(content_id, id_prefix) if id_prefix is not None else None
    with DatasetWriter(out, root, mode) as writer:
        for number, raw in iter_jsonl(src):
            where = f"{src.name}:{number}"
            make_id = None
            try:
                record = convert(decode_line(raw))
                if auto_id is not None and "id" not in record:
                    record["id"], make_id = PENDING_ID, auto_id
                record = validate_record(record, root, limits, cache)
            except Skip as e:
                report.skip(where, e)
                continue
            writer.add(record, where, report, make_id)
        return writer.finish(report)


def import_jsonl(src: str | Path, out: str | Path, limits: Limits = Limits(), *, mode: str = "new") -> Report:
    """A manifest in this project's schema, with image paths relative to it."""
    src = Path(src)
    if src.resolve() == (Path(out) / "manifest.jsonl").resolve():
        raise ValueError(f"{src} is already the dataset's manifest; `arm prepare` validates it in place")
    return _import_lines(src, out, limits, mode, lambda raw: raw)


def _given(raw: dict, record: dict) -> dict:
    """The record with the optional fields the line gives (`id`, `split`)."""
    for name in ("id", "split"):
        if name in raw:
            record[name] = raw[name]
    return record


def import_edits(src: str | Path, out: str | Path, limits: Limits = Limits(), *, mode: str = "new") -> Report:
    """Edit triplets, one JSON object a line: {"source", "instruction", "target", "id"?, "split"?}."""

    def convert(raw: dict) -> dict:
        return _given(raw, {"task": "edit", "source_image": raw.get("source"), "target_image": raw.get("target"),
                            "text": raw.get("instruction"), "meta": raw.get("meta", {})})

    return _import_lines(Path(src), out, limits, mode, convert, id_prefix="edit")


def import_qa(src: str | Path, out: str | Path, limits: Limits = Limits(), *, mode: str = "new") -> Report:
    """Question-answer pairs, one JSON object a line: {"image"?, "question", "answer", "id"?, "split"?};
    with an image a vqa record, without one a text-only record."""

    def convert(raw: dict) -> dict:
        record = {"task": "vqa" if raw.get("image") is not None else "text", "text": raw.get("question"),
                  "answer": raw.get("answer"), "meta": raw.get("meta", {})}
        if raw.get("image") is not None:
            record["image"] = raw["image"]
        return _given(raw, record)

    return _import_lines(Path(src), out, limits, mode, convert, id_prefix="qa")


IMPORTERS = {"captions": import_captions, "jsonl": import_jsonl, "edits": import_edits, "qa": import_qa}
