"""Importing users' data: every kind of input, every kind of bad record skipped and counted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from arm.cli import main
from arm.data.importers import import_captions, import_edits, import_jsonl, import_qa
from arm.data.manifest import Limits


def _png(path: Path, size=(32, 32), colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _truncated(path: Path) -> Path:
    _png(path, (64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _report(out: Path) -> dict:
    return json.loads((out / "import_report.json").read_text())


def test_caption_folder_with_every_kind_of_bad_record(tmp_path):
    src = tmp_path / "photos"
    _png(src / "good" / "a.png")
    (src / "good" / "a.txt").write_text("a red square")
    _png(src / "b.jpg", colour=(0, 0, 255))
    (src / "b.txt").write_text("a blue square", encoding="utf-8")
    _png(src / "no_caption.png")                                   # missing sidecar
    _png(src / "latin1.png")
    (src / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))    # bad UTF-8
    _png(src / "empty.png")
    (src / "empty.txt").write_text("   ")                           # empty text
    (src / "corrupt.png").write_bytes(b"this is not a png")        # unreadable
    (src / "corrupt.txt").write_text("x")
    _truncated(src / "trunc.png")                                  # truncated
    (src / "trunc.txt").write_text("x")
    _png(src / "huge.png", size=(300, 20))                         # over the limit below
    (src / "huge.txt").write_text("x")
    outside = _png(tmp_path / "elsewhere" / "secret.png")
    os.symlink(outside, src / "link.png")                          # escapes the folder
    (src / "link.txt").write_text("x")

    out = tmp_path / "data"
    report = import_captions(src, out, Limits(max_image_side=256))
    records = _manifest(out)
    assert report.kept == len(records) == 4  # two images x (caption, t2i)
    assert {r["task"] for r in records} == {"caption", "t2i"}
    skipped = _report(out)["skipped"]
    assert skipped == {"missing_file": 1, "bad_utf8": 1, "empty_text": 1, "unreadable_image": 2,
                       "image_too_large": 1, "path_outside_root": 1}
    for r in records:  # copied, self-contained
        assert (out / r["image"]).is_file() and r["image"].startswith("images/")


def test_jsonl_manifest_bad_lines_are_counted_not_fatal(tmp_path):
    src = tmp_path / "theirs"
    _png(src / "img" / "ok.png")
    _truncated(src / "img" / "half.png")
    lines = [
        json.dumps({"id": "1", "task": "caption", "image": "img/ok.png", "text": "a red square"}),
        json.dumps({"id": "2", "task": "vqa", "image": "img/ok.png", "text": "what color?", "answer": "red"}),
        json.dumps({"id": "3", "task": "caption", "image": "img/missing.png", "text": "x"}),      # missing file
        json.dumps({"id": "4", "task": "caption", "image": "../../etc/passwd", "text": "x"}),     # outside root
        json.dumps({"id": "5", "task": "caption", "image": "/etc/hostname", "text": "x"}),        # absolute
        json.dumps({"id": "6", "task": "caption", "image": "img/ok.png", "text": 42}),            # wrong type
        json.dumps({"id": "7", "task": "dance", "text": "x"}),                                    # unknown task
        json.dumps({"id": "8", "task": "vqa", "image": "img/ok.png", "text": "q"}),              # missing answer
        json.dumps({"id": "9", "task": "caption", "image": "img/half.png", "text": "x"}),        # truncated
        "{not json",                                                                              # bad JSON
        json.dumps({"id": "1", "task": "text", "text": "q", "answer": "a"}),                     # duplicate id
        json.dumps({"id": "10", "task": "text", "text": "what color is a lime?", "answer": "green",
                    "split": "holiday"}),                                                         # bad split
        json.dumps({"id": "11", "task": "text", "text": "what color is a lime?", "answer": "green"}),
    ]
    manifest = src / "manifest.jsonl"
    manifest.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "12", "text": "\xff\xfe"}\n')
    out = tmp_path / "data"
    report = import_jsonl(manifest, out)
    assert [r["id"] for r in _manifest(out)] == ["1", "2", "11"]
    assert report.skipped == {"missing_file": 1, "path_outside_root": 2, "wrong_type": 2, "unknown_task": 1,
                              "missing_field": 1, "unreadable_image": 1, "bad_json": 1, "duplicate_id": 1,
                              "bad_utf8": 1}
    examples = _report(out)["examples"]
    assert examples["bad_json"][0]["where"] == "manifest.jsonl:10"


def test_edit_triplets_and_qa_pairs(tmp_path):
    src = tmp_path / "edits"
    _png(src / "s.png")
    _png(src / "t.png", colour=(0, 200, 0))
    (src / "edits.jsonl").write_text("\n".join([
        json.dumps({"source": "s.png", "instruction": "make it green", "target": "t.png"}),
        json.dumps({"source": "s.png", "instruction": "", "target": "t.png"}),             # empty text
        json.dumps({"source": "s.png", "instruction": "x", "target": "gone.png"}),         # missing file
    ]) + "\n")
    (src / "qa.jsonl").write_text("\n".join([
        json.dumps({"image": "s.png", "question": "what color is it?", "answer": "red"}),
        json.dumps({"question": "what color is a lime?", "answer": "green"}),
        json.dumps({"image": 3, "question": "q", "answer": "a"}),                          # wrong type
    ]) + "\n")
    out = tmp_path / "data"
    edits = import_edits(src / "edits.jsonl", out)
    assert edits.kept == 1 and edits.skipped == {"empty_text": 1, "missing_file": 1}
    qa = import_qa(src / "qa.jsonl", out, mode="append")
    assert qa.kept == 2 and qa.skipped == {"wrong_type": 1}
    tasks = [r["task"] for r in _manifest(out)]
    assert tasks == ["edit", "vqa", "text"]


def test_existing_manifest_is_never_lost(tmp_path):
    src = tmp_path / "src"
    _png(src / "a.png")
    (src / "a.txt").write_text("a red square")
    out = tmp_path / "data"
    import_captions(src, out)
    before = (out / "manifest.jsonl").read_text()
    with pytest.raises(ValueError, match="--append"):
        import_captions(src, out)
    assert (out / "manifest.jsonl").read_text() == before
    # Appending the same records again skips them as duplicates rather than doubling the data.
    with pytest.raises(ValueError, match="nothing usable"):
        import_captions(src, out, mode="append")
    assert (out / "manifest.jsonl").read_text() == before


def test_nothing_usable_is_a_one_line_error(tmp_path, capsys):
    src = tmp_path / "src"
    (src).mkdir()
    (src / "bad.png").write_bytes(b"nope")
    (src / "bad.txt").write_text("x")
    out = tmp_path / "data"
    code = main(["import", "captions", str(src), "--out", str(out), "--config", "configs/default.yaml"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "nothing usable" in err and "unreadable_image" in err
    assert not (out / "manifest.jsonl").exists() and (out / "import_report.json").exists()


def test_cli_import_reports_counts(tmp_path, capsys):
    src = tmp_path / "src"
    _png(src / "a.png")
    (src / "a.txt").write_text("a red square")
    out = tmp_path / "data"
    assert main(["import", "captions", str(src), "--out", str(out)]) == 0
    assert "kept 2 records" in capsys.readouterr().out


def test_a_lone_surrogate_is_bad_utf8_and_leaves_nothing_behind(tmp_path):
    """`\\ud800` is valid JSON but no UTF-8 text holds it: the record is counted as bad UTF-8 (as is an
    image whose file name is not UTF-8), the rest is imported, and no temporary file is left."""
    src, out = tmp_path / "src", tmp_path / "data"
    _png(src / "a.png")
    lines = ['{"id": "1", "task": "text", "text": "what color is a lime?", "answer": "green"}',
             '{"id": "2", "task": "text", "text": "lone \\ud800 surrogate", "answer": "x"}',
             '{"id": "3", "task": "caption", "image": "a.png", "text": "ok", "meta": {"note": "\\udfff"}}']
    (src / "m.jsonl").write_text("\n".join(lines) + "\n")
    report = import_jsonl(src / "m.jsonl", out)
    assert report.kept == 1 and report.skipped == {"bad_utf8": 2}
    assert [r["id"] for r in _manifest(out)] == ["1"]
    assert sorted(p.name for p in out.rglob("*")) == ["import_report.json", "manifest.jsonl"]


def test_json_nested_too_deeply_is_bad_json(tmp_path):
    src, out = tmp_path / "src", tmp_path / "data"
    src.mkdir()
    (src / "qa.jsonl").write_text('{"question": "what color is a lime?", "answer": "green"}\n'
                                  + "[" * 100_000 + "\n")
    report = import_qa(src / "qa.jsonl", out)
    assert report.kept == 1 and report.skipped == {"bad_json": 1}


def test_a_caption_sidecar_is_confined_to_the_folder_like_images(tmp_path):
    """A `.txt` sidecar that links outside the photo folder is refused and counted, never read: its text
    (here someone's secret) must not end up in the dataset."""
    src = tmp_path / "photos"
    _png(src / "a.png")
    (src / "a.txt").write_text("a red square")
    _png(src / "b.png")
    secret = tmp_path / "elsewhere" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("the password is hunter2")
    os.symlink(secret, src / "b.txt")
    out = tmp_path / "data"
    report = import_captions(src, out)
    assert report.kept == 2 and report.skipped == {"path_outside_root": 1}
    assert "hunter2" not in (out / "manifest.jsonl").read_text()
    assert _report(out)["examples"]["path_outside_root"][0]["where"] == "b.png"
