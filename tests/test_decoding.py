"""The engine's static-cache decoder against the library's forward: the same logits for prompts, padded
batches, image positions, edits' source embeddings, both architectures, and after a rollback."""

from __future__ import annotations

import pytest
import torch

from arm.generate import Engine, Sampling
from arm.model.backbone import build_causal_lm
from arm.model.decoding import StaticDecoder, unsupported_reason
from arm.model.vocab import Vocab
from arm.text_tokenizer import SPECIAL_TOKENS

TEXT, CODES, GRID = 40, 16, 3


def tiny_model(arch: str = "qwen2", **positions):
    torch.manual_seed(0)
    vocab = Vocab(TEXT, CODES, {t: TEXT - len(SPECIAL_TOKENS) + i for i, t in enumerate(SPECIAL_TOKENS)})
    settings = dict(grid=GRID, image_offset=vocab.image_offset, codebook_size=CODES, soi_id=vocab["<|soi|>"], **positions)
    model = build_causal_lm(arch, vocab.size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                            intermediate_size=64, image_positions=settings)
    if arch == "llama":  # biases on every projection, as some Llama-family checkpoints have
        model.config.attention_bias = model.config.mlp_bias = True
        model = type(model)(model.config)
    with torch.no_grad():  # large enough that a wrong cell, source or position changes the logits visibly
        model.row_embedding.weight.normal_(std=1.0)
        model.col_embedding.weight.normal_(std=1.0)
        if positions.get("source_embedding"):
            model.source_projection.weight.normal_(std=1.0)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.5)
    return model.eval(), vocab


def edit_prompt(vocab: Vocab, source: list[int], words: list[int]) -> list[int]:
    return [vocab["<|edit|>"], vocab["<|soi|>"], *[vocab.image_id(c) for c in source], vocab["<|eoi|>"], *words,
            vocab["<|soi|>"]]


CASES = [("qwen2", {}), ("qwen2", {"source_embedding": True}), ("qwen2", {"span_stride": 16}), ("llama", {})]


@pytest.mark.parametrize("arch,positions", CASES, ids=["qwen2", "qwen2+source", "qwen2+span-stride", "llama+biases"])
def test_static_decoder_gives_the_library_forwards_logits(arch, positions):
    """Prefill a left-padded batch of two edits, then decode six codes: at every step the static path's
    logits equal those of the library's forward over its DynamicCache."""
    model, vocab = tiny_model(arch, **positions)
    static, library = Engine(model, vocab), Engine(model, vocab, static_cache=False)
    assert static.decoder is not None and library.decoder is None
    prompts = [edit_prompt(vocab, [3, 1, 4, 1, 5, 9, 2, 6, 5], [3, 4]),
               edit_prompt(vocab, [2, 7, 1, 8, 2, 8, 1, 8, 2], [5, 6, 7, 8, 9, 10])]    # longer: the other is padded
    a, state_a = static.prefill(prompts, new_tokens=6)
    b, state_b = library.prefill(prompts, new_tokens=6)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for cell in range(6):
        token = a[:, vocab.image_offset:].argmax(-1) + vocab.image_offset
        a = static.step(token, state_a, image_cell=cell)
        b = library.step(token, state_b, image_cell=cell)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_engines_sample_the_same_images_and_answers():
    model, vocab = tiny_model("qwen2", source_embedding=True)
    static, library = Engine(model, vocab), Engine(model, vocab, static_cache=False)
    prompts = [edit_prompt(vocab, [3, 1, 4, 1, 5, 9, 2, 6, 5], [3, 4]), [vocab["<|t2i|>"], 5, 6, vocab["<|soi|>"]]]
    sampling = [Sampling(temperature=1.0, seed=0), Sampling(temperature=1.0, seed=1)]
    assert torch.equal(static.generate_images(prompts, GRID * GRID, sampling=sampling),
                       library.generate_images(prompts, GRID * GRID, sampling=sampling))
    assert static.generate_text([[5, 6, 7], [8]], 5) == library.generate_text([[5, 6, 7], [8]], 5)


def test_rows_advance_by_different_counts_and_roll_back():
    """Speculative decoding appends several tokens per row and keeps a different number of them: after
    `truncate`, appending the kept tokens' successors gives the logits of a cache that never held the
    rejected ones, row by row."""
    model, vocab = tiny_model("qwen2")
    decoder = StaticDecoder(model)
    embed = model.get_input_embeddings()
    prompt = torch.tensor([[5, 6, 7], [8, 9, 10]])
    drafts = torch.tensor([[11, 12, 13], [14, 15, 16]])
    kept = torch.tensor([1, 3])                            # row 0 keeps one draft, row 1 all three
    cache = decoder.new_cache(2, 10)
    decoder.forward(embed(prompt), torch.arange(3).expand(2, 3), cache)
    decoder.forward(embed(drafts), torch.arange(3, 6).expand(2, 3), cache)
    cache.truncate(3 + kept)
    nxt = torch.tensor([[20], [21]])
    logits = decoder.forward(embed(nxt), (3 + kept)[:, None], cache, last_only=True)
    for row in range(2):
        ids = torch.cat([prompt[row], drafts[row, :kept[row]], nxt[row]])[None]
        reference = model(input_ids=ids).logits[0, -1]
        torch.testing.assert_close(logits[row], reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_packed_projections_follow_the_weights_they_copy(arch):
    """The stacked q/k/v and gate/up copies give the unstacked logits, and after an in-place update of a
    weight (an optimiser step between RL rollouts) and a reloaded state dict they are rebuilt: the
    decoder's logits stay the library's."""
    model, vocab = tiny_model(arch)
    decoder = StaticDecoder(model)
    assert decoder.pack
    ids = torch.tensor([[5, 6, 7, 8]])

    def logits(packed: bool) -> torch.Tensor:
        decoder.pack = packed
        cache = decoder.new_cache(batch=1, slots=8)
        return decoder.forward(model.get_input_embeddings()(ids), torch.arange(4)[None], cache)

    torch.testing.assert_close(logits(True), logits(False), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        model.base_model.layers[0].self_attn.k_proj.weight.mul_(2.0)
        model.base_model.layers[1].mlp.up_proj.weight.add_(0.1)
    torch.testing.assert_close(logits(True), model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    state = {k: v * 0.5 if k.endswith("v_proj.weight") else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    torch.testing.assert_close(logits(True), model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_unsupported_models_keep_the_library_forward():
    model, vocab = tiny_model("qwen2")
    model.config.layer_types = ["sliding_attention"] * 2
    assert "sliding" in unsupported_reason(model)
    assert Engine(model, vocab).decoder is None
    with pytest.raises(ValueError, match="library's forward"):
        StaticDecoder(model)


def test_the_cache_refuses_more_tokens_than_it_holds():
    model, _ = tiny_model("qwen2")
    decoder = StaticDecoder(model)
    cache = decoder.new_cache(1, 4)
    with pytest.raises(ValueError, match="holds 4 tokens"):
        decoder.forward(model.get_input_embeddings()(torch.tensor([[1, 2, 3, 4, 5]])), torch.arange(5)[None], cache)


# --- speculative Jacobi decoding --------------------------------------------------------------------------

@pytest.mark.parametrize("positions", [{}, {"source_embedding": True}], ids=["t2i", "edit+source"])
def test_jacobi_decoding_greedy_equals_plain_greedy(positions):
    """At temperature 0 both decoders must produce the argmax chain, guided, in a padded batch."""
    model, vocab = tiny_model("qwen2", **positions)
    engine = Engine(model, vocab)
    cond = [edit_prompt(vocab, [3, 1, 4, 1, 5, 9, 2, 6, 5], [3, 4]), edit_prompt(vocab, [2, 7, 1, 8, 2, 8, 1, 8, 2], [5])]
    uncond = [edit_prompt(vocab, [3, 1, 4, 1, 5, 9, 2, 6, 5], []), edit_prompt(vocab, [2, 7, 1, 8, 2, 8, 1, 8, 2], [])]
    greedy = Sampling(temperature=0.0)
    plain = engine.generate_images(cond, GRID * GRID, uncond=uncond, guidance_scale=2.0, sampling=greedy)
    for window in (1, 4, 12):
        jacobi = engine.generate_images(cond, GRID * GRID, uncond=uncond, guidance_scale=2.0, sampling=greedy,
                                        window=window)
        assert torch.equal(jacobi, plain), window


def exact_two_code_distribution(model, vocab, prompt: list[int], temperature: float) -> torch.Tensor:
    """(K, K): P(code 0 = i, code 1 = j) under the model, from full forwards."""
    lo, k = vocab.image_offset, CODES
    with torch.no_grad():
        first = (model(input_ids=torch.tensor([prompt])).logits[0, -1, lo:lo + k] / temperature).softmax(-1)
        ids = torch.tensor([prompt + [lo + i] for i in range(k)])
        second = (model(input_ids=ids).logits[:, -1, lo:lo + k] / temperature).softmax(-1)
    return first[:, None] * second


@pytest.mark.parametrize("window", [0, 3], ids=["plain", "jacobi"])
def test_sampled_images_follow_the_models_distribution(window):
    """20,000 two-code images against the exact joint distribution of their 256 outcomes: the total
    variation distance of the sample stays within what sampling noise gives (0.012 to 0.020 over three
    seeds of either decoder; a decoder that kept drafts without the test gives 0.77, one that redrew
    refused drafts from p instead of max(0, p - q) 0.087, on this sharp model)."""
    model, vocab = tiny_model("qwen2")
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)             # a sharp distribution: uniform drafts are mostly wrong
    engine = Engine(model, vocab)
    prompt = [vocab["<|t2i|>"], 5, 6, vocab["<|soi|>"]]
    exact = exact_two_code_distribution(model, vocab, prompt, temperature=1.0)
    assert exact.max() > 0.05                       # far from uniform (1 / 256)
    codes = engine.generate_images([prompt] * 20000, 2, sampling=Sampling(temperature=1.0, seed=0), window=window)
    counts = torch.bincount(codes[:, 0] * CODES + codes[:, 1], minlength=CODES * CODES).float()
    distance = 0.5 * (counts / counts.sum() - exact.flatten()).abs().sum()
    assert distance < 0.04, float(distance)


def test_compiled_steps_give_the_eager_decoders_images():
    """torch.compile of the decoding step (C++ kernels on the CPU): the same greedy images and the same
    sampled ones as the eager static decoder, plain and with a Jacobi window, guided."""
    model, vocab = tiny_model("qwen2", source_embedding=True)
    eager, compiled = Engine(model, vocab), Engine(model, vocab, compile=True)
    cond = [edit_prompt(vocab, [3, 1, 4, 1, 5, 9, 2, 6, 5], [3, 4]), edit_prompt(vocab, [2, 7, 1, 8, 2, 8, 1, 8, 2], [5])]
    uncond = [edit_prompt(vocab, [3, 1, 4, 1, 5, 9, 2, 6, 5], []), edit_prompt(vocab, [2, 7, 1, 8, 2, 8, 1, 8, 2], [])]
    for sampling, window in ((Sampling(temperature=0.0), 0), (Sampling(temperature=1.0, seed=3), 4)):
        a = eager.generate_images(cond, GRID * GRID, uncond=uncond, guidance_scale=2.0, sampling=sampling, window=window)
        b = compiled.generate_images(cond, GRID * GRID, uncond=uncond, guidance_scale=2.0, sampling=sampling, window=window)
        assert torch.equal(a, b), window
    assert compiled.decoder.compiled
