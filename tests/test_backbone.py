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
    from arm.pretrain import image_rows_pretrained

    folder, _ = pretrained
    vocab = Vocab(TEXT_ROWS, CODES)
    assert not image_rows_pretrained(None, vocab) and not image_rows_pretrained(str(folder), vocab)
    unified = build_causal_lm("qwen2", vocab.size, 0, 0, 0, 0, 0, pretrained_path=str(folder))
    unified.save_pretrained(tmp_path / "unified")
    assert image_rows_pretrained(str(tmp_path / "unified"), vocab)
