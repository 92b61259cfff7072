"""Tokenizer training data: images from the prepared shards, each with its caption (when it has one),
served as deterministic batches: batch k is a pure function of (seed, k), so a run resumed from a
checkpoint at step k sees exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from arm.data.shards import load_examples, load_images
from arm.images import to_tensor


@dataclass
class CaptionedImages:
    keys: list[str]
    pixels: np.ndarray                 # (N, S, S, 3) uint8
    caption_index: np.ndarray          # (N,) index into captions, -1 when the image has none
    captions: list[str]                # unique caption texts
    caption_ids: list[list[int]]       # their text-tokenizer ids
    scenes: list[dict | None]          # world scene graphs when the manifest has them

    def __len__(self) -> int:
        return len(self.keys)


def load_captioned_images(prepare_dir: str | Path, split: str, limit: int | None = None) -> CaptionedImages:
    """Images of a split with the caption of their caption record (else their t2i prompt)."""
    keys, pixels = load_images(prepare_dir, split)
    caption_of: dict[str, tuple[str, list[int]]] = {}
    scene_of: dict[str, dict] = {}
    for r in load_examples(prepare_dir, split):
        if r["task"] in ("caption", "t2i") and "image" in r:
            if r["task"] == "caption" or r["image"] not in caption_of:
                caption_of[r["image"]] = (r["text"], r["text_ids"])
            if "scene" in r.get("meta", {}):
                scene_of[r["image"]] = r["meta"]["scene"]
        if r["task"] == "edit" and "edit" in r.get("meta", {}):
            scene_of.setdefault(r["target_image"], r["meta"]["edit"]["target"])
            scene_of.setdefault(r["source_image"], r["meta"]["scene"])
    if limit is not None:
        keys, pixels = keys[:limit], pixels[:limit]
    captions: list[str] = []
    caption_ids: list[list[int]] = []
    index_of: dict[str, int] = {}
    caption_index = np.full(len(keys), -1, dtype=np.int64)
    for i, key in enumerate(keys):
        if key in caption_of:
            text, ids = caption_of[key]
            if text not in index_of:
                index_of[text] = len(captions)
                captions.append(text)
                caption_ids.append(ids)
            caption_index[i] = index_of[text]
    return CaptionedImages(keys, pixels, caption_index, captions, caption_ids, [scene_of.get(k) for k in keys])


class StepBatches(torch.utils.data.Dataset):
    """Item k is training batch `start_step + k`: `batch_size` images drawn with replacement by a
    generator seeded from (seed, step). Use with `DataLoader(batch_size=None)`."""

    def __init__(self, data: CaptionedImages, features: torch.Tensor | None, text_emb: torch.Tensor,
                 batch_size: int, num_steps: int, seed: int, max_caption_tokens: int, start_step: int = 0):
        self.data, self.features, self.text_emb = data, features, text_emb
        self.batch_size, self.num_steps, self.seed, self.start_step = batch_size, num_steps, seed, start_step
        self.max_caption_tokens = max_caption_tokens

    def __len__(self) -> int:
        return max(0, self.num_steps - self.start_step)

    def __getitem__(self, k: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.start_step + k)
        idx = torch.randint(len(self.data), (self.batch_size,), generator=g)
        return make_batch(self.data, idx, self.features, self.text_emb, self.max_caption_tokens)


class EvalBatches(torch.utils.data.Dataset):
    """The first `limit` images in order, in batches."""

    def __init__(self, data: CaptionedImages, features: torch.Tensor | None, text_emb: torch.Tensor,
                 batch_size: int, max_caption_tokens: int):
        self.data, self.features, self.text_emb = data, features, text_emb
        self.batch_size, self.max_caption_tokens = batch_size, max_caption_tokens

    def __len__(self) -> int:
        return (len(self.data) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, k: int) -> dict:
        idx = torch.arange(k * self.batch_size, min(len(self.data), (k + 1) * self.batch_size))
        return make_batch(self.data, idx, self.features, self.text_emb, self.max_caption_tokens)


def make_batch(data: CaptionedImages, idx: torch.Tensor, features: torch.Tensor | None, text_emb: torch.Tensor,
               max_caption_tokens: int) -> dict:
    groups = torch.as_tensor(data.caption_index[idx.numpy()])
    # Pad only to the longest caption in the batch: the caption decoder's cost grows with length.
    longest = max([len(data.caption_ids[g]) for g in groups.tolist() if g >= 0], default=1)
    caption_ids = torch.full((len(idx), min(max_caption_tokens, longest)), -100, dtype=torch.long)
    for row, g in enumerate(groups.tolist()):
        if g >= 0:
            ids = data.caption_ids[g][:max_caption_tokens]
            caption_ids[row, : len(ids)] = torch.as_tensor(ids)
    batch = {
        "images": to_tensor(data.pixels[idx.numpy()]),            # (B, 3, S, S) in [-1, 1]
        "caption_group": groups,                                   # (B,) -1 = no caption
        "caption_ids": caption_ids,                                # (B, T) padded with -100
        "text_emb": text_emb[groups.clamp(min=0)] if len(text_emb) else torch.zeros(len(idx), 1),
    }
    if features is not None:
        batch["features"] = features[idx].float()
    return batch
