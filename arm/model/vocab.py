"""One id space for text and images: text ids (the prepared tokenizer, special tokens at its end),
then the visual tokenizer's codes at a fixed offset.

    [0, text_size)                       text and special tokens
    [image_offset, image_offset + K)     image codes, image_offset = text_size

>>> v = Vocab(text_size=500, codebook_size=1000, specials={"<|soi|>": 498})
>>> v.size, v.image_id(0), v.code_of(v.image_id(999))
(1500, 500, 999)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from arm.text_tokenizer import EDIT, EOI, EOS, PAD, SOI, SPECIAL_TOKENS, T2I, UND


@dataclass(frozen=True)
class Vocab:
    text_size: int
    codebook_size: int
    specials: dict = field(default_factory=dict)

    @property
    def image_offset(self) -> int:
        return self.text_size

    @property
    def size(self) -> int:
        return self.text_size + self.codebook_size

    def image_id(self, code):
        return code + self.image_offset

    def code_of(self, token_id):
        return token_id - self.image_offset

    def is_image(self, ids: torch.Tensor) -> torch.Tensor:
        return ids >= self.image_offset

    def __getitem__(self, token: str) -> int:
        return self.specials[token]

    @property
    def pad(self) -> int:
        return self.specials[PAD]

    @classmethod
    def from_tokenizer(cls, tokenizer, codebook_size: int) -> "Vocab":
        """From a `tokenizers.Tokenizer` that carries our special tokens."""
        specials = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in specials.items() if i is None]
        if missing:
            raise ValueError(f"the text tokenizer lacks the special tokens {missing}; rerun `arm prepare`")
        return cls(tokenizer.get_vocab_size(), codebook_size, specials)


__all__ = ["Vocab", "PAD", "EOS", "UND", "T2I", "EDIT", "SOI", "EOI"]
