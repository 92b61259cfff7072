"""The inference engine against references: KV cache vs full forward, guidance, constraints, causality."""

from __future__ import annotations

import pytest
import torch

from arm.generate import Engine, RowSampling, Sampling, filter_logits, left_pad, row_probs
from arm.model.backbone import build_causal_lm
from arm.model.vocab import Vocab
from arm.text_tokenizer import SPECIAL_TOKENS

TEXT, CODES = 40, 16


def tiny_engine(grid: int | None = None, **extra_positions) -> Engine:
    """A 2-layer Qwen2 over TEXT text ids and CODES image codes; with `grid`, image row and column embeddings
    (and the settings in `extra_positions`, e.g. span_stride)."""
    torch.manual_seed(0)
    vocab = Vocab(TEXT, CODES, {t: TEXT - len(SPECIAL_TOKENS) + i for i, t in enumerate(SPECIAL_TOKENS)})
    positions = (dict(grid=grid, image_offset=vocab.image_offset, codebook_size=CODES, soi_id=vocab["<|soi|>"],
                      **extra_positions)
                 if grid else None)
    model = build_causal_lm("qwen2", vocab.size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                            intermediate_size=64, image_positions=positions)
    return Engine(model, vocab)


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


@pytest.fixture(scope="module", params=[{}, {"span_stride": 16}, {"source_embedding": True}],
                ids=["row-col", "row-col+span-stride", "row-col+source-embedding"])
def positions_engine(request):
    """An engine over a model with image row and column embeddings (a 3 x 3 grid), alone, with aligned
    image spans (the target's positions jump ahead of the prompt's), and with the source's token for the
    cell predicted next added to each target input."""
    engine = tiny_engine(grid=3, **request.param)
    model = engine.model
    with torch.no_grad():  # large enough that a wrong cell would change the logits visibly
        model.row_embedding.weight.normal_(std=1.0)
        model.col_embedding.weight.normal_(std=1.0)
        if request.param.get("source_embedding"):
            model.source_projection.weight.normal_(std=1.0)
    return engine


def test_kv_cache_decode_matches_full_forward_with_image_positions(positions_engine):
    """Each sampled token is fed back with its cell: greedy decoding through the cache picks, at every
    step, the argmax of a full forward over prompt + codes, whose cells come from the ids. An editing
    prompt holds a whole source image, so the target span's cells must restart at 0."""
    engine = positions_engine
    v = engine.vocab
    source = [v.image_id(c) for c in (3, 1, 4, 1, 5, 9, 2, 6, 5)]
    prompt = [v["<|edit|>"], v["<|soi|>"], *source, v["<|eoi|>"], 3, 4, v["<|soi|>"]]
    codes = engine.generate_images([prompt], num_tokens=9, sampling=Sampling(temperature=0.0))
    full = engine.model(input_ids=torch.tensor([prompt + (codes[0] + v.image_offset).tolist()])).logits[0]
    image_logits = full[len(prompt) - 1:-1, v.image_offset:]                     # (9, K) predicting each code
    assert torch.equal(image_logits.argmax(-1), codes[0])
    # The same model without its cell embeddings decodes differently: the cells are in use.
    cells = torch.full((1, len(prompt) + 9), -1)
    blind = engine.model(input_ids=torch.tensor([prompt + (codes[0] + v.image_offset).tolist()]), image_cells=cells)
    assert not torch.allclose(blind.logits[0, len(prompt) - 1:-1], full[len(prompt) - 1:-1])
    if engine.source_embedding:  # and the source is read at the target's cells
        none = torch.full((1, len(prompt) + 9), -1)
        unsourced = engine.model(input_ids=torch.tensor([prompt + (codes[0] + v.image_offset).tolist()]), source_ids=none)
        assert not torch.allclose(unsourced.logits[0, len(prompt) - 1:-1], full[len(prompt) - 1:-1])
        torch.testing.assert_close(unsourced.logits[0, :len(prompt) - 1], full[:len(prompt) - 1])


def test_kv_cache_decode_matches_full_forward(engine):
    prompt = [engine.vocab["<|t2i|>"], 3, 4, 5, engine.vocab["<|soi|>"]]
    extra = [engine.vocab.image_id(i) for i in (1, 7, 3, 9)]
    logits, state = engine.prefill([prompt], new_tokens=len(extra))
    cached = [logits]
    for t in extra:
        cached.append(engine.step(torch.tensor([t]), state))
    full = engine.model(input_ids=torch.tensor([prompt + extra])).logits[0, len(prompt) - 1:].float()
    torch.testing.assert_close(torch.cat(cached), full, rtol=1e-4, atol=1e-4)


def test_left_padded_rows_match_unpadded(engine):
    short, long = [engine.vocab["<|t2i|>"], 3, engine.vocab["<|soi|>"]], [engine.vocab["<|t2i|>"], 3, 4, 5, 6,
                                                                          engine.vocab["<|soi|>"]]
    batched, _ = engine.prefill([short, long], 0)
    alone, _ = engine.prefill([short], 0)
    torch.testing.assert_close(batched[0], alone[0], rtol=1e-4, atol=1e-4)
    ids, mask = left_pad([[1, 2], [3]], pad_id=0)
    assert ids.tolist() == [[1, 2], [0, 3]] and mask.tolist() == [[1, 1], [0, 1]]


def test_images_are_exactly_n_image_codes(engine):
    prompt = [engine.vocab["<|t2i|>"], 3, engine.vocab["<|soi|>"]]
    codes = engine.generate_images([prompt, prompt], num_tokens=9, sampling=Sampling(seed=1))
    assert codes.shape == (2, 9) and codes.min() >= 0 and codes.max() < CODES


def test_guidance_scale_one_equals_conditional_sampling(engine):
    prompt = [engine.vocab["<|t2i|>"], 3, 4, engine.vocab["<|soi|>"]]
    uncond = [engine.vocab["<|t2i|>"], engine.vocab["<|soi|>"]]
    plain = engine.generate_images([prompt], 8, sampling=Sampling(seed=5))
    guided_one = engine.generate_images([prompt], 8, uncond=[uncond], guidance_scale=1.0, sampling=Sampling(seed=5))
    assert torch.equal(plain, guided_one)
    guided = engine.generate_images([prompt], 8, uncond=[uncond], guidance_scale=3.0, sampling=Sampling(seed=5))
    assert guided.shape == plain.shape


def test_guided_logits_follow_the_cfg_formula(engine):
    prompt = [engine.vocab["<|t2i|>"], 3, 4, engine.vocab["<|soi|>"]]
    uncond = [engine.vocab["<|t2i|>"], engine.vocab["<|soi|>"]]
    # Greedy decoding of the first token must pick argmax(u + s (c - u)) over image ids.
    c, _ = engine.prefill([prompt], 0)
    u, _ = engine.prefill([uncond], 0)
    lo, hi = engine.vocab.image_offset, engine.vocab.size
    expected = (u[0, lo:hi] + 2.5 * (c[0, lo:hi] - u[0, lo:hi])).argmax()
    got = engine.generate_images([prompt], 1, uncond=[uncond], guidance_scale=2.5, sampling=Sampling(temperature=0))
    assert int(got[0, 0]) == int(expected)


def test_edit_guidance_follows_both_scales_and_source_scale_one_runs_two_rows(engine, monkeypatch):
    """Editing mixes u + i (src - u) + t (c - src); at source scale 1 that is src + t (c - src), which needs
    no fully unconditional row, and a row at scale 1 comes out the same beside rows at another scale."""
    v = engine.vocab
    source = [v.image_offset + k for k in (1, 5, 2, 7)]
    cond = [v["<|edit|>"], v["<|soi|>"], *source, v["<|eoi|>"], 3, 4, v["<|soi|>"]]
    src_only = [v["<|edit|>"], v["<|soi|>"], *source, v["<|eoi|>"], v["<|soi|>"]]
    uncond = [v["<|edit|>"], v["<|soi|>"]]
    c, u, src = (engine.prefill([row], 0)[0][0, v.image_offset:v.size] for row in (cond, uncond, src_only))
    greedy = Sampling(temperature=0)
    for text, image in ((2.5, 1.5), (2.5, 1.0), (1.0, 2.0)):
        expected = (u + image * (src - u) + text * (c - src)).argmax()
        got = engine.generate_images([cond], 1, uncond=[uncond], source_only=[src_only], guidance_scale=text,
                                     image_guidance_scale=image, sampling=greedy)
        assert int(got[0, 0]) == int(expected), (text, image)

    prefill, batch_sizes = engine.prefill, []
    monkeypatch.setattr(engine, "prefill", lambda rows, n: (batch_sizes.append(len(rows)), prefill(rows, n))[1])
    alone = engine.generate_images([cond], 6, uncond=[uncond], source_only=[src_only], guidance_scale=2.5,
                                   image_guidance_scale=1.0, sampling=Sampling(seed=3))
    assert batch_sizes == [2]  # cond + source-only: the unconditional row is never run
    beside = engine.generate_images([cond, cond], 6, uncond=[uncond] * 2, source_only=[src_only] * 2,
                                    guidance_scale=2.5, image_guidance_scale=[1.0, 1.5],
                                    sampling=[Sampling(seed=3), Sampling(seed=4)])
    assert batch_sizes[-1] == 6
    assert torch.equal(beside[0], alone[0])


def test_causality_future_tokens_do_not_change_past_logits(engine):
    a = torch.tensor([[5, 6, 7, 8, 9]])
    b = a.clone()
    b[0, 4] = 20
    la, lb = engine.model(input_ids=a).logits, engine.model(input_ids=b).logits
    torch.testing.assert_close(la[0, :4], lb[0, :4])
    assert not torch.allclose(la[0, 4], lb[0, 4])


def test_text_generation_never_emits_image_ids_and_is_seeded(engine):
    prompt = [engine.vocab["<|und|>"], 3, 4]
    a = engine.generate_text([prompt], max_new_tokens=6, sampling=Sampling(temperature=1.0, seed=3))
    b = engine.generate_text([prompt], max_new_tokens=6, sampling=Sampling(temperature=1.0, seed=3))
    assert a == b and all(t < TEXT for t in a[0])


def test_top_k_and_top_p_filtering():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # softmax of [3, 2, 1, 0] = [0.64, 0.24, 0.09, 0.03]: top_p 0.7 keeps the first two.
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, True, True]]



def test_row_probs_apply_each_rows_own_settings():
    """A batch whose rows differ in temperature, top-k and top-p (the service batches unrelated requests):
    each row's distribution is `filter_logits` and a softmax at its own settings, for (B, K) and for the
    (B, T, K) logits of a Jacobi step; a greedy row is one-hot at its argmax."""
    torch.manual_seed(0)
    settings = [Sampling(1.0), Sampling(0.5, top_k=3), Sampling(0.7, top_p=0.6), Sampling(2.0, top_k=5, top_p=0.9),
                Sampling(0.0), Sampling(1.0, top_k=CODES)]
    rules = RowSampling.of(settings, torch.device("cpu"), CODES)
    for logits in (torch.randn(len(settings), CODES) * 3, torch.randn(len(settings), 4, CODES) * 3):
        probs = row_probs(logits, *rules.tensors(), rules.any_top_k, rules.any_top_p)
        for row, s in enumerate(settings):
            if s.temperature == 0.0:
                expected = torch.nn.functional.one_hot(logits[row].argmax(-1), CODES).float()
            else:
                expected = filter_logits(logits[row] / s.temperature, s.top_k, s.top_p).softmax(-1)
            torch.testing.assert_close(probs[row], expected, rtol=0, atol=1e-6)
        assert not bool(probs[:, ..., :].isnan().any())


@pytest.mark.parametrize("window", [0, 4], ids=["plain", "jacobi"])
def test_per_row_settings_make_each_row_independent_of_its_batch(engine, window):
    """The service batches unrelated requests: a row with its own seed and scales must come out the same
    alone and beside other rows (and a per-row list with one shared value equals the shared call), also
    when rows accept different numbers of drafts per step."""
    v = engine.vocab
    prompts = [[v["<|t2i|>"], 3, 4, v["<|soi|>"]], [v["<|t2i|>"], 5, v["<|soi|>"]], [v["<|t2i|>"], 6, 7, 8, v["<|soi|>"]]]
    uncond = [[v["<|t2i|>"], v["<|soi|>"]]] * 3
    rows = [Sampling(temperature=1.0, seed=11), Sampling(temperature=0.5, top_k=4, seed=12), Sampling(seed=13)]
    batch = engine.generate_images(prompts, 8, uncond=uncond, guidance_scale=[3.0, 1.0, 2.0], sampling=rows,
                                   window=window)
    for i, scale in enumerate([3.0, 1.0, 2.0]):
        alone = engine.generate_images([prompts[i]], 8, uncond=[uncond[i]], guidance_scale=[scale], sampling=[rows[i]],
                                       window=window)
        assert torch.equal(batch[i], alone[0]), i
    shared = engine.generate_images(prompts[:1], 8, uncond=uncond[:1], guidance_scale=3.0, sampling=Sampling(seed=11),
                                    window=window)
    assert torch.equal(shared[0], batch[0])
    with pytest.raises(ValueError, match="2 guidance scales for 3 rows"):
        engine.generate_images(prompts, 2, uncond=uncond, guidance_scale=[1.0, 2.0], sampling=rows)
