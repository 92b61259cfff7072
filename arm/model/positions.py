"""Where an image token sits in its grid: learned row and column embeddings added to image tokens.

A decoder with 1-D positions only knows an image token's cell by counting back to the span's `<|soi|>`,
and the span starts at a different position after every prompt. For a small model that is hard to
learn, and generation (objects at named positions) and editing (target cell i copies source cell i)
both turn on it. So each image token's input is

    embed(id) + row_embedding[i // g] + col_embedding[i % g]      (i = its index in the span, g x g grid)

as 2-D image models do (LlamaGen's 2-D positions, ViT's row/column tables). Text tokens are unchanged.

With `source_embedding` on, an edit also sees its source where it is needed: the input at each position
of the second image span (the target), which predicts cell j, gets a learned projection of the source's
token at cell j added,

    ... + source_projection(embed(source[j]))     (j = the cell predicted next; zero-initialised)

so keeping an untouched cell is reading the residual stream rather than finding source cell j by
attention across the instruction (the autoregressive counterpart of InstructPix2Pix concatenating the
source latents to the denoiser's input). A dropped source (`<|soi|> <|eoi|>`) adds nothing.

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
from dataclasses import asdict, dataclass

import torch
from torch import nn

CONFIG_KEY = "arm_image_positions"


@dataclass(frozen=True)
class ImagePositions:
    """The image-position settings of a model, saved in its `config.json` under `arm_image_positions`.

    >>> settings = ImagePositions(grid=8, image_offset=512, codebook_size=1000, soi_id=3)
    >>> ImagePositions.from_dict(settings.to_dict()) == settings
    True
    """

    grid: int                      # tokens per side of an image span (g x g cells)
    image_offset: int              # the first image id (text ids and specials come before)
    codebook_size: int             # image ids are image_offset .. image_offset + codebook_size - 1
    soi_id: int                    # <|soi|>: an image span starts after it
    span_stride: int = 0           # positions from one span's <|soi|> to the next's (0: ordinary positions)
    source_embedding: bool = False  # an edit's target token also reads the source's token for its cell

    @property
    def cells(self) -> int:
        return self.grid * self.grid

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, settings: "dict | ImagePositions") -> "ImagePositions":
        return settings if isinstance(settings, cls) else cls(**settings)

    @classmethod
    def of(cls, model_or_config) -> "ImagePositions | None":
        """A model's (or a Hugging Face config's) settings; None for a plain causal LM."""
        config = getattr(model_or_config, "config", model_or_config)
        settings = getattr(config, CONFIG_KEY, None)
        return cls.from_dict(settings) if settings else None


def image_cell_indices(ids: torch.Tensor, image_offset: int, codebook_size: int, soi_id: int) -> torch.Tensor:
    """(B, T) ids -> (B, T) index of each image token within its span (0 = first), -1 elsewhere."""
    is_image = (ids >= image_offset) & (ids < image_offset + codebook_size)
    seen = is_image.long().cumsum(-1)                                        # image tokens up to and at t
    at_soi = torch.where(ids == soi_id, seen, torch.zeros_like(seen))
    before_span = torch.cummax(at_soi, dim=-1).values                        # count at the last <|soi|>
    return torch.where(is_image, seen - before_span - 1, torch.full_like(seen, -1))


def source_grid(ids: torch.Tensor, image_offset: int, codebook_size: int, soi_id: int, cells: int,
                index: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) ids -> (B, cells + 1): each row's first image span by cell (its ids), -1 where the span has
    no token for a cell (a dropped source) and in the last column, which stands for "no next cell".
    `index`: the ids' `image_cell_indices`, when the caller has them."""
    if index is None:
        index = image_cell_indices(ids, image_offset, codebook_size, soi_id)
    in_first = ((ids == soi_id).long().cumsum(-1) == 1) & (index >= 0) & (index < cells)
    grid = torch.full((ids.shape[0], cells + 1), -1, dtype=ids.dtype, device=ids.device)
    rows, at = in_first.nonzero(as_tuple=True)
    grid[rows, index[rows, at]] = ids[rows, at]
    return grid


def next_source_ids(ids: torch.Tensor, image_offset: int, codebook_size: int, soi_id: int, cells: int,
                    index: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) ids -> (B, T): at the second image span's `<|soi|>` and image tokens, the first span's id
    for the cell predicted next (cell 0 after the `<|soi|>`, j + 1 after cell j); -1 elsewhere.

    >>> ids = torch.tensor([[7, 3, 10, 11, 4, 8, 3, 12, 13, 4]])           # <|edit|>, source, text, target
    >>> next_source_ids(ids, image_offset=10, codebook_size=90, soi_id=3, cells=2).tolist()
    [[-1, -1, -1, -1, -1, -1, 10, 11, -1, -1]]
    """
    if index is None:  # the ids' image_cell_indices, unless the caller has them
        index = image_cell_indices(ids, image_offset, codebook_size, soi_id)
    is_soi = ids == soi_id
    in_second = (is_soi.long().cumsum(-1) == 2) & (is_soi | (index >= 0))
    predicted = torch.where(is_soi, torch.zeros_like(index), index + 1).clamp(0, cells)   # cells: none next
    grid = source_grid(ids, image_offset, codebook_size, soi_id, cells, index)
    return torch.where(in_second, grid.gather(1, predicted), torch.full_like(ids, -1))


class ImagePositionsMixin:
    """Adds `row_embedding` and `col_embedding` (g rows each) to a causal LM, and with `source_embedding`
    the `source_projection` of an edit's source; see the module docstring."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.image_position_settings = ImagePositions.of(config)
        grid = self.image_position_settings.grid
        self.row_embedding = nn.Embedding(grid, config.hidden_size)
        self.col_embedding = nn.Embedding(grid, config.hidden_size)
        for table in (self.row_embedding, self.col_embedding):
            nn.init.normal_(table.weight, std=config.initializer_range)
        if self.image_position_settings.source_embedding:
            self.source_projection = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
            nn.init.zeros_(self.source_projection.weight)  # starts as the model without it

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is getattr(self, "source_projection", None):
            nn.init.zeros_(module.weight)

    def image_position_embeddings(self, cells: torch.Tensor) -> torch.Tensor:
        """(B, T) cells (-1 = not an image token) -> (B, T, d) embeddings, zero off images."""
        grid = self.image_position_settings.grid
        inside = (cells >= 0)[..., None]
        cells = cells.clamp(0, grid * grid - 1)
        return (self.row_embedding(cells // grid) + self.col_embedding(cells % grid)) * inside

    def source_embeddings(self, source_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) source ids (-1 = none) -> (B, T, d) projected source embeddings, zero where none."""
        inside = (source_ids >= 0)[..., None]
        embeds = self.get_input_embeddings()(source_ids.clamp(min=0)) * inside
        return self.source_projection(embeds)

    def input_embeddings(self, input_ids: torch.Tensor, image_cells: torch.Tensor | None = None,
                         source_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, d) inputs: the token embeddings, plus row and column embeddings on image
        tokens, plus (with `source_embedding`) the source's token for the cell an edit's target predicts
        next. `image_cells` and `source_ids` come from the ids unless given (one-token decoding)."""
        settings = self.image_position_settings
        cells_from_ids = image_cells is None
        if cells_from_ids:
            image_cells = image_cell_indices(input_ids, settings.image_offset, settings.codebook_size, settings.soi_id)
        embeds = self.get_input_embeddings()(input_ids)
        inputs_embeds = embeds + self.image_position_embeddings(image_cells.to(input_ids.device)).to(embeds.dtype)
        if settings.source_embedding:
            if source_ids is None:
                source_ids = next_source_ids(input_ids, settings.image_offset, settings.codebook_size,
                                             settings.soi_id, settings.cells,
                                             index=image_cells if cells_from_ids else None)
            inputs_embeds = inputs_embeds + self.source_embeddings(source_ids.to(input_ids.device)).to(embeds.dtype)
        return inputs_embeds

    def forward(self, input_ids=None, inputs_embeds=None, image_cells: torch.Tensor | None = None,
                source_ids: torch.Tensor | None = None, logits_at: torch.Tensor | None = None, **kwargs):
        """`image_cells` and `source_ids` are computed from `input_ids` in a full forward; one-token
        decoding passes them (the engine knows the cell it samples and the source it holds).
        With `logits_at` ((B, T) bool), only those positions' logits are computed and returned, as an
        (N, V) tensor in row-major order: training's loss needs them only where a target is predicted."""
        settings = self.image_position_settings
        if input_ids is not None and settings.span_stride:
            # Without an explicit mask the library reads a jump in positions as the start of a packed
            # sequence (when it runs without a cache), so aligned spans always come with one.
            if kwargs.get("attention_mask") is None:
                kwargs["attention_mask"] = torch.ones_like(input_ids)
            if kwargs.get("position_ids") is None:  # a full forward (training, scoring): from the ids
                kwargs["position_ids"] = model_positions(self, input_ids, kwargs["attention_mask"])
        if input_ids is not None:
            inputs_embeds = self.input_embeddings(input_ids, image_cells, source_ids)
        if logits_at is not None:
            # About half of the training positions predict a target (the rest are prompts and padding):
            # the output head and the softmax over every id are paid for those rows alone.
            hidden = self.base_model(inputs_embeds=inputs_embeds, **kwargs).last_hidden_state   # (B, T, d)
            return self.get_output_embeddings()(hidden[logits_at.to(hidden.device)])           # (N, V)
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
    settings = ImagePositions.of(model)
    if settings is None:
        return token_positions(ids, mask, None, 0)
    return token_positions(ids, mask, settings.soi_id, settings.span_stride)


@functools.cache
def with_image_positions(base: type) -> type:
    """The subclass of a Hugging Face causal LM class that adds image row and column embeddings."""
    return type(f"ArmImagePositions{base.__name__}", (ImagePositionsMixin, base), {})


def uses_image_positions(model) -> bool:
    return isinstance(model, ImagePositionsMixin)
