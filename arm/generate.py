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


def sample_rows(logits: torch.Tensor, samplings: list[Sampling], generators: list) -> torch.Tensor:
    """(B, V) -> (B,) ids, row i drawn by its own generator with its own sampling: a row's draw never
    depends on the other rows. Rows that share their settings are filtered and normalised as one batch;
    only the draw itself is per row."""
    first = samplings[0]
    if all((s.temperature, s.top_k, s.top_p) == (first.temperature, first.top_k, first.top_p) for s in samplings):
        if first.temperature < GREEDY_BELOW:
            return logits.argmax(-1)
        probs = filter_logits(logits / first.temperature, first.top_k, first.top_p).softmax(-1)
        return torch.cat([torch.multinomial(probs[i:i + 1], 1, generator=generators[i]).squeeze(-1)
                          for i in range(len(samplings))])
    return torch.cat([sample(logits[i:i + 1], samplings[i], generators[i]) for i in range(len(samplings))])


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
    def __init__(self, model, vocab: Vocab):
        self.model = model.eval()
        self.vocab = vocab
        self.device = next(model.parameters()).device
        self.positions = ImagePositions.of(model)   # None: a plain causal LM without image positions
        self.image_positions = self.positions is not None
        self.source_embedding = self.image_positions and self.positions.source_embedding
        self.cache_argument = cache_argument(model)

    # --- the two primitives: prefill a batch, then extend it one token at a time -------------------

    @torch.no_grad()
    def prefill(self, sequences: list[list[int]]):
        """Run the prompts; returns the last position's logits (B, V) and the decoding state."""
        from transformers import DynamicCache

        ids, mask = left_pad(sequences, self.vocab.pad)
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = model_positions(self.model, ids, mask)
        cache = DynamicCache()  # filled in place by every forward that is handed it
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **{self.cache_argument: cache})
        state = {"cache": cache, "mask": mask, "next_position": positions[:, -1] + 1}
        if self.source_embedding:  # each row's source by cell, for the target tokens sampled next
            s = self.positions
            state["source_grid"] = source_grid(ids, s.image_offset, s.codebook_size, s.soi_id, s.cells)
        return out.logits[:, -1].float(), state

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, state: dict, image_cell: int = -1) -> torch.Tensor:
        """Append `tokens` (B,) and return the next logits (B, V). `image_cell`: the tokens' index in the
        image span being sampled (-1 for text), for models with image row and column embeddings."""
        state["mask"] = torch.cat([state["mask"], torch.ones_like(state["mask"][:, :1])], dim=1)
        extra = {"image_cells": torch.full_like(tokens[:, None], image_cell)} if self.image_positions else {}
        if self.source_embedding:  # the source's token for the cell these tokens predict (none after text)
            grid = state["source_grid"]
            column = min(image_cell + 1, grid.shape[1] - 1) if image_cell >= 0 else grid.shape[1] - 1
            extra["source_ids"] = grid[:, column:column + 1]
        out = self.model(input_ids=tokens[:, None], attention_mask=state["mask"],
                         position_ids=state["next_position"][:, None], use_cache=True,
                         **{self.cache_argument: state["cache"]}, **extra)
        state["next_position"] = state["next_position"] + 1
        return out.logits[:, -1].float()

    # --- images -------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_images(self, cond: list[list[int]], num_tokens: int, *, uncond: list[list[int]] | None = None,
                        guidance_scale: float | list[float] = 1.0, source_only: list[list[int]] | None = None,
                        image_guidance_scale: float | list[float] = 1.0,
                        sampling: Sampling | list[Sampling] | None = None) -> torch.Tensor:
        """Sample exactly `num_tokens` image codes after each prompt (each ends with `<|soi|>`).
        With `uncond` (and for editing `source_only`), guided; all rows run as one batch. -> (B, num_tokens).

        Scales and sampling may also be given per row (lists of length B): each row then samples with its
        own seeded generator, so a row's result does not depend on the other rows of the batch (the
        service batches unrelated requests)."""
        b = len(cond)
        per_row = isinstance(sampling, list)
        samplings = sampling if per_row else [sampling or Sampling()]
        generators = [torch.Generator(device="cpu").manual_seed(s.seed) if s.seed is not None else None
                      for s in samplings]
        text_scale, image_scale = _row_scales(guidance_scale, b), _row_scales(image_guidance_scale, b)
        if source_only is not None and bool((image_scale == 1.0).all()):
            # At source scale 1 the mix is src + s (c - src): the fully unconditional rows drop out, so an
            # edit runs two rows per image instead of three (a third less prefill and decode).
            uncond, source_only = source_only, None
        guided = uncond is not None and (bool((text_scale != 1.0).any())
                                         or (source_only is not None and bool((image_scale != 1.0).any())))
        rows = list(cond) + (list(uncond) + (list(source_only) if source_only is not None else []) if guided else [])
        lo, hi = self.vocab.image_offset, self.vocab.image_offset + self.vocab.codebook_size
        logits, state = self.prefill(rows)
        text_scale, image_scale = text_scale.to(logits.device), image_scale.to(logits.device)
        unguided_rows = (text_scale == 1.0) & ((image_scale == 1.0) if source_only is not None else True)
        codes = []
        for cell in range(num_tokens):
            image_logits = logits[:, lo:hi]  # constrained: only image ids inside the span
            if guided:
                c, u = image_logits[:b], image_logits[b:2 * b]
                if source_only is not None:
                    src = image_logits[2 * b:3 * b]
                    # A row at source scale 1 mixes exactly as it would alone, in the two-row batch above.
                    mixed = torch.where(image_scale == 1.0, src + text_scale * (c - src),
                                        u + image_scale * (src - u) + text_scale * (c - src))
                else:
                    mixed = u + text_scale * (c - u)
                # Rows at scale 1 are exactly conditional (u + 1 * (c - u) can round differently from c).
                mixed = torch.where(unguided_rows, c, mixed)
            else:
                mixed = image_logits
            mixed = mixed.cpu()
            if per_row:  # (B,) codes in [0, K), each row from its own generator
                chosen = sample_rows(mixed, samplings, generators)
            else:
                chosen = sample(mixed, samplings[0], generators[0])
            codes.append(chosen)
            token = (chosen + lo).to(self.device)
            logits = self.step(token.repeat(len(rows) // b), state, image_cell=cell)
        return torch.stack(codes, dim=1)

    # --- text -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_text(self, prompts: list[list[int]], max_new_tokens: int = 64,
                      sampling: Sampling | None = None) -> list[list[int]]:
        """Answers after each prompt, stopping at `<|eos|>` (not included); text ids only, never image ids."""
        sampling = sampling or Sampling(temperature=0.0)
        generator = torch.Generator(device="cpu").manual_seed(sampling.seed) if sampling.seed is not None else None
        logits, state = self.prefill(prompts)
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
