"""The visual tokenizer as ARM draws it, framework-free:

    image -> frozen backbone -> features f (B, C, g, g)
          -> projection -> FSQ -> codes q (B, d, g, g)  [indices (B, g, g): the visual tokens]
          -> up-projection -> u (B, C, g, g)
          -> heads: pixel decoder (L_pix), u itself vs f (L_feat), pooled u vs text (L_sig), caption decoder (L_cap)

`forward` returns every tensor the four losses need; the losses themselves live beside the training
loop (`arm/tokenizer/train.py`).

>>> import torch
>>> cfg = TokenizerModelConfig(backbone="conv", image_size=64, grid=8, text_dim=16, vocab_size=50)
>>> tok = VisualTokenizer(cfg)
>>> out = tok(torch.zeros(2, 3, 64, 64))
>>> tuple(out.indices.shape), tuple(out.reconstruction.shape)
((2, 8, 8), (2, 3, 64, 64))
>>> torch.equal(tok.encode(torch.zeros(2, 3, 64, 64)), out.indices)
True
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from arm.tokenizer.backbones import ResBlock, build_backbone
from arm.tokenizer.fsq import FSQ


@dataclass
class TokenizerModelConfig:
    backbone: str = "efficientnet-lite0"
    backbone_path: str | None = None
    backbone_stage: int = 4
    image_size: int = 64
    grid: int = 8
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    hidden: int = 128                # projection width before FSQ
    pixel_skip: bool = False         # also give the projection each token's raw p x p pixels
    decoder_channels: int = 128      # pixel-decoder width at token resolution
    decoder_blocks: int = 2
    refine_channels: int = 16
    decoder_upsample: str = "shuffle"  # shuffle | progressive (see PixelDecoder)
    # The pixel decoder also reads the FSQ codes. False here so that checkpoints saved before the option
    # existed load as they were trained; the presets turn it on.
    decoder_reads_codes: bool = False
    # Hidden width of a per-token MLP that draws each p x p patch (shuffle upsampling); 0 = one linear
    # layer, whose rank (decoder_channels) caps what patches it can draw: 128 < 3 * 8 * 8 at the default.
    decoder_patch_hidden: int = 0
    text_dim: int = 384              # the frozen text encoder's embedding size
    vocab_size: int = 512            # caption vocabulary (the prepared text tokenizer)
    caption_dim: int = 128
    caption_layers: int = 2
    max_caption_tokens: int = 48
    caption_lm_path: str | None = None  # a local causal LM for L_cap instead of the small decoder

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TokenizerOutput:
    features: torch.Tensor        # (B, C, g, g) backbone features, the L_feat target
    codes: torch.Tensor           # (B, d, g, g) quantized, in [-1, 1]
    indices: torch.Tensor         # (B, g, g) int64 token ids in [0, codebook_size)
    up: torch.Tensor              # (B, C, g, g) up-projected token features
    reconstruction: torch.Tensor  # (B, 3, S, S) in about [-1, 1]


class PixelDecoder(nn.Module):
    """(B, C, g, g) -> (B, 3, S, S). Most of the width works at token resolution, where a CPU is efficient:
    residual blocks on the grid, then one of two ways up to pixels:

    - `shuffle`: a 1x1 convolution to every pixel of each token's p x p patch (pixel shuffle, p = S / g),
      then a light full-resolution refinement that lets neighbouring patches agree at their seams;
    - `progressive`: log2(p) doublings, each a pixel shuffle by 2 that halves the width followed by a
      3x3 convolution, so edges and corners are drawn at every scale (sharper small shapes).
    """

    def __init__(self, in_channels: int, grid: int, image_size: int, channels: int = 128, blocks: int = 2,
                 refine_channels: int = 16, upsample: str = "shuffle", patch_hidden: int = 0):
        super().__init__()
        if image_size % grid:
            raise ValueError(f"data.image_size must be a multiple of tokenizer.grid, got {image_size} / {grid}")
        if upsample not in ("shuffle", "progressive"):
            raise ValueError(f"tokenizer.decoder_upsample must be 'shuffle' or 'progressive', got {upsample!r}")
        if patch_hidden and upsample != "shuffle":
            raise ValueError("tokenizer.decoder_patch_hidden draws patches for decoder_upsample 'shuffle'; "
                             f"set it to 0 for {upsample!r}")
        patch = image_size // grid
        body = [nn.Conv2d(in_channels, channels, 3, padding=1), *[ResBlock(channels) for _ in range(blocks)],
                nn.GroupNorm(8, channels), nn.SiLU()]
        self.refine = None
        if upsample == "shuffle":
            # (B, C, g, g) -> (B, 3 p^2, g, g) -> pixel shuffle -> (B, 3, S, S). A linear 1x1 layer draws every
            # patch from `channels` basis patches; the MLP (patch_hidden > 0) lifts that rank limit and draws
            # sharp edges as a nonlinear function of the token's features, still at token resolution.
            draw = ([nn.Conv2d(channels, patch_hidden, 1), nn.SiLU(), nn.Conv2d(patch_hidden, 3 * patch**2, 1)]
                    if patch_hidden else [nn.Conv2d(channels, 3 * patch**2, 1)])
            self.body = nn.Sequential(*body, *draw, nn.PixelShuffle(patch))
            if refine_channels:
                self.refine = nn.Sequential(nn.Conv2d(3, refine_channels, 3, padding=1), nn.SiLU(),
                                            nn.Conv2d(refine_channels, 3, 3, padding=1))
            return
        doublings = int(math.log2(patch))
        if 2**doublings != patch:
            raise ValueError(f"decoder_upsample 'progressive' needs a power-of-two patch, got {patch}")
        up, width = [], channels
        for _ in range(doublings):
            narrower = max(refine_channels, width // 2)
            # (B, w, h, h) -> (B, 4 w', h, h) -> pixel shuffle -> (B, w', 2h, 2h)
            up += [nn.Conv2d(width, 4 * narrower, 1), nn.PixelShuffle(2), nn.SiLU(),
                   nn.Conv2d(narrower, narrower, 3, padding=1), nn.SiLU()]
            width = narrower
        self.body = nn.Sequential(*body, *up, nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = self.body(x)  # (B, 3, S, S)
        return pixels + self.refine(pixels) if self.refine is not None else pixels


class CaptionDecoder(nn.Module):
    """A small causal transformer that reads the token grid through cross-attention and predicts the
    caption: L_cap aligns the tokens with language by making them say what the image shows."""

    def __init__(self, in_channels: int, vocab_size: int, dim: int = 128, layers: int = 2, max_tokens: int = 48):
        super().__init__()
        self.memory = nn.Linear(in_channels, dim)
        self.embed = nn.Embedding(vocab_size + 1, dim)  # the last id is the begin-of-caption token
        self.position = nn.Parameter(torch.zeros(max_tokens + 1, dim))
        layer = nn.TransformerDecoderLayer(dim, nhead=4, dim_feedforward=4 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.head = nn.Linear(dim, vocab_size)
        self.bos = vocab_size
        self.max_tokens = max_tokens

    def forward(self, grid_features: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
        """grid_features (B, C, g, g), caption_ids (B, T) -> logits (B, T, V) predicting caption_ids[:, t]."""
        b, t = caption_ids.shape
        memory = self.memory(grid_features.flatten(2).transpose(1, 2))  # (B, g*g, dim)
        inputs = torch.cat([torch.full((b, 1), self.bos, device=caption_ids.device), caption_ids[:, :-1]], dim=1)
        x = self.embed(inputs.clamp(min=0)) + self.position[:t]
        causal = torch.triu(torch.full((t, t), float("-inf"), device=x.device), diagonal=1)
        return self.head(self.decoder(x, memory, tgt_mask=causal))


class LMCaptioner(nn.Module):
    """L_cap through a frozen causal LM from a local checkpoint (real runs): the token grid, projected
    into the LM's embedding space, is a prefix; the LM predicts the caption after it. Only the
    projection trains. Caption ids must be the LM's own (set prepare.tokenizer_json to its tokenizer)."""

    def __init__(self, path: str, in_channels: int):
        super().__init__()
        from transformers import AutoModelForCausalLM

        if not Path(path).is_dir():
            raise ValueError(f"tokenizer.caption_lm_path {path!r} is not a folder; point it at a local causal LM "
                             "checkpoint (config.json and weights)")
        self.lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        self.lm.requires_grad_(False)
        self.lm.eval()
        self.prefix = nn.Linear(in_channels, self.lm.config.hidden_size)

    def train(self, mode: bool = True):
        super().train(mode)
        self.lm.eval()
        return self

    def forward(self, grid_features: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
        """grid_features (B, C, g, g), caption_ids (B, T) -> logits (B, T, V) predicting caption_ids[:, t]."""
        prefix = self.prefix(grid_features.flatten(2).transpose(1, 2))        # (B, g*g, H)
        words = self.lm.get_input_embeddings()(caption_ids.clamp(min=0))       # (B, T, H)
        logits = self.lm(inputs_embeds=torch.cat([prefix, words], dim=1)).logits
        # The position before each caption token predicts it: the last prefix slot predicts token 0.
        return logits[:, prefix.shape[1] - 1:-1]


class VisualTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, grid=cfg.grid, image_size=cfg.image_size,
                                       stage=cfg.backbone_stage, path=cfg.backbone_path)
        c = self.backbone.out_channels
        self.fsq = FSQ(cfg.fsq_levels)
        patch = cfg.image_size // cfg.grid
        project_in = c + (3 * patch * patch if cfg.pixel_skip else 0)
        self.project = nn.Sequential(nn.Conv2d(project_in, cfg.hidden, 3, padding=1), ResBlock(cfg.hidden),
                                     nn.Conv2d(cfg.hidden, self.fsq.dim, 1))
        self.up_project = nn.Sequential(nn.Conv2d(self.fsq.dim, cfg.hidden, 3, padding=1), ResBlock(cfg.hidden),
                                        nn.Conv2d(cfg.hidden, c, 1))
        decoder_in = c + (self.fsq.dim if cfg.decoder_reads_codes else 0)
        self.pixel_decoder = PixelDecoder(decoder_in, cfg.grid, cfg.image_size, cfg.decoder_channels,
                                          cfg.decoder_blocks, cfg.refine_channels, cfg.decoder_upsample,
                                          cfg.decoder_patch_hidden)
        self.text_projection = nn.Linear(c, cfg.text_dim)
        # SigLIP's learnable temperature and bias, initialised as in the paper (t' = log 10, b = -10).
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        self.captioner = (LMCaptioner(cfg.caption_lm_path, c) if cfg.caption_lm_path else
                          CaptionDecoder(c, cfg.vocab_size, cfg.caption_dim, cfg.caption_layers, cfg.max_caption_tokens))

    @property
    def codebook_size(self) -> int:
        return self.fsq.codebook_size

    @property
    def backbone_trainable(self) -> bool:
        return any(p.requires_grad for p in self.backbone.parameters())

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) in [-1, 1] -> backbone features (B, C, g, g)."""
        return self.backbone(images)

    def quantize(self, features: torch.Tensor, images: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.pixel_skip:
            # Exact colours and edge positions beside the semantic features: (B, 3, S, S) -> (B, 3 p^2, g, g).
            assert images is not None, "pixel_skip needs the images"
            features = torch.cat([features, F.pixel_unshuffle(images, self.cfg.image_size // self.cfg.grid)], dim=1)
        z = self.project(features).permute(0, 2, 3, 1)  # (B, g, g, d)
        codes, indices = self.fsq(z)
        return codes.permute(0, 3, 1, 2), indices

    def forward(self, images: torch.Tensor | None = None, features: torch.Tensor | None = None) -> TokenizerOutput:
        """Everything the losses need. Pass cached `features` to skip a frozen backbone."""
        if features is None:
            features = self.features(images)
        codes, indices = self.quantize(features, images)
        up = self.up_project(codes)
        return TokenizerOutput(features, codes, indices, up, self.reconstruct(codes, up))

    def reconstruct(self, codes: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """The pixel head: codes (B, d, g, g) and up-projected features (B, C, g, g) -> (B, 3, S, S).
        L_feat pulls `up` towards the backbone's features, which blur hue and exact edges; with
        `decoder_reads_codes` the decoder also sees the codes themselves, where that detail lives."""
        return self.pixel_decoder(torch.cat([up, codes], dim=1) if self.cfg.decoder_reads_codes else up)

    def pooled_text_embedding(self, up: torch.Tensor) -> torch.Tensor:
        """(B, C, g, g) -> (B, text_dim) unit vectors for L_sig and retrieval."""
        return F.normalize(self.text_projection(up.mean(dim=(2, 3))), dim=-1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) in [-1, 1] -> token ids (B, g, g)."""
        return self.quantize(self.features(images), images)[1]

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """token ids (B, g, g) -> images (B, 3, S, S) clamped to [-1, 1]."""
        codes = self.fsq.indices_to_codes(indices).permute(0, 3, 1, 2)
        return self.reconstruct(codes, self.up_project(codes)).clamp(-1, 1)

    # --- checkpoints: safetensors + config.json -------------------------------------------------

    def save(self, folder: str | Path) -> None:
        """Weights (a frozen backbone is left out: it reloads from its package or folder) and config."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        keep_backbone = self.backbone_trainable
        # Frozen pretrained parts reload from where they came from: leave them out.
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()
                 if (keep_backbone or not k.startswith("backbone.")) and not k.startswith("captioner.lm.")}
        save_file(state, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "VisualTokenizer":
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "model.safetensors").is_file():
            raise ValueError(f"no tokenizer checkpoint in {folder}; run `arm tokenizer` (or `dvc repro tokenizer`)")
        model = cls(TokenizerModelConfig(**json.loads((folder / "config.json").read_text())))
        missing, unexpected = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
        assert not unexpected, f"unexpected weights {unexpected[:5]}"
        assert all(k.startswith(("backbone.", "captioner.lm.")) for k in missing), f"missing weights {missing[:5]}"
        return model.eval()
