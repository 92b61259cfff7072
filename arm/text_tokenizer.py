"""The text tokenizer and the special tokens of the unified id space.

Id layout (docs/model.md): text ids first, then the special tokens, then image codes at a fixed offset
(`len(tokenizer)`, decided by the model stage). Special tokens are appended after training, so a
pretrained LLM's tokenizer.json gets the same layout: its own ids, then ours.

>>> tok = train_bpe(["a red circle at the top left", "what color is a lime?"] * 20, vocab_size=300)
>>> ids = tok.encode("a red circle").ids
>>> tok.decode(ids)
'a red circle'
>>> tok.token_to_id("<|soi|>") == tok.get_vocab_size() - len(SPECIAL_TOKENS) + SPECIAL_TOKENS.index("<|soi|>")
True
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, EOS, UND, T2I, EDIT, SOI, EOI = (
    "<|pad|>", "<|eos|>", "<|und|>", "<|t2i|>", "<|edit|>", "<|soi|>", "<|eoi|>",
)
# Task tokens open a sequence; <|soi|>/<|eoi|> bracket an image span; <|eos|> ends an answer.
SPECIAL_TOKENS = (PAD, EOS, UND, T2I, EDIT, SOI, EOI)


def train_bpe(texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2) -> Tokenizer:
    """Byte-level BPE (any UTF-8 text round-trips) trained on `texts`, special tokens appended."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return add_special_tokens(tokenizer)


def add_special_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """Append the special tokens that are missing (idempotent)."""
    missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
    if missing:
        tokenizer.add_special_tokens(missing)
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer.json from disk (ours, or a pretrained LLM's) with our special tokens present."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"tokenizer file {path} not found; set prepare.tokenizer_json to a tokenizer.json "
                         "or leave it null to train one on the data")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:
        raise ValueError(f"{path} is not a Hugging Face tokenizer.json: {e}") from e
    return add_special_tokens(tokenizer)
