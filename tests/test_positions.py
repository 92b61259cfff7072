"""Image row and column embeddings: cells counted from the ids, saved and loaded with the model."""

from __future__ import annotations

import torch

from arm.model.backbone import build_causal_lm, load_causal_lm
from arm.model.positions import ImagePositions, image_cell_indices, token_positions, uses_image_positions

SOI, EOI, OFFSET, CODES = 3, 4, 10, 20


def test_cells_restart_at_every_span_and_skip_padding_and_text():
    img = [OFFSET + c for c in range(4)]
    edit = [0, 0, 5, SOI, *img, EOI, 7, 8, SOI, *img[:2]]        # left padding, a source, a partial target
    cells = image_cell_indices(torch.tensor([edit]), OFFSET, CODES, SOI)[0].tolist()
    assert cells == [-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 0, 1]


def test_image_positions_survive_save_and_load(tmp_path):
    positions = dict(grid=2, image_offset=OFFSET, codebook_size=CODES, soi_id=SOI)
    model = build_causal_lm("llama", OFFSET + CODES, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                            intermediate_size=32, image_positions=positions)
    ids = torch.tensor([[5, SOI, OFFSET + 1, OFFSET + 7, OFFSET + 2, OFFSET + 2, EOI]])
    logits = model(input_ids=ids).logits
    logits[0, -1].sum().backward()
    assert model.row_embedding.weight.grad.abs().sum() > 0 and model.col_embedding.weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    loaded = load_causal_lm(tmp_path)
    assert uses_image_positions(loaded) and ImagePositions.of(loaded) == ImagePositions.from_dict(positions)
    torch.testing.assert_close(loaded.row_embedding.weight, model.row_embedding.weight)
    torch.testing.assert_close(loaded(input_ids=ids).logits, logits.detach())


def test_aligned_spans_put_every_target_cell_at_one_distance_from_its_source_cell():
    """Instructions of 1 and 3 tokens, left-padded into one batch: each target cell sits exactly
    `span_stride` positions after its source cell in both rows; an instruction too long for the stride
    pushes the target on instead of overlapping it (positions only ever grow)."""
    img = [OFFSET + c for c in range(4)]
    short = [6, SOI, *img, EOI, 7, SOI, *img]
    long_ = [6, SOI, *img, EOI, 7, 8, 9, SOI, *img]
    ids = torch.tensor([[0, 0] + short, long_])
    positions = token_positions(ids, (ids != 0).long(), soi_id=SOI, span_stride=9)
    for row in range(2):
        soi = (ids[row] == SOI).nonzero().squeeze(-1)
        source, target = positions[row, soi[0] + 1:soi[0] + 5], positions[row, soi[1] + 1:soi[1] + 5]
        assert (target - source).tolist() == [9] * 4
    tight = token_positions(ids[1:], torch.ones_like(ids[1:]), soi_id=SOI, span_stride=4)[0]
    assert tight.tolist() == list(range(len(long_)))
    assert token_positions(ids, (ids != 0).long()).tolist() == token_positions(ids, (ids != 0).long(), SOI, 0).tolist()


def test_a_model_with_aligned_spans_reads_positions_from_the_ids(tmp_path):
    """A full forward without position ids equals one given the aligned positions, and differs from one
    given plain consecutive positions: the stride is in use, and is saved with the model."""
    positions = dict(grid=2, image_offset=OFFSET, codebook_size=CODES, soi_id=SOI, span_stride=12)
    model = build_causal_lm("llama", OFFSET + CODES, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                            intermediate_size=32, image_positions=positions)
    img = [OFFSET + c for c in (1, 7, 2, 2)]
    ids = torch.tensor([[6, SOI, *img, EOI, 7, SOI, *img]])
    aligned = token_positions(ids, torch.ones_like(ids), SOI, 12)
    logits = model(input_ids=ids).logits
    torch.testing.assert_close(logits, model(input_ids=ids, position_ids=aligned).logits)
    plain = torch.arange(ids.shape[1])[None]
    assert not torch.allclose(logits, model(input_ids=ids, position_ids=plain).logits)
    # Given positions and no mask, without a cache, the jump must not be read as a packed sequence.
    torch.testing.assert_close(model(input_ids=ids, position_ids=aligned, use_cache=False).logits, logits)
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(load_causal_lm(tmp_path)(input_ids=ids).logits, logits)


def test_the_source_embedding_reads_the_source_cell_each_target_token_predicts(tmp_path):
    """Each target input gets the source's token for the cell it predicts (left padding and a dropped
    source included); a fresh model starts exactly as the model without it; the setting and the weights
    are saved with the model."""
    from arm.model.positions import next_source_ids

    src, tgt = [OFFSET + c for c in (1, 7, 2, 5)], [OFFSET + c for c in (1, 9, 2, 5)]
    ids = torch.tensor([[0, 0, 6, SOI, *src, EOI, 7, SOI, *tgt, EOI],
                        [6, SOI, *src, EOI, 7, 8, 9, SOI, *tgt, EOI],
                        [0, 0, 0, 0, 0, 0, 6, SOI, EOI, 7, SOI, *tgt, EOI]])   # a dropped source
    nxt = next_source_ids(ids, OFFSET, CODES, SOI, cells=4)
    for row in range(2):
        at = (ids[row] == SOI).nonzero()[1, 0].item()                   # the target's <|soi|>
        assert nxt[row, at:at + 5].tolist() == src + [-1]                # cells 0..3, then nothing after cell 3
        assert (nxt[row, :at] == -1).all() and nxt[row, -1] == -1
    assert (nxt[2] == -1).all()

    positions = dict(grid=2, image_offset=OFFSET, codebook_size=CODES, soi_id=SOI)
    torch.manual_seed(0)
    plain = build_causal_lm("llama", OFFSET + CODES, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                            intermediate_size=32, image_positions=positions)
    torch.manual_seed(0)
    model = build_causal_lm("llama", OFFSET + CODES, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                            intermediate_size=32, image_positions={**positions, "source_embedding": True})
    assert model.source_projection.weight.abs().sum() == 0
    row = ids[1:2]
    torch.testing.assert_close(model(input_ids=row).logits, plain(input_ids=row).logits)
    with torch.no_grad():
        model.source_projection.weight.normal_()
    logits = model(input_ids=row).logits
    at = (row[0] == SOI).nonzero()[1, 0].item()
    torch.testing.assert_close(logits[:, :at], plain(input_ids=row).logits[:, :at])   # prompt untouched
    assert not torch.allclose(logits[:, at:], plain(input_ids=row).logits[:, at:])
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(load_causal_lm(tmp_path)(input_ids=row).logits, logits)
