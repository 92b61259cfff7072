"""The 7B preset, built on the meta device (no memory, no weights): its backbone is exactly Qwen2.5-7B's
shape, and the unified vocabulary adds the 64,000 image codes on top."""

from __future__ import annotations

import math

import pytest

from arm.config import load_config
from arm.model.backbone import build_causal_lm, count_parameters
from arm.model.vocab import SOI, Vocab
from arm.model.stage import backbone_kwargs

QWEN25_TEXT_ROWS = 152_064        # Qwen2.5-7B's (padded) embedding rows
QWEN25_TOKENIZER = 151_665        # tokens its tokenizer.json defines
OUR_SPECIALS = 7                  # <|pad|> <|eos|> <|und|> <|t2i|> <|edit|> <|soi|> <|eoi|>


def _meta_model(cfg, text_rows: int, codes: int = 0):
    vocab = Vocab(text_rows, codes, {SOI: text_rows - 1})
    kwargs = backbone_kwargs(cfg, vocab, cfg.tokenizer.grid)
    kwargs["pretrained_path"] = None  # the sizes in the preset; the checkpoint is not shipped
    return build_causal_lm(**kwargs, device="meta")


def test_7b_preset_backbone_is_qwen25_7b_on_the_meta_device():
    cfg = load_config("configs/arm-7b.yaml")
    model = _meta_model(cfg, QWEN25_TEXT_ROWS)
    assert all(p.is_meta for p in model.parameters())
    total = count_parameters(model)
    embedding = 2 * QWEN25_TEXT_ROWS * cfg.pretrain.hidden_size  # untied input and output embeddings
    assert 7.0e9 <= total <= 8.0e9, total
    # Qwen2.5-7B's model card: 7.61B parameters, 6.53B of them outside the embeddings.
    assert total == pytest.approx(7.61e9, rel=0.002)
    assert total - embedding == pytest.approx(6.53e9, rel=0.002)


def test_7b_preset_unified_vocabulary_adds_the_image_codes():
    cfg = load_config("configs/arm-7b.yaml")
    codes = math.prod(cfg.tokenizer.fsq_levels)
    assert codes == 64_000
    vocab = QWEN25_TOKENIZER + OUR_SPECIALS + codes
    body = count_parameters(_meta_model(cfg, QWEN25_TEXT_ROWS)) - 2 * QWEN25_TEXT_ROWS * cfg.pretrain.hidden_size
    model = _meta_model(cfg, QWEN25_TOKENIZER + OUR_SPECIALS, codes)
    assert model.get_input_embeddings().weight.shape == (vocab, cfg.pretrain.hidden_size)
    assert model.get_output_embeddings().weight.shape == (vocab, cfg.pretrain.hidden_size)
    # Only the embeddings grow: 2 x 215,672 x 3,584 = 1.55B, 8.07B in all.
    assert count_parameters(model) == body + 2 * vocab * cfg.pretrain.hidden_size
    assert count_parameters(model) == pytest.approx(8.07e9, rel=0.002)


@pytest.mark.parametrize("preset", ["configs/default.yaml", "configs/small.yaml", "configs/arm-7b.yaml"])
def test_presets_split_their_global_batch_evenly(preset):
    p = load_config(preset).pretrain
    processes = p.devices * p.num_nodes if p.strategy != "auto" else 1
    assert p.batch_size % processes == 0


def test_7b_preset_shards_with_bf16_and_activation_checkpointing():
    p = load_config("configs/arm-7b.yaml").pretrain
    assert (p.strategy, p.precision, p.activation_checkpointing) == ("fsdp", "bf16-mixed", True)
