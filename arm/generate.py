"""The inference engine for all three tasks, on any Hugging Face causal LM over the unified id space.

- A KV cache: the prompt is run once (prefill), then one token per step.
- Classifier-free guidance with the conditional and unconditional rows in one batch (Janus's layout),
  for editing with separate text and image guidance (InstructPix2Pix's combination):
      logits = u + s_img * (src_only - u) + s_txt * (cond - src_only)
- Inside an image span only image ids can be sampled, and exactly H x W of them are.
- Temperature, top-k, top-p and a seed; greedy or sampled text for understanding.

Prompts of different lengths are left-padded; positions count real tokens only, so a padded row gives
the same logits as the same prompt alone.

    engine = Engine(model, vocab)
    codes = engine.generate_images([prefix], num_tokens=64, sampling=Sampling(temperature=0.5, seed=0))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arm.model.decoding import SLOT_BUCKET, StaticDecoder, compile_step, forget_from, supports
from arm.model.positions import ImagePositions, model_positions, source_grid
from arm.model.vocab import EOS, Vocab


@dataclass
class Sampling:
    temperature: float = 1.0
    top_k: int = 0          # 0 = off
    top_p: float = 1.0      # 1 = off
    seed: int | None = None


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the top-k and the smallest nucleus of mass top_p; the rest become -inf. logits (B, V)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p (the first token always stays).
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


GREEDY_BELOW = 1e-4


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) -> (B,) token ids; temperature 0 is greedy (and so is any temperature too small for the
    division to stay finite: the limit of sampling as T -> 0 is the argmax)."""
    if sampling.temperature < GREEDY_BELOW:
        return logits.argmax(-1)
    logits = filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


@dataclass
class RowSampling:
    """Each row's sampling settings as (B, 1) tensors, so one batch of rows with different temperatures,
    top-k and top-p turns its logits into distributions in a few tensor ops (`row_probs`), inside a
    compiled decoding step too. `any_top_k` / `any_top_p`: whether any row filters at all (they skip
    the sorts when none does)."""

    temperature: torch.Tensor   # (B, 1) float32
    top_k: torch.Tensor         # (B, 1) long, 0 = off
    top_p: torch.Tensor         # (B, 1) float32, 1 = off
    any_top_k: bool
    any_top_p: bool

    @classmethod
    def of(cls, samplings: list[Sampling], device: torch.device, codebook: int) -> "RowSampling":
        top_k = [s.top_k if 0 < s.top_k < codebook else 0 for s in samplings]
        return cls(torch.tensor([[s.temperature] for s in samplings], dtype=torch.float32, device=device),
                   torch.tensor([[k] for k in top_k], dtype=torch.long, device=device),
                   torch.tensor([[s.top_p] for s in samplings], dtype=torch.float32, device=device),
                   any(top_k), any(s.top_p < 1.0 for s in samplings))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.temperature, self.top_k, self.top_p


def row_probs(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
              any_top_k: bool = True, any_top_p: bool = True) -> torch.Tensor:
    """(B, ..., K) logits -> (B, ..., K) the distribution row b samples from: its temperature, top-k and
    top-p ((B, 1) each, `RowSampling`) applied and normalised; a greedy row (temperature ~ 0) one-hot at
    its argmax. Row by row the same as `filter_logits` and a softmax at that row's settings.

    >>> logits = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
    >>> probs = row_probs(logits, torch.tensor([[0.0], [1.0]]), torch.tensor([[0], [2]]), torch.tensor([[1.0], [1.0]]))
    >>> [[round(p, 3) for p in row] for row in probs.tolist()]
    [[1.0, 0.0, 0.0], [0.731, 0.269, 0.0]]
    """
    x = logits.float()
    per_row = (x.shape[0],) + (1,) * (x.dim() - 1)      # (B, 1, ..., 1): broadcasts over steps and codes
    temperature, top_k, top_p = temperature.view(per_row), top_k.view(per_row), top_p.view(per_row)
    greedy = temperature < GREEDY_BELOW
    scaled = x / torch.where(greedy, torch.ones_like(temperature), temperature)
    if any_top_k or any_top_p:
        ranked, order = torch.sort(scaled, dim=-1, descending=True)
        if any_top_k:   # keep logits >= the k-th largest (row k = 0: all)
            k = torch.where(top_k > 0, top_k, x.shape[-1])
            kth = ranked.gather(-1, (k - 1).expand(*x.shape[:-1], 1))
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
            ranked = ranked.masked_fill(ranked < kth, float("-inf"))
        if any_top_p:   # drop a token when the mass before it already reaches top_p (the first always stays)
            mass = ranked.softmax(-1)
            drop = (mass.cumsum(-1) - mass >= top_p) & (top_p < 1.0)
            scaled = scaled.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    probs = scaled.softmax(-1)
    argmax = torch.zeros_like(probs).scatter_(-1, x.argmax(-1, keepdim=True), 1.0)
    return torch.where(greedy, argmax, probs)


def guidance_mix(all_logits: torch.Tensor, images: int, lo: int, hi: int, guided: bool, three_rows: bool,
                 text_scale: torch.Tensor, image_scale: torch.Tensor, plain: torch.Tensor) -> torch.Tensor:
    """(copies x B, [T,] V) logits of every row -> (B, [T,] K): the image logits each image samples from,
    its rows mixed by classifier-free guidance (conditional first, then unconditional, then source-only).
    Scales and `plain` (rows at scale 1, exactly conditional) are (B, 1) or (1, 1)."""
    image_logits = all_logits[..., lo:hi].float()  # constrained: only image ids inside the span
    c = image_logits[:images]
    if not guided:
        return c
    shape = (images,) + (1,) * (image_logits.dim() - 1)
    ts, is_, unguided = (x.expand(images, 1).reshape(shape) for x in (text_scale, image_scale, plain))
    u = image_logits[images:2 * images]
    if three_rows:
        src = image_logits[2 * images:3 * images]
        # A row at source scale 1 mixes exactly as it would alone, in the two-row batch.
        mixed = torch.where(is_ == 1.0, src + ts * (c - src), u + is_ * (src - u) + ts * (c - src))
    else:
        mixed = u + ts * (c - u)
    # Rows at scale 1 are exactly conditional (u + 1 * (c - u) can round differently from c).
    return torch.where(unguided, c, mixed)


def image_probs(all_logits: torch.Tensor, mix: tuple, sampler: tuple) -> torch.Tensor:
    """(copies x B, [T,] V) logits -> (B, [T,] K) what each image samples: `guidance_mix`, then `row_probs`.
    mix: (images, lo, hi, guided, three_rows); sampler: (text_scale, image_scale, plain, temperature,
    top_k, top_p, any_top_k, any_top_p), as `Engine.generate_images` builds them."""
    images, lo, hi, guided, three_rows = mix
    text_scale, image_scale, plain, temperature, top_k, top_p, any_top_k, any_top_p = sampler
    mixed = guidance_mix(all_logits, images, lo, hi, guided, three_rows, text_scale, image_scale, plain)
    return row_probs(mixed, temperature, top_k, top_p, any_top_k, any_top_p)


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: (..., K) weights (not necessarily normalised) and (...) uniforms in [0, 1)
    -> (...) the first id whose cumulative weight passes u x total. An id of weight 0 is never drawn.

    >>> draw(torch.tensor([[0.0, 0.5, 0.0, 0.5]]), torch.tensor([0.7])).tolist()
    [3]
    """
    cdf = probs.cumsum(-1)
    target = (u * cdf[..., -1]).unsqueeze(-1).contiguous()
    return torch.searchsorted(cdf.contiguous(), target, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def row_uniforms(sampling: Sampling | list[Sampling], rows: int, iterations: int, per_iteration: int,
                 device: torch.device) -> torch.Tensor:
    """(rows, iterations, per_iteration) uniforms: every random number a decode will use, drawn up front.
    With one sampling per row, row b's come from its own generator seeded `samplings[b].seed`, so they
    do not depend on the other rows of the batch; with one sampling for all rows, from one generator
    (unseeded: torch's global one)."""
    shape = (iterations, per_iteration)
    if isinstance(sampling, list):
        parts = [torch.rand(shape, generator=torch.Generator().manual_seed(s.seed)) if s.seed is not None
                 else torch.rand(shape) for s in sampling]
        return torch.stack(parts).to(device)
    seed = sampling.seed
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.rand((rows, *shape), generator=generator).to(device)


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, T) and attention mask (B, T), shorter rows padded on the left."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq):] = torch.as_tensor(seq)
            mask[row, width - len(seq):] = 1
    return ids, mask


def _row_scales(scale: float | list[float], rows: int) -> torch.Tensor:
    """A guidance scale for every row, shaped (B, 1) to broadcast over the codebook (or (1, 1) if shared)."""
    t = torch.as_tensor(scale, dtype=torch.float32).reshape(-1, 1)
    if t.shape[0] not in (1, rows):
        raise ValueError(f"{t.shape[0]} guidance scales for {rows} rows")
    return t


def cache_argument(model) -> str:
    """The keyword a model's forward takes its KV cache by: `cache` from transformers 5.2x on,
    `past_key_values` before (and, deprecated, until 5.40)."""
    import inspect

    parameters = inspect.signature(model.base_model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class Engine:
    def __init__(self, model, vocab: Vocab, static_cache: bool = True, compile: bool = False):
        """`static_cache`: decode with `StaticDecoder` (a preallocated cache, a few plain ops per layer)
        where it supports the model; False, or a model it does not support, runs the library's forward
        with its `DynamicCache`. Both give the same logits (tests/test_decoding.py). `compile`: the
        static decoder's steps through torch.compile (each new batch size compiles once)."""
        self.model = model.eval()
        self.vocab = vocab
        self.device = next(model.parameters()).device
        self.positions = ImagePositions.of(model)   # None: a plain causal LM without image positions
        self.image_positions = self.positions is not None
        self.source_embedding = self.image_positions and self.positions.source_embedding
        self.cache_argument = cache_argument(model)
        self.decoder = StaticDecoder(model, compile=compile) if static_cache and supports(model) else None
        # An image-decoding step as one function of tensors; compiled whole with the decoder's steps.
        self._plain_step_run, self._jacobi_step_run = self._plain_step, self._jacobi_step
        if self.decoder is not None and self.decoder.compiled:
            self._plain_step_run = compile_step(self._plain_step)
            self._jacobi_step_run = compile_step(self._jacobi_step)

    def embed(self, ids: torch.Tensor, image_cells: torch.Tensor | None = None,
              source_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, d) the model's inputs (with image positions and source, where it has them)."""
        if self.image_positions:
            return self.model.input_embeddings(ids, image_cells, source_ids)
        return self.model.get_input_embeddings()(ids)

    # --- the two primitives: prefill a batch, then extend it one token at a time -------------------

    @torch.no_grad()
    def prefill(self, sequences: list[list[int]], new_tokens: int):
        """Run the prompts; returns the last position's logits (B, V) and the decoding state, with room
        for `new_tokens` more tokens per row."""
        ids, mask = left_pad(sequences, self.vocab.pad)
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = model_positions(self.model, ids, mask)
        state = {"next_position": positions[:, -1] + 1}
        if self.source_embedding:  # each row's source by cell, for the target tokens sampled next
            s = self.positions
            state["source_grid"] = source_grid(ids, s.image_offset, s.codebook_size, s.soi_id, s.cells)
        if self.decoder is not None:
            slots = ids.shape[1] + new_tokens
            if self.decoder.compiled:  # caches of a few sizes, so compiled steps are reused across calls
                slots = -(-slots // SLOT_BUCKET) * SLOT_BUCKET
            state["cache"] = self.decoder.new_cache(len(sequences), slots)
            logits = self.decoder.forward(self.embed(ids), positions, state["cache"], real=mask.bool(),
                                          last_only=True, prefill=True)
            return logits.float(), state
        from transformers import DynamicCache

        state["cache"], state["mask"] = DynamicCache(), mask  # the cache is filled in place by every forward
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **{self.cache_argument: state["cache"]})
        return out.logits[:, -1].float(), state

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, state: dict, image_cell: int = -1) -> torch.Tensor:
        """Append `tokens` (B,) and return the next logits (B, V). `image_cell`: the tokens' index in the
        image span being sampled (-1 for text), for models with image row and column embeddings."""
        extra = {"image_cells": torch.full_like(tokens[:, None], image_cell)} if self.image_positions else {}
        if self.source_embedding:  # the source's token for the cell these tokens predict (none after text)
            grid = state["source_grid"]
            column = min(image_cell + 1, grid.shape[1] - 1) if image_cell >= 0 else grid.shape[1] - 1
            extra["source_ids"] = grid[:, column:column + 1]
        positions = state["next_position"][:, None]
        state["next_position"] = state["next_position"] + 1
        if self.decoder is not None:
            return self.decoder.forward(tokens[:, None], positions, state["cache"], last_only=True,
                                        image_cells=extra.get("image_cells"), source_ids=extra.get("source_ids")).float()
        state["mask"] = torch.cat([state["mask"], torch.ones_like(state["mask"][:, :1])], dim=1)
        out = self.model(input_ids=tokens[:, None], attention_mask=state["mask"], position_ids=positions,
                         use_cache=True, **{self.cache_argument: state["cache"]}, **extra)
        return out.logits[:, -1].float()

    # --- images -------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_images(self, cond: list[list[int]], num_tokens: int, *, uncond: list[list[int]] | None = None,
                        guidance_scale: float | list[float] = 1.0, source_only: list[list[int]] | None = None,
                        image_guidance_scale: float | list[float] = 1.0,
                        sampling: Sampling | list[Sampling] | None = None, window: int = 0) -> torch.Tensor:
        """Sample exactly `num_tokens` image codes after each prompt (each ends with `<|soi|>`).
        With `uncond` (and for editing `source_only`), guided; all rows run as one batch. -> (B, num_tokens).

        Scales and sampling may also be given per row (lists of length B): each row then draws its random
        numbers from its own seeded generator, so a row's result does not depend on the other rows of the
        batch (the service batches unrelated requests).

        `window` > 0 decodes by speculative Jacobi decoding (Teng et al. 2024, as Lumina-mGPT uses it):
        each step also feeds `window` draft codes for the cells ahead, keeps the longest prefix that passes
        speculative sampling's test (draft x from q is kept with probability min(1, p(x) / q(x)); the first
        refused is redrawn from max(0, p - q)) and drafts the next cells from the distributions this step
        computed. What it samples has the distribution of plain decoding; it only takes fewer steps.
        Needs the static decoder; with the library's forward the window is 0.

        With the static decoder a whole step (forward, guidance, sampling, Jacobi's test and the cache's
        rollback) is one function of tensors (`_plain_step`, `_jacobi_step`); with `compile=True` it
        runs as one compiled graph, so a step costs no Python between its kernels."""
        b = len(cond)
        samplings = sampling if isinstance(sampling, list) else [sampling or Sampling()] * b
        text_scale, image_scale = _row_scales(guidance_scale, b), _row_scales(image_guidance_scale, b)
        if source_only is not None and bool((image_scale == 1.0).all()):
            # At source scale 1 the mix is src + s (c - src): the fully unconditional rows drop out, so an
            # edit runs two rows per image instead of three (a third less prefill and decode).
            uncond, source_only = source_only, None
        guided = uncond is not None and (bool((text_scale != 1.0).any())
                                         or (source_only is not None and bool((image_scale != 1.0).any())))
        rows = list(cond) + (list(uncond) + (list(source_only) if source_only is not None else []) if guided else [])
        copies = len(rows) // b                    # rows per image: 1, 2 (guided) or 3 (two edit scales)
        lo, hi = self.vocab.image_offset, self.vocab.image_offset + self.vocab.codebook_size
        k_codes, n = hi - lo, num_tokens
        window = window if self.decoder is not None else 0
        logits, state = self.prefill(rows, num_tokens + window)
        device = logits.device
        text_scale, image_scale = text_scale.to(device), image_scale.to(device)
        unguided_rows = (text_scale == 1.0) & ((image_scale == 1.0) if source_only is not None else True)
        rules = RowSampling.of(samplings, device, k_codes)
        # What a step needs besides its state: Python constants (part of a compiled graph's key) and tensors.
        mix = (b, lo, hi, guided, source_only is not None)
        sampler = (text_scale, image_scale, unguided_rows, *rules.tensors(), rules.any_top_k, rules.any_top_p)

        # Random numbers per step: [0] draws the committed code, [1 : 1 + window] test the drafts,
        # [1 + window :] draw the next drafts. A step commits at least one code, so n steps suffice.
        uniforms = row_uniforms(sampling if isinstance(sampling, list) else samplings[0], b, n, 1 + 2 * window, device)
        codes = torch.zeros(b, n + 1, dtype=torch.long, device=device)   # column n: scratch for uncommitted writes
        codes[:, 0] = draw(image_probs(logits, mix, sampler), uniforms[:, 0, 0])
        self.decode_steps = n - 1   # forward steps after the prefill (for benchmarks)
        if self.decoder is None:    # the library's forward and its DynamicCache: one code per step
            for cell in range(1, n):
                token = (codes[:, cell - 1] + lo).repeat(copies)
                step_logits = self.step(token, state, image_cell=cell - 1)
                codes[:, cell] = draw(image_probs(step_logits, mix, sampler), uniforms[:, cell, 0])
            return codes[:, :n].cpu()
        cache = state["cache"]
        grid = state.get("source_grid")
        tensors = (cache.keys, cache.values, cache.real, grid, self.decoder.packed())
        position, length = state["next_position"], cache.lengths
        if not window:  # one code per step, every row in step: nothing to test, nothing to roll back
            cells = torch.arange(n, device=device)
            for cell in range(1, n):
                codes[:, cell] = self._plain_step_run(codes[:, cell - 1], cells[cell - 1], position, length, tensors,
                                                      uniforms[:, cell, 0], mix, sampler)
            return codes[:, :n].cpu()
        done = torch.ones(b, dtype=torch.long, device=device)          # (B,) codes committed per image
        drafts = (uniforms[:, 0, 1 + window:] * k_codes).long().clamp(max=k_codes - 1)     # (B, window)
        draft_probs = torch.full((b, window, k_codes), 1.0 / k_codes, device=device)        # q of each draft
        self.decode_steps = 0
        for step in range(1, n):
            if not bool((done < n).any()):
                break
            self.decode_steps += 1
            codes, done, drafts, draft_probs, position, length = self._jacobi_step_run(
                codes, done, drafts, draft_probs, uniforms[:, step], position, length, tensors, mix, sampler)
        return codes[:, :n].cpu()

    def _image_logits(self, codes: torch.Tensor, cells: torch.Tensor, position: torch.Tensor, length: torch.Tensor,
                      tensors: tuple, copies: int, lo: int) -> torch.Tensor:
        """Feed image codes (B, T) at cells (B, T) to every row (each image's `copies` rows alike), from each
        row's next position and cache slot -> (copies x B, T, V) logits. The cache is written in place."""
        keys, values, cache_real, grid, packed = tensors
        t = codes.shape[1]
        offsets = torch.arange(t, device=codes.device)
        cells = cells.repeat(copies, 1)
        image_cells = cells if self.image_positions else None
        # The source's token for the cell each token predicts next (editing models with a source embedding).
        source_ids = grid.gather(1, (cells + 1).clamp(max=grid.shape[1] - 1)) if self.source_embedding else None
        tokens = (codes + lo).repeat(copies, 1)
        real = torch.ones_like(tokens, dtype=torch.bool)
        return self.decoder._forward(tokens, position[:, None] + offsets, real, keys, values, cache_real,
                                     length, False, image_cells, source_ids, packed)

    def _plain_step(self, previous: torch.Tensor, cell: torch.Tensor, start_position: torch.Tensor,
                    start_length: torch.Tensor, tensors: tuple, u: torch.Tensor, mix: tuple, sampler: tuple) -> torch.Tensor:
        """One plain decoding step: feed each image's previous code (B,) at `cell` (a 0-dim index; the
        rows stand at their prefill position and length + cell) and draw the next codes with uniforms
        u (B,) -> (B,)."""
        b, lo = mix[0], mix[1]
        copies = start_position.shape[0] // b
        cells = cell.expand(b, 1)
        logits = self._image_logits(previous[:, None], cells, start_position + cell, start_length + cell, tensors,
                                    copies, lo)
        return draw(image_probs(logits[:, -1], mix, sampler), u)

    def _jacobi_step(self, codes, done, drafts, draft_probs, u, position, length, tensors: tuple, mix: tuple,
                     sampler: tuple):
        """One step of speculative Jacobi decoding (see `generate_images`). codes (B, n + 1) with a scratch
        column, done (B,) codes committed, drafts (B, W) and their distributions draft_probs (B, W, K),
        uniforms u (B, 1 + 2W), each row's next position and cache length (copies x B,) -> the same,
        updated; rejected drafts are forgotten by the cache (its `real` slots, in place)."""
        b, lo = mix[0], mix[1]
        n, window, k_codes = codes.shape[1] - 1, drafts.shape[1], draft_probs.shape[2]
        copies = position.shape[0] // b
        offsets = torch.arange(window + 1, device=codes.device)
        batch = torch.arange(b, device=codes.device)
        active = done < n
        last = codes.gather(1, (done - 1).clamp(max=n - 1)[:, None])                          # (B, 1)
        tokens = torch.cat([last, drafts], dim=1)                                             # (B, 1 + W)
        logits = self._image_logits(tokens, (done - 1)[:, None] + offsets, position, length, tensors, copies, lo)
        probs = image_probs(logits, mix, sampler)                                             # (B, 1 + W, K)
        # probs[:, j]: the distribution of cell done + j, given everything before it in this step's input.
        p_draft = probs[:, :window].gather(-1, drafts[..., None]).squeeze(-1)                # (B, W)
        q_draft = draft_probs.gather(-1, drafts[..., None]).squeeze(-1)
        in_image = (done[:, None] + offsets[:window]) < n
        passed = (u[:, 1:1 + window] * q_draft < p_draft) & in_image
        accepted = passed.long().cumprod(1).sum(1)                                        # (B,) leading drafts kept
        p_next = probs[batch, accepted]                                                   # (B, K) at cell done + accepted
        q_next = draft_probs[batch, accepted.clamp(max=window - 1)]
        residual = (p_next - q_next).clamp(min=0)
        redraw = (accepted < window) & (residual.sum(-1) > 0)
        chosen = draw(torch.where(redraw[:, None], residual, p_next), u[:, 0])
        # Commit the accepted drafts and the drawn code at cells done .. done + accepted (inside the image);
        # what is not committed goes to the scratch column n.
        candidates = torch.cat([drafts, chosen[:, None]], dim=1).scatter(1, accepted[:, None], chosen[:, None])
        commit = torch.where(active, torch.minimum(accepted + 1, n - done), torch.zeros_like(done))
        columns = torch.where(offsets[None, :] < commit[:, None], done[:, None] + offsets, n)
        codes = codes.scatter(1, columns, candidates)
        # The cache keeps the fed code and the committed drafts, and forgets the rest.
        length = length + commit.repeat(copies)
        forget_from(tensors[2], length)
        position = position + commit.repeat(copies)
        # Draft cells done .. done + W - 1 from this step's distributions where it has them.
        ahead = commit[:, None] + offsets[:window]                                             # index into probs
        known = (ahead <= window)[..., None]
        draft_probs = torch.where(known, probs.gather(1, ahead.clamp(max=window)[..., None].expand(-1, -1, k_codes)),
                                  torch.full_like(draft_probs, 1.0 / k_codes))
        drafts = draw(draft_probs, u[:, 1 + window:])
        return codes, done + commit, drafts, draft_probs, position, length

    # --- text -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_text(self, prompts: list[list[int]], max_new_tokens: int = 64,
                      sampling: Sampling | None = None) -> list[list[int]]:
        """Answers after each prompt, stopping at `<|eos|>` (not included); text ids only, never image ids."""
        sampling = sampling or Sampling(temperature=0.0)
        generator = torch.Generator(device="cpu").manual_seed(sampling.seed) if sampling.seed is not None else None
        logits, state = self.prefill(prompts, max_new_tokens)
        eos = self.vocab[EOS]
        done = torch.zeros(len(prompts), dtype=torch.bool)
        answers: list[list[int]] = [[] for _ in prompts]
        for _ in range(max_new_tokens):
            text_logits = logits[:, : self.vocab.text_size].cpu()
            token = sample(text_logits, sampling, generator)
            for row, t in enumerate(token.tolist()):
                if not done[row]:
                    if t == eos:
                        done[row] = True
                    else:
                        answers[row].append(t)
            if done.all():
                break
            logits = self.step(token.to(self.device), state)
        return answers
