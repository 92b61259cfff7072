"""Stage `prepare`: validate the manifest, assign splits, train (or load) the text tokenizer and write
training shards.

    arm prepare --config configs/default.yaml            # CPU, about a minute on the default world

Reads `data/manifest.jsonl` (tracked by data.dvc) and writes `artifacts/prepare/` (see
`arm.data.shards` for the layout). Bad records are skipped and counted in `summary.json`; nothing
usable stops with a one-line error.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from arm.config import SPLITS, ArmConfig
from arm.data.manifest import IMAGE_FIELDS, Limits, Report, read_manifest
from arm.images import square_rgb
from arm.outputs import clear_outputs, refuse_foreign_files
from arm.progress import progress
from arm.text_tokenizer import load_tokenizer, train_bpe

OUTPUTS = ("examples", "images", "tokenizer.json", "summary.json")   # the layout in arm/data/shards.py


def assign_split(record_id: str, val_fraction: float, test_fraction: float) -> str:
    """A stable split from a hash of the id: adding records never moves existing ones."""
    u = int.from_bytes(hashlib.sha1(record_id.encode("utf-8")).digest()[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def assign_splits(records: list[dict], val_fraction: float, test_fraction: float) -> None:
    """Give every record without a split one, in place, so that records sharing an image land in one
    split: an image's caption and its text-to-image record, its questions, an edit's source and target
    and whatever else shows either of them. Records sharing images form groups (connected through any
    image field); a group takes the split one of its records carries (the first in manifest order), else
    the hash of its first image path (`assign_split`), so adding records that touch none of a group's
    images never moves it. Records without images split by their id."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for r in records:
        images = [r[k] for k in IMAGE_FIELDS if k in r]
        for other in images[1:]:
            a, b = find(images[0]), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)     # the smaller path names the group
    given: dict[str, str] = {}
    for r in records:
        images = [r[k] for k in IMAGE_FIELDS if k in r]
        if images and "split" in r:
            given.setdefault(find(images[0]), r["split"])
    for r in records:
        if "split" in r:
            continue
        images = [r[k] for k in IMAGE_FIELDS if k in r]
        if not images:
            r["split"] = assign_split(r["id"], val_fraction, test_fraction)
            continue
        group = find(images[0])                   # the group's smallest image path
        r["split"] = given.get(group) or assign_split(group, val_fraction, test_fraction)


def images_in_several_splits(by_split: dict[str, list[dict]]) -> int:
    """How many images the records of more than one split show."""
    seen: Counter = Counter()
    for records in by_split.values():
        seen.update({r[k] for r in records for k in IMAGE_FIELDS if k in r})
    return sum(1 for n in seen.values() if n > 1)


def load_square(path: Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8 of the image file at `path` (`arm.images.square_rgb`)."""
    with Image.open(path) as im:
        return square_rgb(im, size)


def text_tokenizer_source(cfg: ArmConfig) -> str | None:
    """The tokenizer.json the text side uses: `prepare.tokenizer_json` when set, else the one beside
    `pretrain.pretrained_path` (a pretrained LM's ids must keep the meaning they were trained with), else
    None: a byte-level BPE is trained on the data."""
    if cfg.prepare.tokenizer_json:
        return cfg.prepare.tokenizer_json
    pretrained = cfg.pretrain.pretrained_path
    if pretrained and (Path(pretrained) / "tokenizer.json").is_file():
        print(f"prepare: text tokenizer from {Path(pretrained) / 'tokenizer.json'} (pretrain.pretrained_path's "
              "own; set prepare.tokenizer_json to use another)", file=sys.stderr)
        return str(Path(pretrained) / "tokenizer.json")
    return None


def prepare(cfg: ArmConfig) -> dict:
    out = cfg.stage_dir("prepare")
    refuse_foreign_files(out, OUTPUTS, "prepare")
    root = Path(cfg.data.root)
    report = Report()
    records = read_manifest(cfg.manifest_path, Limits.from_config(cfg.data), report)
    if not records:
        reasons = ", ".join(f"{n} {r}" for r, n in report.skipped.most_common()) or "the manifest is empty"
        raise ValueError(f"no usable records in {cfg.manifest_path} ({reasons})")
    assign_splits(records, cfg.prepare.val_fraction, cfg.prepare.test_fraction)
    by_split: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_split[r["split"]].append(r)
    if not by_split["train"]:
        raise ValueError(f"no training records in {cfg.manifest_path}: every record has a split other than "
                         "'train'; remove the 'split' fields or mark some records 'train'")

    clear_outputs(out, OUTPUTS)
    (out / "examples").mkdir(parents=True)
    (out / "images").mkdir()

    # Text tokenizer: a pretrained LM's own, or trained on training texts only, so evaluation text never
    # shapes the vocabulary.
    source = text_tokenizer_source(cfg)
    if source:
        tokenizer = load_tokenizer(source)
    else:
        texts = [r[k] for r in by_split["train"] for k in ("text", "answer") if k in r]
        tokenizer = train_bpe(texts, cfg.prepare.vocab_size, cfg.prepare.min_frequency)
    tokenizer.save(str(out / "tokenizer.json"))

    counts: dict[str, dict[str, int]] = {}
    image_counts: dict[str, int] = {}
    for split in SPLITS:
        split_records = by_split.get(split, [])
        # Tokenise in one batch call per field (the Rust side runs it in parallel).
        for field in ("text", "answer"):
            idx = [i for i, r in enumerate(split_records) if field in r]
            encoded = tokenizer.encode_batch([split_records[i][field] for i in idx], add_special_tokens=False)
            for i, enc in zip(idx, encoded):
                split_records[i][f"{field}_ids"] = enc.ids
        with open(out / "examples" / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for r in split_records:
                f.write(json.dumps(r, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n")
        counts[split] = dict(sorted(Counter(r["task"] for r in split_records).items()))
        keys = sorted({r[k] for r in split_records for k in IMAGE_FIELDS if k in r})
        image_counts[split] = len(keys)
        _write_shards(out / "images", split, keys, root, cfg.data.image_size, cfg.prepare.shard_size)

    shared = images_in_several_splits(by_split)
    if shared:
        print(f"prepare: warning: {shared} images appear in more than one split, as records that carry their own "
              "split put them; remove those records' split fields to let prepare keep each image in one split",
              file=sys.stderr)
    summary = {
        "records": counts,
        "images": image_counts,
        "images_in_several_splits": shared,
        "vocab_size": tokenizer.get_vocab_size(),
        "image_size": cfg.data.image_size,
        "validation": report.to_dict(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(f"prepare: {report.summary()}; images per split {image_counts}; vocabulary {tokenizer.get_vocab_size()}")
    return summary


def _write_shards(folder: Path, split: str, keys: list[str], root: Path, size: int, shard_size: int) -> None:
    for start in progress(range(0, len(keys), shard_size), desc=f"prepare {split} shards"):
        chunk = keys[start:start + shard_size]
        pixels = np.stack([load_square(root / k, size) for k in chunk])  # (N, S, S, 3)
        np.savez_compressed(folder / f"{split}-{start // shard_size:05d}.npz",
                            keys=np.array(chunk), pixels=pixels)
