"""Pretraining's loss: the output head run only where a target is predicted, and right-padded batches
without a padding mask, give the loss and gradients of the full forward with its mask."""

from __future__ import annotations

import random

import pytest
import torch

from arm.model.backbone import build_causal_lm
from arm.model.data import collate
from arm.model.sequences import editing_sequence, generation_sequence, understanding_sequence
from arm.model.train import attention_mask_for, next_token_loss, target_loss
from arm.model.vocab import Vocab

VOCAB = Vocab(30, 16, {"<|pad|>": 22, "<|eos|>": 23, "<|und|>": 24, "<|t2i|>": 25, "<|edit|>": 26,
                       "<|soi|>": 27, "<|eoi|>": 28})


def task_batch(seed: int) -> dict:
    """A batch of mixed templates and lengths, right-padded as `collate` builds training batches."""
    rng = random.Random(seed)
    image = lambda: [rng.randrange(16) for _ in range(4)]                       # 2 x 2 grid
    text = lambda: [rng.randrange(20) for _ in range(rng.randrange(1, 7))]
    sequences = [generation_sequence(VOCAB, text(), image()), editing_sequence(VOCAB, image(), text(), image()),
                 understanding_sequence(VOCAB, image(), text(), text()), editing_sequence(VOCAB, None, [], image()),
                 understanding_sequence(VOCAB, None, text(), text())]
    return collate(sequences, VOCAB.pad)


def tiny_model(image_positions: bool):
    positions = dict(grid=2, image_offset=VOCAB.image_offset, codebook_size=16, soi_id=VOCAB["<|soi|>"],
                     source_embedding=True) if image_positions else None
    torch.manual_seed(0)
    model = build_causal_lm("qwen2", VOCAB.size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                            intermediate_size=64, image_positions=positions)
    if image_positions:
        torch.nn.init.normal_(model.source_projection.weight, std=0.1)      # so the source path is exercised
    return model


def loss_and_grads(model, loss_fn) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    loss = loss_fn()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("image_positions", [True, False])
def test_target_loss_without_a_padding_mask_equals_the_full_masked_loss(image_positions):
    model, batch = tiny_model(image_positions), task_batch(0)
    assert (batch["attention_mask"] == 0).any()                                 # the batch has padding
    assert attention_mask_for(batch) is None
    reference, reference_grads = loss_and_grads(model, lambda: next_token_loss(
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]))
    loss, grads = loss_and_grads(model, lambda: target_loss(model, batch["input_ids"], batch["labels"],
                                                            attention_mask_for(batch)))
    torch.testing.assert_close(loss, reference)
    assert len(grads) == len(reference_grads)
    for g, r in zip(grads, reference_grads):
        torch.testing.assert_close(g, r)


def test_logits_at_returns_those_positions_logits_in_row_major_order():
    model, batch = tiny_model(True), task_batch(1)
    at = torch.rand(batch["input_ids"].shape, generator=torch.Generator().manual_seed(0)) < 0.4
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits   # (B, T, V)
    kept = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_at=at)
    assert kept.shape == (int(at.sum()), VOCAB.size)
    torch.testing.assert_close(kept, full[at])


def test_only_a_left_padded_batch_keeps_its_mask():
    batch = task_batch(2)
    lengths, width = batch["attention_mask"].sum(-1), batch["input_ids"].shape[1]
    left = {k: torch.stack([row.roll(int(width - n)) for row, n in zip(batch[k], lengths)])
            for k in ("input_ids", "labels", "attention_mask")}              # the same rows, padding first
    assert attention_mask_for(left) is left["attention_mask"]
    assert attention_mask_for(batch) is None
    assert attention_mask_for({"attention_mask": torch.ones(2, 5, dtype=torch.long)}) is None
