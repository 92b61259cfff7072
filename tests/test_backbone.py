"""The backbone from a local pretrained checkpoint: loaded without a network, its vocabulary extended for
our specials and image codes, image positions added, image-code rows initialised from the tokenizer."""

from __future__ import annotations

import pytest
import torch

from arm.model.backbone import build_causal_lm, load_causal_lm
from arm.model.positions import uses_image_positions

TEXT_ROWS, CODES = 50, 30


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny 'pretrained' Qwen2 saved to a folder, its rows shifted off zero like a trained LM's."""
    torch.manual_seed(0)
    model = build_causal_lm("qwen2", TEXT_ROWS, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                            intermediate_size=32)
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(0.5)
    folder = tmp_path_factory.mktemp("lm")
    model.save_pretrained(folder)
    return folder, model


def test_pretrained_checkpoint_is_extended_to_the_unified_vocabulary(pretrained):
    folder, original = pretrained
    positions = dict(grid=2, image_offset=TEXT_ROWS, codebook_size=CODES, soi_id=TEXT_ROWS - 1)
    model = build_causal_lm("qwen2", TEXT_ROWS + CODES, 0, 0, 0, 0, 0, pretrained_path=str(folder),
                            image_positions=positions)
    table = model.get_input_embeddings().weight
    assert table.shape == (TEXT_ROWS + CODES, 16) and model.get_output_embeddings().weight.shape[0] == TEXT_ROWS + CODES
    torch.testing.assert_close(table[:TEXT_ROWS], original.get_input_embeddings().weight)
    # New rows start near the mean of the old ones, not at zero.
    torch.testing.assert_close(table[TEXT_ROWS:].mean(0), table[:TEXT_ROWS].mean(0), rtol=0, atol=0.05)
    assert uses_image_positions(model)
    text_only = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(model(input_ids=text_only).logits[..., :TEXT_ROWS], original(input_ids=text_only).logits)


def test_pretrained_path_must_be_a_folder(tmp_path):
    with pytest.raises(ValueError, match="pretrained_path .* is not a folder"):
        build_causal_lm("qwen2", 10, 0, 0, 0, 0, 0, pretrained_path=str(tmp_path / "missing"))


def test_plain_checkpoints_load_as_the_library_class(pretrained):
    folder, original = pretrained
    loaded = load_causal_lm(folder)
    assert type(loaded) is type(original) and not uses_image_positions(loaded)


def test_image_rows_are_initialised_only_where_the_checkpoint_lacks_them(pretrained, tmp_path):
    """A text LM gets tokenizer-initialised image rows; a unified model trained further keeps its own."""
    from arm.model.vocab import Vocab
    from arm.model.stage import image_rows_pretrained

    folder, _ = pretrained
    vocab = Vocab(TEXT_ROWS, CODES)
    assert not image_rows_pretrained(None, vocab) and not image_rows_pretrained(str(folder), vocab)
    unified = build_causal_lm("qwen2", vocab.size, 0, 0, 0, 0, 0, pretrained_path=str(folder))
    unified.save_pretrained(tmp_path / "unified")
    assert image_rows_pretrained(str(tmp_path / "unified"), vocab)


def _word_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def test_padded_checkpoint_rows_past_its_tokenizer_start_as_new_rows(tmp_path):
    """Qwen2.5-7B's tables have 152,064 rows for the 151,665 tokens of its tokenizer.json; at tiny size,
    64 rows for 40 tokens. The 24 padding rows were never trained, so our 7 special tokens and the first
    image codes, whose ids land on them, must start as new rows (mean resizing over the 40 trained rows)
    and the image rows must count as untrained, so that pretrain initialises them from the tokenizer."""
    from arm.model.vocab import SOI, Vocab
    from arm.model.stage import image_rows_pretrained
    from arm.text_tokenizer import SPECIAL_TOKENS, add_special_tokens

    tokens, padded, codes = 40, 64, 30
    torch.manual_seed(0)
    lm = build_causal_lm("qwen2", padded, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                         intermediate_size=32)
    with torch.no_grad():
        for table in (lm.get_input_embeddings().weight, lm.get_output_embeddings().weight):
            table[:tokens] += 0.5           # trained rows, off zero
            table[tokens:] = 100.0          # padding rows: anything inheriting them is caught
    lm.save_pretrained(tmp_path)
    tokenizer = _word_tokenizer([f"w{i}" for i in range(tokens)])
    tokenizer.save(str(tmp_path / "tokenizer.json"))

    text_size = add_special_tokens(tokenizer).get_vocab_size()              # what prepare makes of it
    assert text_size == tokens + len(SPECIAL_TOKENS) < padded
    vocab = Vocab(text_size, codes, {SOI: text_size - 2})
    model = build_causal_lm("qwen2", vocab.size, 0, 0, 0, 0, 0, pretrained_path=str(tmp_path))
    for new, old in ((model.get_input_embeddings().weight, lm.get_input_embeddings().weight),
                     (model.get_output_embeddings().weight, lm.get_output_embeddings().weight)):
        assert new.shape == (vocab.size, 16)
        torch.testing.assert_close(new[:tokens], old[:tokens])              # trained rows kept exactly
        fresh = new[tokens:]                                                 # specials, then every image code
        assert float(fresh.detach().abs().max()) < 10, "a new row inherited a padding row"
        torch.testing.assert_close(fresh.mean(0), old[:tokens].mean(0), rtol=0, atol=0.1)
    assert not image_rows_pretrained(str(tmp_path), vocab)


def test_unified_vocabulary_smaller_than_the_checkpoints_is_refused(tmp_path):
    lm = build_causal_lm("qwen2", 64, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32)
    lm.save_pretrained(tmp_path)
    _word_tokenizer([f"w{i}" for i in range(60)]).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="checkpoint's own tokenizer"):
        build_causal_lm("qwen2", 50, 0, 0, 0, 0, 0, pretrained_path=str(tmp_path))
