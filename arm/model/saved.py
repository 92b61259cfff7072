"""The unified model's saved format and its loader: what inference needs and nothing of training.

A saved unified model is one folder, written by the `pretrain` and `rl` stages:

    config.json, model.safetensors    the Hugging Face causal LM (with `arm_image_positions` in its config)
    vocab.json                        the id layout and image grid (`UnifiedModelInfo`)
    tokenizer.json                    the text tokenizer the ids come from
    sampling.json                     how the model samples unless a caller says otherwise (`SamplingConfig`)
    metrics.json                      the stage's own metrics

`Pipeline.load` reads it; so do the CLI, the evaluation and the Bento, through the pipeline.

>>> info = UnifiedModelInfo(text_size=512, codebook_size=1000, grid=8, specials={"<|soi|>": 500})
>>> info.vocab().image_offset
512
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from arm.config import SamplingConfig
from arm.model.vocab import Vocab

SAMPLING_FILE = "sampling.json"
# Every name a saved unified model's folder may hold: the files above, the Hugging Face generation
# config, and a large model's weights in shards with their index. What `pretrain` and `rl` clear there.
UNIFIED_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
                       "model.safetensors.index.json", "vocab.json", "tokenizer.json", SAMPLING_FILE, "metrics.json")


@dataclass(frozen=True)
class UnifiedModelInfo:
    """What inference needs besides the weights: the id layout, the image grid, and whether the model
    answers questions about an image after describing it (`pretrain.describe_first`)."""

    text_size: int
    codebook_size: int
    grid: int
    specials: dict
    describe_first: bool = False

    def vocab(self) -> Vocab:
        return Vocab(self.text_size, self.codebook_size, dict(self.specials))


def save_unified_model(folder: str | Path, model, info: UnifiedModelInfo, tokenizer_json: str | Path,
                       sampling: SamplingConfig, metrics: dict | None = None) -> None:
    """Write the folder described above, replacing what a previous save left there."""
    folder = Path(folder)
    model.save_pretrained(folder)
    if Path(tokenizer_json).resolve() != (folder / "tokenizer.json").resolve():
        shutil.copyfile(tokenizer_json, folder / "tokenizer.json")
    (folder / "vocab.json").write_text(json.dumps(asdict(info), indent=2, sort_keys=True) + "\n")
    write_sampling(folder, sampling)
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def write_sampling(folder: str | Path, sampling: SamplingConfig) -> None:
    (Path(folder) / SAMPLING_FILE).write_text(json.dumps(asdict(sampling), indent=2, sort_keys=True) + "\n")


def load_unified_model(folder: str | Path):
    """(model, UnifiedModelInfo, text tokenizer) from a `pretrain` (or `rl`) output folder."""
    from arm.model.backbone import load_causal_lm
    from arm.text_tokenizer import load_tokenizer

    folder = Path(folder)
    if not (folder / "vocab.json").exists():
        raise ValueError(f"no unified model in {folder}; run `arm pretrain` (or `dvc repro pretrain`)")
    model = load_causal_lm(folder).eval()
    info = UnifiedModelInfo(**json.loads((folder / "vocab.json").read_text()))
    return model, info, load_tokenizer(folder / "tokenizer.json")


def load_sampling(folder: str | Path) -> SamplingConfig:
    """The sampling a saved model was shipped with (the config's `sampling` section when it was saved)."""
    path = Path(folder) / SAMPLING_FILE
    if not path.is_file():
        raise ValueError(f"{folder} has no {SAMPLING_FILE} (a model saved before sampling travelled with it); "
                         f"write one with the `sampling` section of your config: "
                         f"arm config show --config configs/default.yaml, keys {[f.name for f in fields(SamplingConfig)]}")
    values = json.loads(path.read_text())
    unknown = set(values) - {f.name for f in fields(SamplingConfig)}
    if unknown:
        raise ValueError(f"{path} has unknown keys {sorted(unknown)}; it takes those of the config's `sampling` section")
    return SamplingConfig(**values)
