"""Image row and column embeddings: cells counted from the ids, saved and loaded with the model."""

from __future__ import annotations

import torch

from arm.model.backbone import build_causal_lm, load_causal_lm
from arm.model.positions import image_cell_indices, uses_image_positions

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
    assert uses_image_positions(loaded) and loaded.config.arm_image_positions == positions
    torch.testing.assert_close(loaded.row_embedding.weight, model.row_embedding.weight)
    torch.testing.assert_close(loaded(input_ids=ids).logits, logits.detach())
