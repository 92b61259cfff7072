"""One object for all three tasks on pixels and strings: the unified model, its visual tokenizer and its
text tokenizer behind `generate`, `edit` and `understand`. The CLI, evaluation, RL and the Bento
service all go through it, so they cannot disagree about templates, guidance or decoding.

Sampling has one source: the `sampling.json` saved beside the model (`arm.model.saved`), unless a caller
passes its own `SamplingConfig`. Image i of a call is drawn with seed `seed + i` by its own generator, so
an image depends on its prompt and seed only, never on what else is in the batch: `arm generate`,
`Pipeline.generate` and the Bento's `/generate` give the same image for the same prompt and seed.

    pipe = Pipeline.load("artifacts/rl", "artifacts/tokenizer")
    images = pipe.generate(["a large red circle at the center"], seed=0)     # (1, 64, 64, 3) uint8
    answers = pipe.understand(images, ["what color is the circle?"])        # ["red"]
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from arm.config import SamplingConfig
from arm.generate import Engine, Sampling
from arm.images import to_tensor, to_uint8
from arm.model.sequences import DESCRIBE
from arm.model.saved import load_sampling, load_unified_model
from arm.model.sequences import editing_prefix, generation_prefix, understanding_prefix, understanding_turns_prefix
from arm.tokenizer.model import VisualTokenizer


def row_samplings(sampling: SamplingConfig, seed: int | list[int] | None, start: int, stop: int) -> list[Sampling] | Sampling:
    """The engine's sampling for rows start..stop-1 of a call: row i with its own generator seeded
    `seed + i` (or `seed[i]`, a list naming every row's seed), or one unseeded sampling for the batch
    when `seed` is None.

    >>> s = SamplingConfig(1.0, 1.0, 1.0, 1.0, 0, 1.0)
    >>> [r.seed for r in row_samplings(s, 10, 2, 4)], [r.seed for r in row_samplings(s, [7, 3, 9, 1], 2, 4)]
    ([12, 13], [9, 1])
    """
    if seed is None:
        return Sampling(sampling.temperature, sampling.top_k, sampling.top_p, None)
    seeds = seed[start:stop] if isinstance(seed, (list, tuple)) else [seed + i for i in range(start, stop)]
    return [Sampling(sampling.temperature, sampling.top_k, sampling.top_p, int(s)) for s in seeds]


def check_seeds(seed, rows: int) -> None:
    if isinstance(seed, (list, tuple)) and len(seed) != rows:
        raise ValueError(f"{len(seed)} seeds for {rows} rows: give one seed per row, or one int (row i: seed + i)")


class Pipeline:
    def __init__(self, model, info, text_tokenizer, visual_tokenizer, sampling: SamplingConfig, batch_size: int = 64,
                 compile: bool = False):
        """`compile`: decoding steps through torch.compile (`Engine`; each new batch size compiles once,
        seconds to tens of seconds on a CPU), for a long-running service rather than a short script."""
        self.model, self.info, self.text_tokenizer, self.visual = model.eval(), info, text_tokenizer, visual_tokenizer.eval()
        self.vocab = info.vocab()
        self.engine = Engine(model, self.vocab, compile=compile)
        self.sampling = sampling         # the model's own (sampling.json) unless a call passes another
        self.batch_size = batch_size
        self.image_size = visual_tokenizer.cfg.image_size

    @classmethod
    def load(cls, model_dir: str | Path, tokenizer_dir: str | Path, device: str = "cpu", **kwargs) -> "Pipeline":
        sampling = load_sampling(model_dir)
        model, info, text_tokenizer = load_unified_model(model_dir)
        config = Path(tokenizer_dir) / "config.json"
        if config.is_file():  # check before loading weights, so a mismatch is named, not a shape error
            cfg = json.loads(config.read_text())
            codebook, grid = math.prod(cfg.get("fsq_levels", [])), cfg.get("grid")
            if codebook != info.codebook_size or grid != info.grid:
                raise ValueError(f"the visual tokenizer in {tokenizer_dir} ({codebook} codes, grid {grid}) is not the "
                                 f"one {model_dir} was trained on ({info.codebook_size} codes, grid {info.grid}); "
                                 "pass the tokenizer the model's codes came from")
        visual = VisualTokenizer.load(tokenizer_dir)
        return cls(model.to(device), info, text_tokenizer, visual.to(device), sampling, **kwargs)

    # --- ids <-> text and pixels ----------------------------------------------------------------------

    def text_ids(self, text: str) -> list[int]:
        return self.text_tokenizer.encode(text, add_special_tokens=False).ids

    def decode_text(self, ids: list[int]) -> str:
        return self.text_tokenizer.decode(ids, skip_special_tokens=True).strip()

    @property
    def num_image_tokens(self) -> int:
        return self.info.grid ** 2

    @torch.no_grad()
    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, g*g) codes."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"images must be (N, {self.image_size}, {self.image_size}, 3) uint8 RGB, got "
                             f"{images.shape}; resize to the tokenizer's image size first")
        device = next(self.visual.parameters()).device
        out = [self.visual.encode(to_tensor(images[i:i + 256]).to(device)).flatten(1).cpu()
               for i in range(0, len(images), 256)]
        return torch.cat(out).numpy()

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor | np.ndarray) -> np.ndarray:
        """(N, g*g) codes -> (N, S, S, 3) uint8."""
        codes = torch.as_tensor(np.asarray(codes), dtype=torch.long)
        g = self.info.grid
        device = next(self.visual.parameters()).device
        out = [to_uint8(self.visual.decode(codes[i:i + 256].view(-1, g, g).to(device)))
               for i in range(0, len(codes), 256)]
        return np.concatenate(out) if out else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)

    # --- prompts: the inference halves of arm.model.sequences' templates ------------------------------

    def generation_prompt(self, text_ids: list[int]) -> list[int]:
        return generation_prefix(self.vocab, text_ids)

    def edit_prompt(self, source_codes, text_ids: list[int]) -> list[int]:
        return editing_prefix(self.vocab, source_codes, text_ids)

    def understanding_prompt(self, codes, question_ids: list[int]) -> list[int]:
        return understanding_prefix(self.vocab, codes, question_ids)

    @property
    def max_positions(self) -> int:
        """The longest sequence the model has positions for (its config's max_position_embeddings)."""
        return int(self.model.config.max_position_embeddings)

    def positions_needed(self, task: str, text_ids: list[int], max_new_tokens: int = 64) -> int:
        """How many positions one `task` call ("generate", "edit" or "understand") with this text takes:
        its prompt plus all the model may write after it (an image, or up to `max_new_tokens` of answer;
        a describe-first model writes its description first, as `explain_codes` runs it)."""
        image = [0] * self.num_image_tokens  # a span's length, whatever its codes
        if task == "generate":
            return len(self.generation_prompt(text_ids)) + self.num_image_tokens
        if task == "edit":
            return len(self.edit_prompt(image, text_ids)) + self.num_image_tokens
        if task != "understand":
            raise ValueError(f"task must be generate, edit or understand, got {task!r}")
        if self.info.describe_first:
            described = [(self.text_ids(DESCRIBE), [0] * max_new_tokens)]
            return len(understanding_turns_prefix(self.vocab, image, described, text_ids)) + max_new_tokens
        return len(self.understanding_prompt(image, text_ids)) + max_new_tokens

    # --- the three tasks --------------------------------------------------------------------------------

    def _batches(self, n: int):
        for start in range(0, n, self.batch_size):
            yield start, min(n, start + self.batch_size)

    def generate_codes(self, prompts: list[str], seed: int | list[int] | None = 0,
                       sampling: SamplingConfig | None = None) -> np.ndarray:
        """Text -> (N, g*g) image codes, guided (uncond = the empty prompt) when the generation guidance
        != 1; `sampling` None: the model's own; `seed` one int (row i: seed + i) or one per row."""
        s = sampling or self.sampling
        check_seeds(seed, len(prompts))
        out = []
        for a, b in self._batches(len(prompts)):
            cond = [self.generation_prompt(self.text_ids(p)) for p in prompts[a:b]]
            uncond = [self.generation_prompt([]) for _ in cond]
            out.append(self.engine.generate_images(cond, self.num_image_tokens, uncond=uncond,
                                                   guidance_scale=s.generation_guidance,
                                                   sampling=row_samplings(s, seed, a, b), window=s.jacobi_window))
        return torch.cat(out).numpy() if out else np.zeros((0, self.num_image_tokens), np.int64)

    def generate(self, prompts: list[str], seed: int | None = 0, sampling: SamplingConfig | None = None) -> np.ndarray:
        """Text -> (N, S, S, 3) uint8 images."""
        return self.decode_codes(self.generate_codes(prompts, seed, sampling))

    def edit_codes(self, source_codes: np.ndarray, instructions: list[str], seed: int | list[int] | None = 0,
                   sampling: SamplingConfig | None = None) -> np.ndarray:
        """(N, g*g) source codes + instructions -> (N, g*g) edited codes, with text and image guidance;
        `seed` as for `generate_codes`."""
        if len(source_codes) != len(instructions):
            raise ValueError(f"{len(source_codes)} source images but {len(instructions)} instructions")
        check_seeds(seed, len(instructions))
        s = sampling or self.sampling
        out = []
        for a, b in self._batches(len(instructions)):
            ids = [self.text_ids(t) for t in instructions[a:b]]
            cond = [self.edit_prompt(c, i) for c, i in zip(source_codes[a:b], ids)]
            uncond = [self.edit_prompt(None, []) for _ in ids]
            source_only = [self.edit_prompt(c, []) for c in source_codes[a:b]]
            out.append(self.engine.generate_images(
                cond, self.num_image_tokens, uncond=uncond, guidance_scale=s.edit_guidance, source_only=source_only,
                image_guidance_scale=s.edit_image_guidance, sampling=row_samplings(s, seed, a, b),
                window=s.jacobi_window))
        return torch.cat(out).numpy() if out else np.zeros((0, self.num_image_tokens), np.int64)

    def edit(self, images: np.ndarray, instructions: list[str], seed: int | None = 0,
             sampling: SamplingConfig | None = None) -> np.ndarray:
        """(N, S, S, 3) uint8 sources + instructions -> (N, S, S, 3) uint8 edited images."""
        return self.decode_codes(self.edit_codes(self.encode_images(images), instructions, seed, sampling))

    def understand_codes(self, codes: np.ndarray | None, questions: list[str], max_new_tokens: int = 64,
                         sampling: Sampling | None = None) -> list[str]:
        """Answers to questions about images given as codes (None: text-only questions)."""
        return [answer for answer, _ in self.explain_codes(codes, questions, max_new_tokens, sampling)]

    def explain_codes(self, codes: np.ndarray | None, questions: list[str], max_new_tokens: int = 64,
                      sampling: Sampling | None = None) -> list[tuple[str, str | None]]:
        """(answer, description) per question. A describe-first model (`pretrain.describe_first`) first
        describes each image, then answers after its own description, as it was trained; the description
        is None for a direct model and for text-only questions. Asking for the description itself
        answers with the first pass."""
        if codes is not None and len(codes) != len(questions):
            raise ValueError(f"{len(codes)} images but {len(questions)} questions")
        describe_ids = self.text_ids(DESCRIBE)
        out: list[tuple[str, str | None]] = []
        for a, b in self._batches(len(questions)):
            rows = list(range(a, b))
            question_ids = [self.text_ids(questions[i]) for i in rows]
            if codes is None or not self.info.describe_first:
                prompts = [self.understanding_prompt(None if codes is None else codes[i], q)
                           for i, q in zip(rows, question_ids)]
                out += [(self.decode_text(ids), None) for ids in self.engine.generate_text(prompts, max_new_tokens, sampling)]
                continue
            captions = self.engine.generate_text([self.understanding_prompt(codes[i], describe_ids) for i in rows],
                                                 max_new_tokens, sampling)
            asked = [k for k, q in enumerate(question_ids) if q != describe_ids]
            answers = dict(zip(asked, self.answer_after_descriptions(
                [codes[rows[k]] for k in asked], [captions[k] for k in asked], [question_ids[k] for k in asked],
                max_new_tokens, sampling))) if asked else {}
            for k, caption in enumerate(captions):
                description = self.decode_text(caption)
                out.append((self.decode_text(answers[k]) if k in answers else description, description))
        return out

    def answer_after_descriptions(self, codes: np.ndarray | list | None, descriptions: list[list[int]],
                                  question_ids: list[list[int]], max_new_tokens: int = 64,
                                  sampling: Sampling | None = None) -> list[list[int]]:
        """A describe-first model's second pass: answer ids for each question asked after the image's
        description turn (`descriptions`: text ids, the model's own or any other, e.g. a reference
        caption); `codes` None leaves the image span out, e.g.

            pipe.decode_text(pipe.answer_after_descriptions(codes[:1], [pipe.text_ids("a red square ...")],
                                                            [pipe.text_ids("how many red objects?")])[0])
        """
        describe_ids = self.text_ids(DESCRIBE)
        out: list[list[int]] = []
        for a, b in self._batches(len(question_ids)):
            prompts = [understanding_turns_prefix(self.vocab, None if codes is None else codes[i],
                                                  [(describe_ids, descriptions[i])], question_ids[i]) for i in range(a, b)]
            out += self.engine.generate_text(prompts, max_new_tokens, sampling)
        return out

    def understand(self, images: np.ndarray | None, questions: list[str], max_new_tokens: int = 64,
                   sampling: Sampling | None = None) -> list[str]:
        """(N, S, S, 3) uint8 images (or None) + questions -> answers (greedy by default)."""
        return [answer for answer, _ in self.explain(images, questions, max_new_tokens, sampling)]

    def explain(self, images: np.ndarray | None, questions: list[str], max_new_tokens: int = 64,
                sampling: Sampling | None = None) -> list[tuple[str, str | None]]:
        """(N, S, S, 3) uint8 images (or None) + questions -> (answer, description) pairs (`explain_codes`)."""
        codes = None if images is None else self.encode_images(images)
        return self.explain_codes(codes, questions, max_new_tokens, sampling)
