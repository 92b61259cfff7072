"""What a tokenizer is worth, measured on held-out images:

- reconstruction PSNR, and exact scene recovery verifier(decode(encode(x))) == scene on world data;
- code usage (fraction of the codebook used) and perplexity of the code distribution;
- language alignment: caption -> image retrieval among 100 candidates with distinct scenes (R@1, R@5);
- semantic discriminability: a linear probe on pooled token features predicting the colour and shape of
  one-object scenes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from arm.images import to_tensor, to_uint8
from arm.tokenizer.data import CaptionedImages
from arm.tokenizer.model import VisualTokenizer


@torch.no_grad()
def encode_all(model: VisualTokenizer, pixels: np.ndarray, batch_size: int = 128,
               reconstruct: bool = True) -> dict[str, torch.Tensor]:
    """indices (N, g, g), up-projected features (N, C, g, g), their mean over the grid (N, C) and, with
    `reconstruct`, reconstructions (N, 3, S, S)."""
    indices, recon, up_all = [], [], []
    for start in range(0, len(pixels), batch_size):
        images = to_tensor(pixels[start:start + batch_size])
        codes, idx = model.quantize(model.features(images), images)
        up = model.up_project(codes)
        indices.append(idx)
        up_all.append(up)
        if reconstruct:
            recon.append(model.reconstruct(codes, up).clamp(-1, 1))
    up = torch.cat(up_all)
    out = {"indices": torch.cat(indices), "up": up, "pooled": up.mean(dim=(2, 3))}
    if reconstruct:
        out["reconstruction"] = torch.cat(recon)
    return out


def code_statistics(indices: torch.Tensor, codebook_size: int) -> dict[str, float]:
    counts = torch.bincount(indices.flatten(), minlength=codebook_size).float()
    p = counts / counts.sum()
    nz = p[p > 0]
    return {"code_usage": float((counts > 0).float().mean()), "perplexity": float(torch.exp(-(nz * nz.log()).sum()))}


def exact_recovery(reconstructions: torch.Tensor, scenes: list[dict | None], size: int) -> float | None:
    from arm.world.scene import Scene
    from arm.world.verifier import parse

    pairs = [(r, s) for r, s in zip(to_uint8(reconstructions), scenes) if s is not None]
    if not pairs:
        return None
    return float(np.mean([parse(r, size) == Scene.from_dict(s) for r, s in pairs]))


@torch.no_grad()
def retrieval(model: VisualTokenizer, up: torch.Tensor, data: CaptionedImages, text_emb: torch.Tensor,
              candidates: int = 100) -> dict[str, float] | None:
    """Caption -> image among `candidates` images with distinct captions (distinct scenes), averaged over
    as many disjoint groups as the data holds."""
    seen, chosen = set(), []
    for i, c in enumerate(data.caption_index.tolist()):
        if c >= 0 and c not in seen:
            seen.add(c)
            chosen.append(i)
    groups = [chosen[k:k + candidates] for k in range(0, len(chosen) - candidates + 1, candidates)]
    if not groups:
        return None
    r1, r5 = [], []
    for group in groups:
        idx = torch.tensor(group)
        image_emb = model.pooled_text_embedding(up[idx])                 # (K, D)
        texts = text_emb[torch.as_tensor(data.caption_index[group])]     # (K, D)
        ranks = (texts @ image_emb.T).argsort(dim=1, descending=True)    # (K, K)
        target = torch.arange(len(group))[:, None]
        r1.append((ranks[:, :1] == target).any(dim=1).float().mean().item())
        r5.append((ranks[:, :5] == target).any(dim=1).float().mean().item())
    return {"retrieval_r1": float(np.mean(r1)), "retrieval_r5": float(np.mean(r5)), "retrieval_groups": len(groups)}


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, steps: int = 300) -> float:
    """Accuracy of a logistic-regression probe (standardised features, full-batch LBFGS)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(0)
    probe = torch.nn.Linear(train_x.shape[1], num_classes)
    opt = torch.optim.LBFGS(probe.parameters(), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(probe(train_x), train_y) + 1e-3 * probe.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float((probe(test_x).argmax(1) == test_y).float().mean())


def one_object_labels(scenes: list[dict | None]) -> tuple[list[int], list[int], list[int]]:
    """Indices of one-object scenes with their colour and shape class ids."""
    from arm.world.scene import COLORS, SHAPES

    idx, colours, shapes = [], [], []
    for i, s in enumerate(scenes):
        if s is not None and len(s["objects"]) == 1:
            idx.append(i)
            colours.append(COLORS.index(s["objects"][0]["color"]))
            shapes.append(SHAPES.index(s["objects"][0]["shape"]))
    return idx, colours, shapes


def probe_scores(train_pooled: torch.Tensor, train_scenes: list[dict | None], test_pooled: torch.Tensor,
                 test_scenes: list[dict | None]) -> dict[str, float] | None:
    tr, trc, trs = one_object_labels(train_scenes)
    te, tec, tes = one_object_labels(test_scenes)
    if len(tr) < 20 or len(te) < 10:
        return None
    x_tr, x_te = train_pooled[tr], test_pooled[te]
    colour = linear_probe(x_tr, torch.tensor(trc), x_te, torch.tensor(tec), 6)
    shape = linear_probe(x_tr, torch.tensor(trs), x_te, torch.tensor(tes), 4)
    return {"probe_color": colour, "probe_shape": shape, "probe_samples": len(te)}
