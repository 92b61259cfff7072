"""The decoder backbone: a Hugging Face causal LM class (Qwen2 or Llama), built from sizes for the small
presets or loaded from a local pretrained checkpoint with its embeddings extended to the unified id space.
Using the library's own classes keeps pretrained initialisation, FSDP wrapping and vLLM-style serving open.

>>> model = build_causal_lm("qwen2", vocab_size=600, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
...                         intermediate_size=64)
>>> model.get_input_embeddings().weight.shape
torch.Size([600, 32])
"""

from __future__ import annotations

from pathlib import Path

import torch

from arm.model.positions import CONFIG_KEY, ImagePositions, with_image_positions


def build_causal_lm(arch: str, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int,
                    num_kv_heads: int, intermediate_size: int, max_position_embeddings: int = 4096,
                    rope_theta: float = 10000.0, tie_word_embeddings: bool = False, pretrained_path: str | None = None,
                    image_positions: ImagePositions | dict | None = None, device: str | torch.device | None = None):
    """A causal LM over `vocab_size` ids. With `pretrained_path`, the checkpoint's weights and its own
    sizes are used, and the embedding (and output) rows are extended to `vocab_size`: new rows start at
    the mean of the old ones, the usual way to add tokens without disturbing the model's outputs.
    With `image_positions` (`ImagePositions`), image tokens also get learned
    row and column embeddings (`arm.model.positions`)."""
    from transformers import AutoConfig, LlamaConfig, Qwen2Config

    if pretrained_path:
        if not Path(pretrained_path).is_dir():
            raise ValueError(f"pretrain.pretrained_path {pretrained_path!r} is not a folder; point it at a local "
                             "checkpoint (config.json, weights) or leave it null to build the model from sizes")
        config = with_image_positions_setting(AutoConfig.from_pretrained(pretrained_path, local_files_only=True),
                                              image_positions)
        model = causal_lm_class(config).from_pretrained(pretrained_path, config=config, local_files_only=True)
        extend_vocabulary(model, vocab_size, trained_rows(pretrained_path))
        return model
    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                  num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, intermediate_size=intermediate_size,
                  max_position_embeddings=max_position_embeddings, rope_theta=rope_theta,
                  tie_word_embeddings=tie_word_embeddings)
    configs = {"qwen2": Qwen2Config, "llama": LlamaConfig}
    if arch not in configs:
        raise ValueError(f"pretrain.arch must be qwen2 or llama, got {arch!r}")
    config = with_image_positions_setting(configs[arch](**common), image_positions)
    cls = causal_lm_class(config)
    if device is not None:  # "meta": shapes only, no memory; "cuda": initialised on the GPU, not copied there
        with torch.device(device):
            return cls(config)
    return cls(config)


def trained_rows(pretrained_path: str | Path) -> int:
    """How many embedding rows of a checkpoint hold trained ids. A unified model's (ours: `vocab.json`
    beside the weights): all of its text and image rows. A text LM's: as many as its own `tokenizer.json`
    defines; checkpoints pad their tables past that (Qwen2.5-7B: 152,064 rows for 151,665 tokens) with
    rows no token ever trained. Without a tokenizer.json, every row counts as trained."""
    import json

    from transformers import AutoConfig

    folder = Path(pretrained_path)
    if (folder / "vocab.json").is_file():
        info = json.loads((folder / "vocab.json").read_text())
        return int(info["text_size"]) + int(info["codebook_size"])
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    return AutoConfig.from_pretrained(folder, local_files_only=True).vocab_size


@torch.no_grad()
def extend_vocabulary(model, vocab_size: int, trained: int) -> None:
    """Give `model` exactly `vocab_size` input and output rows: its first `trained` rows kept as they are,
    every other row new, started by the library's mean resizing (drawn around the trained rows' mean
    with their covariance, so the model's outputs barely move). A checkpoint's padding rows past
    `trained` are dropped first: our special tokens and image codes must not inherit rows that no token
    trained and that mean resizing would skip."""
    rows = model.get_input_embeddings().weight.shape[0]
    if vocab_size < trained:
        raise ValueError(f"the unified vocabulary has {vocab_size} ids but the checkpoint trained {trained}: "
                         "the text side must be the checkpoint's own tokenizer (prepare.tokenizer_json "
                         "pointing at its tokenizer.json)")
    if trained < rows:
        model.resize_token_embeddings(trained)
    if vocab_size != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(vocab_size, mean_resizing=True)


def with_image_positions_setting(config, image_positions: ImagePositions | dict | None):
    """The config, asking for image row and column embeddings when `image_positions` is given."""
    if image_positions:
        setattr(config, CONFIG_KEY, ImagePositions.from_dict(image_positions).to_dict())
    return config


def causal_lm_class(config) -> type:
    """The class for a model config: the library's causal LM for its type, with image positions when the
    config asks for them."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    base = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    return with_image_positions(base) if getattr(config, CONFIG_KEY, None) else base


def load_causal_lm(folder: str | Path):
    """A model saved by `save_pretrained` (ours, with or without image positions, or any causal LM)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    return causal_lm_class(config).from_pretrained(folder, local_files_only=True)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
