"""The engine's decoder: a Hugging Face Qwen2 or Llama model's own weights run by one short function over a
preallocated KV cache.

Decoding a small model one token at a time is all overhead: the default model does about 3 MFLOP per
token, and the library's forward spends its time building masks, growing a `DynamicCache` by
concatenation and dispatching through a dozen module calls per layer. This path keeps the model's
weights and its layout and runs the same arithmetic as a few plain tensor ops per layer:

    x = embeds                                                   (B, T, d): T new tokens of every row
    per layer:  h = rmsnorm(x);  q, k, v = h Wq, h Wk, h Wv       rotary at each row's own positions
                K[:, :, slots], V[:, :, slots] = k, v             written into the static cache
                x = x + attention(q, K, V; earlier real slots) Wo
                x = x + mlp(rmsnorm(x))
    logits = rmsnorm(x) W_head

The cache has a slot per token the call will ever hold (prompt + budget), allocated once; every row
writes its tokens at its own next slot (`KVCache.lengths`), so rows may advance by different numbers of
tokens (speculative decoding accepts a different count per row). A slot is attended to only when it
holds a real token (left padding never does) and comes at or before the query's own slot.

`supports(model)` says when the path applies (full attention, rotary frequencies fixed in length);
otherwise the engine keeps the library's forward. `tests/test_decoding.py` checks both give the same
logits for prompts, padded batches, image positions and edits' source embeddings.

>>> from arm.model.backbone import build_causal_lm
>>> model = build_causal_lm("qwen2", vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
...                         intermediate_size=64).eval()
>>> decoder = StaticDecoder(model)
>>> ids = torch.tensor([[5, 6, 7]])
>>> cache = decoder.new_cache(batch=1, slots=8)
>>> logits = decoder.forward(model.get_input_embeddings()(ids), torch.arange(3)[None], cache)
>>> reference = model(input_ids=ids).logits
>>> bool(torch.allclose(logits, reference, atol=1e-5)), cache.lengths.tolist()
(True, [3])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SUPPORTED_TYPES = ("qwen2", "llama")
SLOT_BUCKET = 64       # a compiled decoder's caches are sized in multiples of this
FIXED_ROPE = ("default", "linear", "llama3", "yarn")   # frequencies that do not change with the length


def unsupported_reason(model) -> str | None:
    """Why `StaticDecoder` cannot run `model` (None: it can)."""
    config = model.config
    if config.model_type not in SUPPORTED_TYPES:
        return f"model type {config.model_type!r} (supported: {', '.join(SUPPORTED_TYPES)})"
    if any(kind != "full_attention" for kind in (getattr(config, "layer_types", None) or [])):
        return "sliding-window attention layers"
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope not in FIXED_ROPE:
        return f"rotary type {rope!r}, whose frequencies change with the sequence length"
    if getattr(config, "_attn_implementation", "sdpa") not in ("sdpa", "eager"):
        return f"attention implementation {config._attn_implementation!r}"
    return None


def supports(model) -> bool:
    return unsupported_reason(model) is None


PACK_AT_MOST_BYTES = 256 * 2**20   # stack projections (`StaticDecoder.packed`) while the copies stay this small


def _packable(layer) -> list[torch.Tensor]:
    """The parameters `_pack_layer` stacks: q, k, v, gate and up projections' weights and biases."""
    projections = (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.mlp.gate_proj,
                   layer.mlp.up_proj)
    return [p for m in projections for p in (m.weight, m.bias) if p is not None]


def _stack(*linears) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One (sum of outputs, in) weight and its bias (None when none of them has one) for several linears."""
    weight = torch.cat([m.weight for m in linears], dim=0)
    if all(m.bias is None for m in linears):
        return weight, None
    return weight, torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.weight.shape[0]) for m in linears])


def _pack_layer(layer) -> tuple:
    attention, mlp = layer.self_attn, layer.mlp
    return (*_stack(attention.q_proj, attention.k_proj, attention.v_proj), *_stack(mlp.gate_proj, mlp.up_proj))


def compile_step(fn):
    """`fn` through torch.compile as a decoding step: static shapes (dynamic ones compiled to slower code on
    the CPU, docs/model.md, Decoding), so each batch size and cache size compiles once, and the C++ wrapper,
    which calls the kernels without a Python frame each (0.56 against 0.74 ms a step for the default
    model at batch 1; eager: 1.50)."""
    import torch._dynamo

    # Every (batch, tokens per step, cache size) is its own graph; the default limit of 8 would fall back
    # to eager, silently, for the 9th shape a service meets.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(fn, dynamic=False, options={"cpp_wrapper": True})


@dataclass
class KVCache:
    """keys, values: one (B, H_kv, slots, head_dim) tensor per layer; `real` (B, slots): the slot holds a
    token (False for left padding and for slots not yet written); `lengths` (B,): each row's next slot."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    real: torch.Tensor
    lengths: torch.Tensor
    longest: int = 0          # max(lengths), kept as a number: checking room must not wait on the device

    @property
    def slots(self) -> int:
        return self.real.shape[1]

    def truncate(self, lengths: torch.Tensor) -> None:
        """Forget every slot at or past `lengths` (B,) (rejected speculative tokens); they are rewritten later."""
        forget_from(self.real, lengths)
        self.lengths = lengths.clone()
        self.longest = int(lengths.max())


def forget_from(real: torch.Tensor, lengths: torch.Tensor) -> None:
    """In place: the slots of `real` (B, slots) at or past each row's `lengths` (B,) hold no token."""
    real &= torch.arange(real.shape[1], device=real.device)[None, :] < lengths[:, None]


class StaticDecoder:
    """Runs a Qwen2 or Llama causal LM (`transformers`' classes, ours with image positions included:
    they differ only in the input embeddings, which the caller passes) over a `KVCache`. It reads the
    model's parameters at every call, so it follows training updates (RL samples between steps)."""

    def __init__(self, model, compile: bool = False):
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"StaticDecoder cannot run this model: {reason}; use the library's forward")
        self.model = model
        self.base = model.base_model
        config = model.config
        attention = self.base.layers[0].self_attn
        self.head_dim = attention.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.scaling = attention.scaling
        self.qkv_widths = [self.num_heads * self.head_dim] + [self.num_kv_heads * self.head_dim] * 2
        rotary = self.base.rotary_emb
        self.inv_freq = rotary.inv_freq
        self.rotary_scale = float(rotary.attention_scaling)
        # Decoding steps through torch.compile (fused C++ kernels on CPU, Triton on GPU), `compile_step`;
        # a cache's slots are rounded up to SLOT_BUCKET so calls of a few lengths share graphs.
        self._compiled = compile_step(self._forward) if compile else None
        # q, k, v and gate, up as one matmul each (`packed`), where the copy is small enough not to matter.
        layers = self.base.layers
        self._pack_sources = [p for layer in layers for p in _packable(layer)]
        self.pack = sum(p.numel() * p.element_size() for p in self._pack_sources) <= PACK_AT_MOST_BYTES
        self._packed, self._packed_key = None, None

    def new_cache(self, batch: int, slots: int, dtype: torch.dtype | None = None,
                  device: torch.device | None = None) -> KVCache:
        """An empty cache of `slots` tokens per row (the prompt's width plus every token to be decoded)."""
        weight = self.base.embed_tokens.weight
        dtype, device = dtype or weight.dtype, device or weight.device
        shape = (batch, self.num_kv_heads, slots, self.head_dim)
        layers = len(self.base.layers)
        return KVCache(keys=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)],
                       values=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)],
                       real=torch.zeros(batch, slots, dtype=torch.bool, device=device),
                       lengths=torch.zeros(batch, dtype=torch.long, device=device))

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) positions -> cos, sin (B, 1, T, head_dim), as the library's rotary embedding makes them."""
        freqs = positions[..., None].float() * self.inv_freq.to(positions.device)   # (B, T, head_dim / 2)
        angles = torch.cat((freqs, freqs), dim=-1)
        return ((angles.cos() * self.rotary_scale).to(dtype)[:, None],
                (angles.sin() * self.rotary_scale).to(dtype)[:, None])

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    @staticmethod
    def _rms_norm(x: torch.Tensor, norm) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return norm.weight * x32.to(dtype)

    def packed(self) -> list[tuple] | None:
        """Per layer (w_qkv, b_qkv, w_gate_up, b_gate_up): the attention's q, k and v projections stacked
        into one weight, and the MLP's gate and up into another, so a step runs two matmuls where it ran
        five (a small model's decoding step is mostly per-call overhead: the default model's guided step at
        batch 1 took 1.13 -> 0.88 ms compiled and 3.03 -> 2.59 ms eager, best of three in one run). The stacks are copies, rebuilt when any source parameter changed (its
        version counter or storage: training updates between RL rollouts, a reloaded state dict); None
        when the copies would take more than PACK_AT_MOST_BYTES (large models, where a step is arithmetic)."""
        if not self.pack:
            return None
        key = tuple((p.data_ptr(), p._version) for p in self._pack_sources)
        if key != self._packed_key:
            with torch.no_grad():
                self._packed = [_pack_layer(layer) for layer in self.base.layers]
            self._packed_key = key
        return self._packed

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                real: torch.Tensor | None = None, last_only: bool = False, prefill: bool = False,
                image_cells: torch.Tensor | None = None, source_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Append T tokens to every row and return their logits (B, T, V) (or (B, V) for the last one with
        `last_only`). embeds (B, T, d): the tokens' input embeddings; positions (B, T): their position
        ids; real (B, T): which of them are tokens (False: left padding), all by default. Row b's tokens
        go to slots lengths[b] .. lengths[b] + T - 1. `prefill`: a prompt, whose width varies from call
        to call, so it runs eagerly even when decoding steps are compiled.

        `embeds` may also be (B, T) token ids: the model's own input embeddings are then taken inside
        the (compiled) step, with `image_cells` and `source_ids` for a model with image positions."""
        b, t = embeds.shape[:2]
        if cache.longest + t > cache.slots:
            raise ValueError(f"the KV cache holds {cache.slots} tokens per row; this call needs {cache.longest + t}")
        if real is None:
            real = torch.ones(b, t, dtype=torch.bool, device=embeds.device)
        run = self._compiled if self._compiled is not None and not prefill else self._forward
        logits = run(embeds, positions, real, cache.keys, cache.values, cache.real, cache.lengths, last_only,
                     image_cells, source_ids, self.packed())
        cache.lengths = cache.lengths + t
        cache.longest += t
        return logits

    def _forward(self, embeds, positions, real, keys, values, cache_real, lengths, last_only: bool,
                 image_cells=None, source_ids=None, packed=None):
        """`forward` on tensors alone (what `torch.compile` traces): writes the cache in place. `packed`:
        the stacked projections of `packed()` (None: each projection on its own)."""
        if not embeds.is_floating_point():   # token ids: embedded here, inside the compiled graph
            embeds = (self.model.input_embeddings(embeds, image_cells, source_ids) if image_cells is not None
                      else self.model.get_input_embeddings()(embeds))
        b, t, _ = embeds.shape
        device = embeds.device
        slots = lengths[:, None] + torch.arange(t, device=device)                    # (B, T) where they go
        cache_real.scatter_(1, slots, real)
        # A query sees the real slots up to its own, and always its own (a padding query then stays finite).
        slot = torch.arange(cache_real.shape[1], device=device)
        visible = (cache_real[:, None, :] & (slot[None, None, :] <= slots[:, :, None])) | (slot == slots[:, :, None])
        visible = visible[:, None]                                                   # (B, 1, T, slots)
        cos, sin = self.rotary(positions, embeds.dtype)
        index = slots[:, None, :, None].expand(b, self.num_kv_heads, t, self.head_dim)
        x = embeds
        for i, layer in enumerate(self.base.layers):
            attention, mlp = layer.self_attn, layer.mlp
            h = self._rms_norm(x, layer.input_layernorm)
            if packed is not None:
                q, k, v = F.linear(h, packed[i][0], packed[i][1]).split(self.qkv_widths, dim=-1)
            else:
                q, k, v = (F.linear(h, p.weight, p.bias) for p in (attention.q_proj, attention.k_proj, attention.v_proj))
            q, k, v = (z.view(b, t, -1, self.head_dim).transpose(1, 2) for z in (q, k, v))   # (B, heads, T, head_dim)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)            # (B, heads, T, head_dim)
            keys[i].scatter_(2, index, k.to(keys[i].dtype))
            values[i].scatter_(2, index, v.to(values[i].dtype))
            out = F.scaled_dot_product_attention(q, keys[i], values[i], attn_mask=visible,
                                                 scale=self.scaling, enable_gqa=self.num_heads != self.num_kv_heads)
            out = out.transpose(1, 2).reshape(b, t, -1)                              # (B, T, heads * head_dim)
            x = x + F.linear(out, attention.o_proj.weight, attention.o_proj.bias)
            h = self._rms_norm(x, layer.post_attention_layernorm)
            if packed is not None:
                gate, up = F.linear(h, packed[i][2], packed[i][3]).chunk(2, dim=-1)
            else:
                gate = F.linear(h, mlp.gate_proj.weight, mlp.gate_proj.bias)
                up = F.linear(h, mlp.up_proj.weight, mlp.up_proj.bias)
            x = x + F.linear(mlp.act_fn(gate) * up, mlp.down_proj.weight, mlp.down_proj.bias)
        if last_only:
            x = x[:, -1]
        head = self.model.get_output_embeddings()
        return F.linear(self._rms_norm(x, self.base.norm), head.weight, head.bias)
