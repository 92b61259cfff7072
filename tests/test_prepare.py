"""Stage `prepare`: splits, the text tokenizer's id layout, shards that match the images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arm.cli import main
from arm.config import load_config
from arm.data.shards import load_examples, load_images
from arm.prepare import assign_split, prepare
from arm.text_tokenizer import SPECIAL_TOKENS, load_tokenizer


def _cfg(data_root: Path, artifacts: Path, *extra: str):
    return load_config("configs/default.yaml", [f"data.root={data_root}", f"run.artifacts_dir={artifacts}", *extra])


def test_prepare_on_the_world_writes_examples_tokenizer_and_shards(tmp_path, tiny_world):
    cfg = _cfg(tiny_world, tmp_path / "artifacts")
    summary = prepare(cfg)
    out = tmp_path / "artifacts" / "prepare"
    assert sorted(p.name for p in out.iterdir()) == ["examples", "images", "summary.json", "tokenizer.json"]
    assert summary["validation"]["skipped_total"] == 0
    tok = load_tokenizer(out / "tokenizer.json")
    vocab = tok.get_vocab_size()
    # Text ids first, then the special tokens in order, ending the vocabulary.
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(vocab - len(SPECIAL_TOKENS), vocab))
    train = load_examples(out, "train")
    assert {r["split"] for r in train} == {"train"}
    for r in train[:50]:
        assert tok.decode(r["text_ids"]) == r["text"]
        if "answer" in r:
            assert tok.decode(r["answer_ids"]) == r["answer"]
    keys, pixels = load_images(out, "train")
    assert pixels.shape == (len(keys), 64, 64, 3) and pixels.dtype == np.uint8
    # Shards hold the very pixels of the files.
    for key, image in list(zip(keys, pixels))[:20]:
        assert np.array_equal(np.asarray(Image.open(tiny_world / key).convert("RGB")), image)
    needed = {r[k] for r in train for k in ("image", "source_image", "target_image") if k in r}
    assert needed == set(keys)
    assert summary["images"]["holdout"] > 0


def test_prepare_is_deterministic(tmp_path, tiny_world):
    a, b = tmp_path / "a", tmp_path / "b"
    prepare(_cfg(tiny_world, a))
    prepare(_cfg(tiny_world, b))
    for rel in ("tokenizer.json", "examples/train.jsonl", "summary.json"):
        assert (a / "prepare" / rel).read_bytes() == (b / "prepare" / rel).read_bytes()


def test_records_without_split_get_stable_hash_splits(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    lines = []
    for i in range(300):
        Image.new("RGB", (40, 30), (i % 255, 0, 0)).save(data / "images" / f"{i}.png")
        lines.append(json.dumps({"id": f"r{i}", "task": "caption", "image": f"images/{i}.png",
                                 "text": f"picture number {i}"}))
    (data / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    cfg = _cfg(data, tmp_path / "artifacts", "prepare.val_fraction=0.1", "prepare.test_fraction=0.1")
    summary = prepare(cfg)
    counts = {s: sum(c.values()) for s, c in summary["records"].items()}
    assert counts["train"] + counts["val"] + counts["test"] == 300
    assert 10 <= counts["val"] <= 55 and 10 <= counts["test"] <= 55
    assert assign_split("r7", 0.1, 0.1) == assign_split("r7", 0.1, 0.1)
    # Non-square images are centre-cropped and resized to data.image_size.
    _, pixels = load_images(tmp_path / "artifacts" / "prepare", "train")
    assert pixels.shape[1:] == (64, 64, 3)


def test_records_sharing_an_image_land_in_one_split(tmp_path):
    """Captions and questions imported for the same photos, and edits linking two photos: every image in
    exactly one split (its caption, text-to-image and question records together), and the summary's
    images per split add up to the images there are. A record that carries its split keeps it."""
    from arm.data.importers import import_captions, import_edits, import_qa

    src = tmp_path / "photos"
    src.mkdir()
    qa, edits = [], []
    for i in range(120):
        Image.new("RGB", (48, 40), (2 * i, 255 - 2 * i, 90)).save(src / f"p{i}.png")
        (src / f"p{i}.txt").write_text(f"photo number {i}")
        qa.append(json.dumps({"image": f"p{i}.png", "question": "which photo is this?", "answer": str(i)}))
        if i % 2:
            edits.append(json.dumps({"source": f"p{i - 1}.png", "instruction": "next one", "target": f"p{i}.png"}))
    qa.append(json.dumps({"image": "p5.png", "question": "given split", "answer": "test", "split": "test"}))
    (src / "qa.jsonl").write_text("\n".join(qa) + "\n")
    (src / "edits.jsonl").write_text("\n".join(edits) + "\n")
    data = tmp_path / "data"
    import_captions(src, data)
    import_qa(src / "qa.jsonl", data, mode="append")
    import_edits(src / "edits.jsonl", data, mode="append")

    cfg = _cfg(data, tmp_path / "artifacts", "prepare.val_fraction=0.15", "prepare.test_fraction=0.15")
    summary = prepare(cfg)
    splits_of: dict[str, set] = {}
    for split in ("train", "val", "test"):
        for r in load_examples(tmp_path / "artifacts" / "prepare", split):
            for k in ("image", "source_image", "target_image"):
                if k in r:
                    splits_of.setdefault(r[k], set()).add(split)
    assert len(splits_of) == 120 and all(len(s) == 1 for s in splits_of.values())
    assert sum(summary["images"].values()) == 120 and summary["images_in_several_splits"] == 0
    assert splits_of["images/p5.png"] == {"test"} == splits_of["images/p4.png"]   # carried, and its edit partner
    assert min(summary["images"]["val"], summary["images"]["test"]) >= 6


def test_a_given_tokenizer_json_is_used_with_special_tokens_added(tmp_path, tiny_world):
    from arm.text_tokenizer import train_bpe

    tok = train_bpe(["hello world"] * 10, vocab_size=300)
    given = tmp_path / "given.json"
    tok.save(str(given))
    cfg = _cfg(tiny_world, tmp_path / "artifacts", f"prepare.tokenizer_json={given}")
    prepare(cfg)
    used = load_tokenizer(tmp_path / "artifacts" / "prepare" / "tokenizer.json")
    assert used.get_vocab_size() == tok.get_vocab_size()


def test_nothing_usable_stops_with_one_line(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.jsonl").write_text('{"id": "x", "task": "caption", "image": "gone.png", "text": "t"}\n')
    code = main(["prepare", "--config", "configs/default.yaml", f"data.root={data}",
                 f"run.artifacts_dir={tmp_path / 'a'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "missing_file" in err


def test_missing_manifest_names_the_fix(tmp_path, capsys):
    code = main(["prepare", f"data.root={tmp_path / 'nothing'}", f"run.artifacts_dir={tmp_path / 'a'}"])
    err = capsys.readouterr().err
    assert code == 2 and "arm world generate" in err


def test_bad_records_in_the_manifest_are_counted_in_the_summary(tmp_path, tiny_world):
    data = tmp_path / "data"
    shutil.copytree(tiny_world, data)
    with open(data / "manifest.jsonl", "a") as f:
        f.write("{broken\n")
        f.write(json.dumps({"id": "extra", "task": "caption", "image": "images/none.png", "text": "t"}) + "\n")
    summary = prepare(_cfg(data, tmp_path / "artifacts"))
    assert summary["validation"]["skipped"] == {"bad_json": 1, "missing_file": 1}


def test_world_generate_cli_is_byte_identical(tmp_path):
    args = ["world", "generate", "--num-scenes", "10", "--num-eval-scenes", "2", "--num-holdout-scenes", "2",
            "--size", "64", "--seed", "3"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    for p in (tmp_path / "a").rglob("*"):
        if p.is_file():
            assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes()
    assert main(args + ["--out", str(tmp_path / "a")]) == 2  # not empty: refuses
    assert main(["world", "parse", str(next((tmp_path / "a" / "images" / "train").glob("*.png")))]) == 0


@pytest.mark.parametrize("argv", [["config", "show"], ["config", "show", "--config", "configs/arm-7b.yaml"]])
def test_config_show(argv, capsys):
    assert main(argv) == 0
    assert "prepare:" in capsys.readouterr().out


def _one_image_dataset(tmp_path: Path, image: Image.Image, save_kwargs: dict | None = None) -> np.ndarray:
    """Import one captioned picture with `arm import captions`, prepare it, and return its training pixels."""
    from arm.data.importers import import_captions

    src = tmp_path / "photos"
    src.mkdir(parents=True)
    image.save(src / "p.png", **(save_kwargs or {}))
    (src / "p.txt").write_text("a picture")
    import_captions(src, tmp_path / "data", split="train")
    prepare(_cfg(tmp_path / "data", tmp_path / "artifacts", "data.image_size=32"))
    keys, pixels = load_images(tmp_path / "artifacts" / "prepare", "train")
    assert keys == ["images/p.png"]
    return pixels[0]


def test_portrait_and_landscape_photos_are_centre_cropped_not_stretched(tmp_path):
    """A blue square between red bands, tall and wide: the bands are cropped away, the square stays."""
    for name, size, bands in (("portrait", (40, 80), ((0, 0, 40, 20), (0, 60, 40, 80))),
                              ("landscape", (80, 40), ((0, 0, 20, 40), (60, 0, 80, 40)))):
        im = Image.new("RGB", size, (30, 60, 220))
        for band in bands:
            Image.Image.paste(im, (220, 30, 30), band)
        pixels = _one_image_dataset(tmp_path / name, im)
        assert pixels.shape == (32, 32, 3)
        # No band left (stretching would keep a quarter of the picture red); the resampling filter
        # reaches a pixel past the crop at the border, so the interior is exact and the border nearly.
        assert pixels[..., 0].max() < 60, name
        assert np.abs(pixels[2:-2, 2:-2].astype(int) - [30, 60, 220]).max() <= 1, name


def test_grayscale_rgba_16_bit_and_exif_rotated_photos_come_out_as_seen(tmp_path):
    # Grayscale: every channel the grey level.
    grey = _one_image_dataset(tmp_path / "grey", Image.new("L", (32, 32), 90))
    assert (grey == 90).all()
    # RGBA: transparent pixels on white, opaque ones as they are, half-transparent ones blended.
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((200, 0, 0, 255), (0, 0, 16, 32))
    rgba.paste((0, 0, 200, 128), (16, 0, 32, 16))
    px = _one_image_dataset(tmp_path / "rgba", rgba)
    assert px[:, :16].tolist() == [[[200, 0, 0]] * 16] * 32
    assert (px[16:, 16:] == 255).all()
    assert np.abs(px[:16, 16:].astype(int) - [127, 127, 227]).max() <= 2
    # 16-bit grayscale: a ramp over the whole 16-bit range, scaled to 8 bits (Pillow alone clips it to white).
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    px = _one_image_dataset(tmp_path / "wide", Image.fromarray(ramp))
    assert px[0, 0, 0] == 0 and px[0, -1, 0] == 255 and abs(int(px[0, 16, 0]) - 132) <= 2
    assert (np.diff(px[0, :, 0].astype(int)) > 0).all()
    # EXIF orientation 6 (the camera was turned): stored 40 x 20 with its left 15 columns red, shown
    # 20 x 40 with its top 15 rows red; the centre crop (rows 10 to 30) starts red and ends white.
    stored = Image.new("RGB", (40, 20), (255, 255, 255))
    stored.paste((220, 0, 0), (0, 0, 15, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    px = _one_image_dataset(tmp_path / "exif", stored, {"exif": exif})
    assert (px[0] == [220, 0, 0]).all() and (px[-1] == 255).all()
