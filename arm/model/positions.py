"""Where an image token sits in its grid: learned row and column embeddings added to image tokens.

A decoder with 1-D positions only knows an image token's cell by counting back to the span's `<|soi|>`,
and the span starts at a different position after every prompt. For a small model that is hard to
learn, and generation (objects at named positions) and editing (target cell i copies source cell i)
both turn on it. So each image token's input is

    embed(id) + row_embedding[i // g] + col_embedding[i % g]      (i = its index in the span, g x g grid)

as 2-D image models do (LlamaGen's 2-D positions, ViT's row/column tables). Text tokens are unchanged.

The embeddings live on a subclass of the Hugging Face causal LM (`with_image_positions(Qwen2ForCausalLM)`),
so saving, loading, FSDP and the KV cache stay the library's; the settings travel in `config.json` as
`arm_image_positions`. The cell of each token comes from the ids: inside a full sequence, from the
count of image ids since the last `<|soi|>`; when decoding one token at a time the caller passes
`image_cells` (the engine knows which cell it is sampling).

>>> ids = torch.tensor([[7, 3, 10, 11, 12, 13, 4, 9]])          # 3 = <|soi|>, 4 = <|eoi|>, images >= 10
>>> image_cell_indices(ids, image_offset=10, codebook_size=90, soi_id=3).tolist()
[[-1, -1, 0, 1, 2, 3, -1, -1]]
"""

from __future__ import annotations

import functools

import torch
from torch import nn

CONFIG_KEY = "arm_image_positions"


def image_cell_indices(ids: torch.Tensor, image_offset: int, codebook_size: int, soi_id: int) -> torch.Tensor:
    """(B, T) ids -> (B, T) index of each image token within its span (0 = first), -1 elsewhere."""
    is_image = (ids >= image_offset) & (ids < image_offset + codebook_size)
    seen = is_image.long().cumsum(-1)                                        # image tokens up to and at t
    at_soi = torch.where(ids == soi_id, seen, torch.zeros_like(seen))
    before_span = torch.cummax(at_soi, dim=-1).values                        # count at the last <|soi|>
    return torch.where(is_image, seen - before_span - 1, torch.full_like(seen, -1))


class ImagePositionsMixin:
    """Adds `row_embedding` and `col_embedding` (g rows each) to a causal LM; see the module docstring."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        grid = config.arm_image_positions["grid"]
        self.row_embedding = nn.Embedding(grid, config.hidden_size)
        self.col_embedding = nn.Embedding(grid, config.hidden_size)
        for table in (self.row_embedding, self.col_embedding):
            nn.init.normal_(table.weight, std=config.initializer_range)

    def image_position_embeddings(self, cells: torch.Tensor) -> torch.Tensor:
        """(B, T) cells (-1 = not an image token) -> (B, T, d) embeddings, zero off images."""
        grid = self.config.arm_image_positions["grid"]
        inside = (cells >= 0)[..., None]
        cells = cells.clamp(0, grid * grid - 1)
        return (self.row_embedding(cells // grid) + self.col_embedding(cells % grid)) * inside

    def forward(self, input_ids=None, inputs_embeds=None, image_cells: torch.Tensor | None = None, **kwargs):
        if input_ids is not None and self.config.arm_image_positions.get("span_stride"):
            # Without an explicit mask the library reads a jump in positions as the start of a packed
            # sequence (when it runs without a cache), so aligned spans always come with one.
            if kwargs.get("attention_mask") is None:
                kwargs["attention_mask"] = torch.ones_like(input_ids)
            if kwargs.get("position_ids") is None:  # a full forward (training, scoring): from the ids
                kwargs["position_ids"] = model_positions(self, input_ids, kwargs["attention_mask"])
        if input_ids is not None:
            if image_cells is None:
                settings = self.config.arm_image_positions
                image_cells = image_cell_indices(input_ids, settings["image_offset"], settings["codebook_size"],
                                                 settings["soi_id"])
            embeds = self.get_input_embeddings()(input_ids)
            inputs_embeds = embeds + self.image_position_embeddings(image_cells.to(input_ids.device)).to(embeds.dtype)
        return super().forward(input_ids=None, inputs_embeds=inputs_embeds, **kwargs)


def token_positions(ids: torch.Tensor, mask: torch.Tensor, soi_id: int | None = None,
                    span_stride: int = 0) -> torch.Tensor:
    """(B, T) ids and attention mask -> (B, T) position ids. Real tokens are counted (left padding takes
    no position, so a padded row reads as the same prompt alone). With `span_stride`, an image span after
    the first in a row starts `span_stride` positions after the previous span's `<|soi|>` (the text in
    between leaves a gap), or where it falls if that text is longer: an edit's target cell i then sits at
    the same rotary distance from source cell i whatever the instruction's length, so copying a cell is a
    fixed-offset lookup (as FLUX Kontext gives source and target the same 2-D positions).

    >>> ids = torch.tensor([[0, 7, 3, 10, 11, 4, 8, 3, 10]])                 # pad, <|edit|>, source, text, target
    >>> token_positions(ids, (ids != 0).long(), soi_id=3, span_stride=6).tolist()
    [[0, 0, 1, 2, 3, 4, 5, 7, 8]]
    """
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    if not span_stride:
        return positions
    is_soi = (ids == soi_id) & mask.bool()
    span = is_soi.long().cumsum(-1)                                   # image spans begun up to and at t
    spans = int(span.max()) if span.numel() else 0
    for r in range(2, spans + 1):
        previous = (positions * (is_soi & (span == r - 1))).sum(-1)      # (B,) the previous <|soi|>'s position
        here = is_soi & (span == r)
        shift = ((previous + span_stride - (positions * here).sum(-1)).clamp(min=0)) * here.any(-1)
        positions = positions + shift[:, None] * (span >= r)
    return positions


def model_positions(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`token_positions` with the model's own span stride (none for a plain causal LM)."""
    settings = getattr(model.config, CONFIG_KEY, None) or {}
    return token_positions(ids, mask, settings.get("soi_id"), settings.get("span_stride", 0))


@functools.cache
def with_image_positions(base: type) -> type:
    """The subclass of a Hugging Face causal LM class that adds image row and column embeddings."""
    return type(f"ArmImagePositions{base.__name__}", (ImagePositionsMixin, base), {})


def uses_image_positions(model) -> bool:
    return isinstance(model, ImagePositionsMixin)
