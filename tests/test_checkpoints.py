"""Resume only what the same configuration, data and code wrote."""

from __future__ import annotations

from arm.checkpoints import fingerprint, resume_point, source_files


def test_fingerprint_changes_with_config_data_and_code(tmp_path):
    data, code = tmp_path / "summary.json", tmp_path / "stage.py"
    data.write_text("{}")
    code.write_text("x = 1\n")
    base = fingerprint({"lr": 1}, data, code)
    assert fingerprint({"lr": 1}, data, code) == base
    assert fingerprint({"lr": 2}, data, code) != base
    code.write_text("x = 2\n")
    assert fingerprint({"lr": 1}, data, code) != base


def test_stage_sources_are_listed_and_a_stale_stamp_is_not_resumed(tmp_path):
    files = source_files("tokenizer", "pretrain.py")
    assert any(f.name == "stage.py" for f in files) and any(f.name == "pretrain.py" for f in files)
    (tmp_path / "last.ckpt").write_bytes(b"")
    (tmp_path / "fingerprint.txt").write_text("written-by-other-code")
    assert resume_point(tmp_path, "this-code", "demo") == (None, 0)
    assert (tmp_path / "fingerprint.txt").read_text() == "this-code"


def test_a_torn_checkpoint_is_set_aside_not_resumed(tmp_path, capsys):
    """A run killed while it wrote last.ckpt leaves a truncated file: the next run says so and starts over."""
    (tmp_path / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "fingerprint.txt").write_text("same")
    assert resume_point(tmp_path, "same", "demo") == (None, 0)
    assert (tmp_path / "last.ckpt.unreadable").is_file() and not (tmp_path / "last.ckpt").exists()
    assert "unreadable" in capsys.readouterr().err
