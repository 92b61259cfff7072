"""Importing users' data: every kind of input, every kind of bad record skipped and counted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
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


def test_append_never_overwrites_an_image_with_other_bytes(tmp_path):
    """Two folders that both hold `a.png`, different pictures: the second import keeps the first picture
    as it was and stores its own beside it, and each record shows its own picture."""
    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "data"
    _png(first / "a.png", colour=(200, 30, 30))
    (first / "a.txt").write_text("a red square")
    _png(second / "a.png", colour=(30, 30, 200))
    (second / "a.txt").write_text("a blue square")
    import_captions(first, out)
    red = (out / "images" / "a.png").read_bytes()
    assert red == (first / "a.png").read_bytes()
    report = import_captions(second, out, mode="append")
    assert report.kept == 2 and not report.skipped
    assert (out / "images" / "a.png").read_bytes() == red
    shown = {r["text"]: (out / r["image"]).read_bytes() for r in _manifest(out)}
    assert shown == {"a red square": red, "a blue square": (second / "a.png").read_bytes()}
    assert len({r["id"] for r in _manifest(out)}) == 4
    # The same picture again is the picture already there: one file, no third copy.
    import_qa_file = second / "qa.jsonl"
    import_qa_file.write_text(json.dumps({"image": "a.png", "question": "what color?", "answer": "blue"}) + "\n")
    import_qa(import_qa_file, out, mode="append")
    assert _manifest(out)[-1]["image"] == [r for r in _manifest(out) if r["text"] == "a blue square"][0]["image"]
    assert len(list((out / "images").iterdir())) == 2


def test_append_to_a_manifest_without_a_trailing_newline(tmp_path):
    """A manifest edited by hand often ends without a newline; appending must not glue the first new
    record onto its last line (which would lose both)."""
    src, out = tmp_path / "src", tmp_path / "data"
    _png(src / "a.png")
    (src / "a.txt").write_text("a red square")
    import_captions(src, out)
    manifest = out / "manifest.jsonl"
    manifest.write_text(manifest.read_text().rstrip("\n"))
    (src / "qa.jsonl").write_text(json.dumps({"question": "what color is a lime?", "answer": "green"}) + "\n")
    import_qa(src / "qa.jsonl", out, mode="append")
    assert [r["task"] for r in _manifest(out)] == ["caption", "t2i", "text"]


@pytest.mark.parametrize("kind", ["qa", "edits"])
def test_default_ids_do_not_collide_across_appends(tmp_path, kind):
    """Records without an id get one from what they say, not from their line number (which starts at 1
    in every file): a second file's records are added, the same file again adds nothing."""
    src, out = tmp_path / "src", tmp_path / "data"
    _png(src / "s.png")
    _png(src / "t.png", colour=(0, 200, 0))
    importer = {"qa": import_qa, "edits": import_edits}[kind]
    files = []
    for n, words in enumerate((("one", "two"), ("three", "four"))):
        if kind == "qa":
            lines = [{"image": "s.png", "question": f"question {w}?", "answer": w} for w in words]
        else:
            lines = [{"source": "s.png", "instruction": f"make it {w}", "target": "t.png"} for w in words]
        files.append(src / f"{kind}{n}.jsonl")
        files[-1].write_text("".join(json.dumps(line) + "\n" for line in lines))
    importer(files[0], out)
    report = importer(files[1], out, mode="append")
    assert report.kept == 2 and not report.skipped
    ids = [r["id"] for r in _manifest(out)]
    assert len(ids) == len(set(ids)) == 4
    with pytest.raises(ValueError, match="2 duplicate_id"):
        importer(files[0], out, mode="append")
    assert len(_manifest(out)) == 4


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


def test_an_image_named_in_bytes_that_are_not_utf8_is_counted(tmp_path):
    src, out = tmp_path / "src", tmp_path / "data"
    _png(src / "a.png")
    (src / "a.txt").write_text("a red square")
    latin1 = os.fsencode(src) + b"/caf\xe9"
    Image.new("RGB", (8, 8)).save(latin1 + b".png", format="PNG")
    with open(latin1 + b".txt", "w") as f:
        f.write("a black square")
    report = import_captions(src, out)
    assert report.kept == 2 and report.skipped == {"bad_utf8": 1}
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_json_nested_too_deeply_is_bad_json(tmp_path):
    src, out = tmp_path / "src", tmp_path / "data"
    src.mkdir()
    (src / "qa.jsonl").write_text('{"question": "what color is a lime?", "answer": "green"}\n'
                                  + "[" * 100_000 + "\n")
    report = import_qa(src / "qa.jsonl", out)
    assert report.kept == 1 and report.skipped == {"bad_json": 1}


def test_two_imports_into_one_folder_at_once_are_refused(tmp_path):
    """Two appends at once would each write the old manifest plus their own records, and the second
    would drop the first's: the folder is locked for the whole import."""
    from arm.data.importers import DatasetWriter

    src, out = tmp_path / "src", tmp_path / "data"
    _png(src / "a.png")
    (src / "a.txt").write_text("a red square")
    with DatasetWriter(out, src, "new"):
        with pytest.raises(ValueError, match="another import"):
            import_captions(src, out)
    import_captions(src, out)
    assert len(_manifest(out)) == 2


def _captioned_copies(folder: Path, count: int, colour: tuple[int, int, int]) -> Path:
    """`count` captioned pictures named 0000.png..., all one picture (copies are quick to make)."""
    picture = _png(folder / "0000.png", colour=colour)
    for i in range(count):
        if i:
            shutil.copyfile(picture, folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(f"picture {i}")
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _wait_for_writes(folder: Path, process: subprocess.Popen, writes: int, timeout: float = 120) -> None:
    """Until `writes` files or folders under `folder` are new or changed, or the process has ended."""
    def state():
        return {p: (s.st_size, s.st_mtime_ns) for p in folder.rglob("*") for s in [p.lstat()]}

    before, deadline = state(), time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        now = state()
        if sum(now[p] != before.get(p) for p in now) >= writes:
            return
        time.sleep(0.002)


@pytest.mark.parametrize("kind,mode", [("qa", "--append"), ("captions", "--overwrite")])
def test_killing_an_import_midway_leaves_the_dataset_intact(tmp_path, kind, mode):
    """SIGKILL an import after it has started writing, one that adds questions about pictures named as
    the dataset's own and one that replaces the manifest: the manifest and the images from before are
    byte for byte as they were, and running the import again completes it."""
    from tests.conftest import REPO

    out = tmp_path / "data"
    import_captions(_captioned_copies(tmp_path / "first", 20, colour=(200, 30, 30)), out)
    before = {rel: data for rel, data in _files(out).items() if rel != "import_report.json"}
    # The same names with other pictures, enough of them that the kill lands midway.
    second = _captioned_copies(tmp_path / "second", 1500, colour=(30, 30, 200))
    questions = [{"image": f"{i:04d}.png", "question": "which picture is this?", "answer": str(i)} for i in range(1500)]
    (second / "qa.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    src = second / "qa.jsonl" if kind == "qa" else second
    command = [sys.executable, "-m", "arm.cli", "import", kind, str(src), "--out", str(out), mode]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_writes(out, process, writes=50)
        process.send_signal(signal.SIGKILL)
    finally:
        stderr = process.communicate()[1].decode()
    assert process.returncode == -signal.SIGKILL, f"the import ended before it was killed: {stderr}"
    after = _files(out)
    assert [rel for rel in before if after.get(rel) != before[rel]] == []   # nothing of before changed

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    after = _files(out)
    old_images = {rel: data for rel, data in before.items() if rel.startswith("images/")}
    assert [rel for rel in old_images if after[rel] != old_images[rel]] == []
    records = _manifest(out)
    if mode == "--append":
        assert after["manifest.jsonl"].startswith(before["manifest.jsonl"]) and len(records) == 40 + 1500
        records = records[40:]
    else:
        assert len(records) == 2 * 1500
    blue = (second / "0000.png").read_bytes()
    assert all(after[r["image"]] == blue for r in records)
    # Nothing half-written left behind to be tracked with the data.
    assert set(after) == {"manifest.jsonl", "import_report.json"} | set(old_images) | {r["image"] for r in records}
