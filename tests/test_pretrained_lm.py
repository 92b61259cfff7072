"""A pretrained text LM through `prepare` and `pretrain` at tiny size, as the 7B preset takes Qwen2.5-7B:
the text side is the LM's own tokenizer.json (not a BPE trained on our data), its rows start from the
checkpoint, and after a short unified run the model still reads the text it was trained on."""

from __future__ import annotations

import math
import random
import shutil

import pytest
import torch

from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow

NAMES = "anna ben carl dora emil fay gus hana".split()
VERBS = "likes eats paints buys sells finds".split()
THINGS = "apples boats chairs drums eggs flutes grapes hats".split()
WHEN = ["on monday", "on tuesday", "at noon", "at night", "in june"]


def _corpus() -> tuple[list[str], list[str]]:
    """Sentences of a small grammar no world text uses, and a held-out tenth of them."""
    sentences = [f"{n} {v} {t} {w} ." for n in NAMES for v in VERBS for t in THINGS for w in WHEN]
    random.Random(0).shuffle(sentences)
    held = len(sentences) // 10
    return sentences[held:], sentences[:held]


def _perplexity(model, rows: list[list[int]]) -> float:
    """exp of the mean next-token loss over the rows (each read on its own, no task token)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in rows:
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits[0, :-1].float()
            total += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
            count += len(ids) - 1
    return math.exp(total / count)


@pytest.fixture(scope="module")
def text_lm(tmp_path_factory):
    """A tiny Qwen2 text LM trained on the grammar, saved with its own byte-level BPE tokenizer.json
    (no special tokens of ours): what a user's local checkpoint folder holds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from arm.model.backbone import build_causal_lm

    train, held = _corpus()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(train, trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    rows = [enc.ids for enc in tokenizer.encode_batch(train)]
    torch.manual_seed(0)
    model = build_causal_lm("qwen2", tokenizer.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=4,
                            num_kv_heads=2, intermediate_size=64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = random.Random(1)
    for _ in range(300):
        batch = [rows[g.randrange(len(rows))] for _ in range(32)]
        width = max(map(len, batch))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in batch])
        labels = torch.tensor([r + [-100] * (width - len(r)) for r in batch])
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    folder = tmp_path_factory.mktemp("text_lm")
    model.save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    held_rows = [enc.ids for enc in tokenizer.encode_batch(held)]
    return folder, held_rows, _perplexity(model, held_rows)


def test_pretrained_lm_keeps_its_tokenizer_and_its_text(text_lm, tiny_world, encoded_stages, tmp_path, capfd):
    from arm.config import load_config
    from arm.encode import encode_stage
    from arm.prepare import prepare
    from arm.model.saved import load_unified_model
    from arm.model.stage import pretrain_stage
    from arm.text_tokenizer import SPECIAL_TOKENS, load_tokenizer

    folder, held_rows, before = text_lm
    vocab_size = len(load_tokenizer(folder / "tokenizer.json").get_vocab()) - len(SPECIAL_TOKENS)
    # A perplexity far under the vocabulary's (a uniform guess): the LM has something to keep.
    assert before < 3, before

    artifacts = tmp_path / "a"
    cfg = load_config("configs/default.yaml", tiny_overrides(
        tiny_world, artifacts, f"pretrain.pretrained_path={folder}", "pretrain.max_steps=20",
        "pretrain.sample_every_steps=0"))
    prepare(cfg)
    assert "text tokenizer from" in capfd.readouterr().err
    prepared = load_tokenizer(artifacts / "prepare" / "tokenizer.json")
    theirs = load_tokenizer(folder / "tokenizer.json")
    assert prepared.get_vocab() == theirs.get_vocab()            # the LM's ids, then our specials after them
    assert prepared.token_to_id(SPECIAL_TOKENS[0]) == vocab_size

    shutil.copytree(encoded_stages / "tokenizer", artifacts / "tokenizer")    # the visual side is the same
    encode_stage(cfg)
    pretrain_stage(cfg)
    model, info, _ = load_unified_model(artifacts / "pretrain")
    assert info.text_size == vocab_size + len(SPECIAL_TOKENS)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2    # the checkpoint's sizes
    after = _perplexity(model, held_rows)
    # 20 unified steps on world sequences (images, captions, questions: none of this grammar) at the
    # preset's learning rate: the held-out grammar's perplexity may rise, but by at most half, and stays
    # far under the 300-odd of a model that never read it.
    assert after < 1.5 * before, (before, after)


def test_pretrain_refuses_a_text_side_that_is_not_the_checkpoints(text_lm, encoded):
    """A prepare run by hand with the data's own BPE: the checkpoint's rows would be read for the wrong
    tokens; pretrain says which setting fixes it."""
    from arm.config import load_config
    from arm.model.stage import pretrain_stage

    folder, _, _ = text_lm
    cfg = load_config("configs/default.yaml", tiny_overrides(
        encoded.data.root, encoded.artifacts, f"pretrain.pretrained_path={folder}"))
    with pytest.raises(ValueError, match="prepare.tokenizer_json="):
        pretrain_stage(cfg)
