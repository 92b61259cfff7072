"""The unified id space and the task templates."""

from __future__ import annotations

import random

import pytest

from arm.model.sequences import IGNORE, build_sequence, editing_sequence, understanding_sequence
from arm.model.vocab import Vocab
from arm.text_tokenizer import SPECIAL_TOKENS, train_bpe


@pytest.fixture(scope="module")
def vocab():
    tok = train_bpe(["a red circle at the top left", "what color is the circle?", "red"] * 10, vocab_size=300)
    return Vocab.from_tokenizer(tok, codebook_size=1000)


def test_id_space_is_text_then_specials_then_image_codes(vocab):
    specials = [vocab[t] for t in SPECIAL_TOKENS]
    assert specials == list(range(vocab.text_size - len(SPECIAL_TOKENS), vocab.text_size))
    assert vocab.image_offset == vocab.text_size and vocab.size == vocab.text_size + 1000
    assert vocab.code_of(vocab.image_id(123)) == 123


def test_loss_only_on_targets(vocab):
    ids, labels = understanding_sequence(vocab, [1, 2, 3, 4], [7, 8], [9])
    assert len(ids) == len(labels)
    targets = [i for i, l in zip(ids, labels) if l != IGNORE]
    assert targets == [9, vocab["<|eos|>"]]
    assert all(l == i for i, l in zip(ids, labels) if l != IGNORE)


def test_editing_layout_and_source_dropout(vocab):
    ids, labels = editing_sequence(vocab, [1, 2], [5], [3, 4])
    assert ids[:4] == [vocab["<|edit|>"], vocab["<|soi|>"], vocab.image_id(1), vocab.image_id(2)]
    assert [l for l in labels if l != IGNORE] == [vocab.image_id(3), vocab.image_id(4), vocab["<|eoi|>"]]
    dropped, _ = editing_sequence(vocab, None, [5], [3, 4])
    assert dropped[:3] == [vocab["<|edit|>"], vocab["<|soi|>"], vocab["<|eoi|>"]]


def test_condition_dropout_rate(vocab):
    rng = random.Random(0)
    record = {"task": "t2i", "image": "x", "text_ids": [1, 2, 3]}
    codes = {"x": [0] * 64}
    lengths = [len(build_sequence(vocab, record, codes, rng, p_drop=0.1)[0]) for _ in range(4000)]
    dropped = sum(n == 64 + 3 for n in lengths) / len(lengths)
    assert 0.08 < dropped < 0.12
    with pytest.raises(ValueError):
        build_sequence(vocab, {"task": "dance"}, codes, rng)
