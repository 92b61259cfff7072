"""Stage `pretrain`: the unified autoregressive model, trained by next-token prediction on a mix of
understanding, generation, editing and text-only sequences over cached image codes.

    arm pretrain --config configs/default.yaml                 # tiny Qwen2 on the CPU
    arm pretrain --config configs/small.yaml                   # one GPU

Writes `artifacts/pretrain/`, a saved unified model (`arm.model.saved`: the Hugging Face folder,
`vocab.json`, `tokenizer.json`, `sampling.json` from the config's `sampling` section, `metrics.json`).
Checkpoints go to `artifacts/checkpoints/pretrain/`; an interrupted run resumes there when started again
unchanged.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from arm.checkpoints import fingerprint, resume_point, source_files
from arm.config import ArmConfig
from arm.model.data import EvalBatches, TaskMixBatches, TaskRecords, fit_to_data
from arm.model.positions import ImagePositions
from arm.model.sequences import DESCRIBE
from arm.model.saved import UNIFIED_MODEL_FILES, UnifiedModelInfo, save_unified_model
from arm.model.vocab import Vocab
from arm.outputs import clear_outputs, refuse_foreign_files
from arm.precision import warn_if_bf16_is_emulated
from arm.training import fit, stage_trainer, start_stage, write_metrics


def backbone_kwargs(cfg: ArmConfig, vocab: Vocab, grid: int) -> dict:
    """build_causal_lm's arguments for the config's `pretrain` section over `vocab` (g x g image grids)."""
    from arm.text_tokenizer import SOI

    p = cfg.pretrain
    positions = (ImagePositions(grid=grid, image_offset=vocab.image_offset, codebook_size=vocab.codebook_size,
                                soi_id=vocab[SOI], span_stride=p.image_span_stride,
                                source_embedding=p.edit_source_embedding)
                 if p.image_position_embedding else None)
    # Plain data: the Lightning module records these as its hyperparameters (hparams.yaml).
    return dict(arch=p.arch, vocab_size=vocab.size, image_positions=positions and positions.to_dict(), hidden_size=p.hidden_size, num_layers=p.num_layers,
                num_heads=p.num_heads, num_kv_heads=p.num_kv_heads, intermediate_size=p.intermediate_size,
                max_position_embeddings=p.max_position_embeddings, rope_theta=p.rope_theta,
                tie_word_embeddings=p.tie_word_embeddings, pretrained_path=p.pretrained_path)


def training_strategy(p):
    """The Lightning strategy for `pretrain.strategy` (or `rl.strategy`: auto or ddp): auto, DDP, or
    FSDP2 through ModelParallelStrategy (data parallel over every process; the module shards itself in
    `configure_model`)."""
    if p.strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=False)
    if p.strategy == "fsdp":
        from lightning.pytorch.strategies import ModelParallelStrategy

        return ModelParallelStrategy(data_parallel_size=p.devices * p.num_nodes, tensor_parallel_size=1)
    return "auto"


def full_model(model):
    """The model with ordinary full tensors: itself unless FSDP sharded it, else a fresh copy on CPU with
    the gathered weights (collective: every process must call it)."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    with torch.device("meta"):
        fresh = type(model)(model.config)
    if state:
        fresh.load_state_dict(state, assign=True)
        fresh.tie_weights()
    return fresh


@torch.no_grad()
def init_image_embeddings(model, vocab: Vocab, tokenizer_dir: Path, seed: int) -> None:
    """Image-code rows of the input embedding and the output head from the visual tokenizer: each code's
    FSQ vector through the tokenizer's up-projection (what the pixel decoder reads for that code, seen
    alone), then a fixed random projection to the model width, centred and scaled like the text rows
    (random ones, or a pretrained LM's). Codes that decode alike start alike, instead of 1,000 unrelated
    random vectors to be learned."""
    from arm.tokenizer.model import VisualTokenizer

    tok = VisualTokenizer.load(tokenizer_dir).eval()
    codes = tok.fsq.indices_to_codes(torch.arange(vocab.codebook_size))             # (K, d)
    features = tok.up_project(codes[:, :, None, None]).flatten(1)                    # (K, d, 1, 1) -> (K, C)
    features = features - features.mean(0, keepdim=True)
    generator = torch.Generator().manual_seed(seed)
    for table in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        text = table[:vocab.image_offset]
        projection = torch.randn(features.shape[1], table.shape[1], generator=generator)
        init = features @ projection                                                 # (K, hidden)
        table[vocab.image_offset:vocab.image_offset + vocab.codebook_size] = (
            text.mean(0) + init * (text.std() / init.std()))


def image_rows_pretrained(pretrained_path: str | None, vocab: Vocab) -> bool:
    """Whether the checkpoint at `pretrained_path` already has trained image-code rows (a unified model
    trained further), which initialisation must then leave alone. A text LM's trained rows end before
    them, even when its table is padded past `vocab.image_offset` (`arm.model.backbone.trained_rows`)."""
    if not pretrained_path:
        return False
    from arm.model.backbone import trained_rows

    return trained_rows(pretrained_path) > vocab.image_offset


def check_text_side(pretrained_path: str, tokenizer) -> None:
    """Refuse a prepared text tokenizer that gives any token of the checkpoint's own tokenizer.json
    another id: the pretrained rows would then be read for the wrong tokens, silently."""
    from tokenizers import Tokenizer

    theirs_path = Path(pretrained_path) / "tokenizer.json"
    if not theirs_path.is_file():
        return
    theirs = Tokenizer.from_file(str(theirs_path)).get_vocab(with_added_tokens=True)
    ours = tokenizer.get_vocab(with_added_tokens=True)
    moved = sum(ours.get(token) != i for token, i in theirs.items())
    if moved:
        raise ValueError(f"the prepared text tokenizer gives {moved} of the {len(theirs)} tokens of {theirs_path} "
                         "other ids than the checkpoint was trained with; rerun `arm prepare` with "
                         f"prepare.tokenizer_json={theirs_path} (or null: prepare then takes pretrain.pretrained_path's)")


def training_batches(p, records: TaskRecords, vocab: Vocab, describe_ids: list[int], start_step: int = 0) -> TaskMixBatches:
    """The micro-batches a run of the `pretrain` section `p` trains on from optimiser step `start_step`
    on: a pure function of the settings and the step (what `benchmarks/train_step.py` times, too)."""
    accumulate = p.accumulate_grad_batches
    return TaskMixBatches(records, vocab, describe_ids, dict(p.task_mix), p.batch_size, p.max_steps * accumulate,
                          p.seed, p.p_drop_condition, start_step * accumulate, p.questions_per_sequence,
                          dict(p.question_type_weights), p.describe_first)


def pretrain_stage(cfg: ArmConfig, *, stop_at_step: int | None = None) -> dict | None:
    from arm.model.train import PretrainModule
    from arm.text_tokenizer import load_tokenizer

    p = cfg.pretrain
    world = p.devices * p.num_nodes if p.strategy != "auto" else 1
    if p.batch_size % world:
        raise ValueError(f"pretrain.batch_size {p.batch_size} must be a multiple of devices x num_nodes ({world}): "
                         "it is the global batch, split evenly across processes")
    started = time.monotonic()
    prepare_dir, encode_dir = cfg.stage_dir("prepare"), cfg.stage_dir("encode")
    out, ckpt_dir = cfg.stage_dir("pretrain"), cfg.artifacts / "checkpoints" / "pretrain"
    written_besides = (ckpt_dir, cfg.run.log_dir)   # inside `out` only if the config puts them there
    refuse_foreign_files(out, UNIFIED_MODEL_FILES, "pretrain", kept=written_besides)
    if not (encode_dir / "summary.json").exists():
        raise ValueError(f"{encode_dir} has no image codes; run `arm encode` (or `dvc repro encode`) first")
    start_stage(p.seed)

    tokenizer = load_tokenizer(prepare_dir / "tokenizer.json")
    if p.pretrained_path:
        check_text_side(p.pretrained_path, tokenizer)
    encoded = json.loads((encode_dir / "summary.json").read_text())
    vocab = Vocab.from_tokenizer(tokenizer, encoded["codebook_size"])
    describe_ids = tokenizer.encode(DESCRIBE, add_special_tokens=False).ids
    train, val = TaskRecords(prepare_dir, encode_dir, "train"), TaskRecords(prepare_dir, encode_dir, "val")
    print(f"pretrain: vocabulary {vocab.size} ({vocab.text_size} text + {vocab.codebook_size} image codes); "
          f"training records {train.counts()}", file=sys.stderr)
    p = fit_to_data(p, train, say=lambda line: print(line, file=sys.stderr))   # tasks, describe-first: as the data allows
    info = UnifiedModelInfo(vocab.text_size, vocab.codebook_size, encoded["grid"], dict(vocab.specials),
                            describe_first=p.describe_first)

    warn_if_bf16_is_emulated(p.precision, p.accelerator, "pretrain.precision")
    fsdp_bf16 = p.strategy == "fsdp" and p.precision.startswith("bf16")
    module = PretrainModule(backbone_kwargs(cfg, vocab, info.grid), lr=p.lr, warmup_steps=p.warmup_steps,
                            max_steps=p.max_steps, min_lr_ratio=p.min_lr_ratio, schedule=p.schedule,
                            weight_decay=p.weight_decay, activation_checkpointing=p.activation_checkpointing,
                            fsdp_mixed_precision=fsdp_bf16, optimizer=p.optimizer, compile=p.compile)
    if p.image_embedding_init == "tokenizer" and not image_rows_pretrained(p.pretrained_path, vocab):
        init_image_embeddings(module.model, vocab, cfg.stage_dir("tokenizer"), p.seed)  # (a resumed checkpoint overrides it)
    # The codes themselves (not just their counts) and the training code decide whether a checkpoint fits.
    stamp = fingerprint(asdict(p), prepare_dir / "summary.json", *sorted(encode_dir.glob("*.npz")),
                        *source_files("model", "training.py", "checkpoints.py", "schedules.py", "optim.py"))
    resume, start_step = resume_point(ckpt_dir, stamp, "pretrain")

    batches = training_batches(p, train, vocab, describe_ids, start_step)
    val_batches = EvalBatches(val, vocab, describe_ids, p.batch_size, p.val_records_per_task, p.describe_first)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    val_loader = torch.utils.data.DataLoader(val_batches, batch_size=None, shuffle=False)
    samples = []
    if p.sample_every_steps > 0 and (cfg.stage_dir("tokenizer") / "model.safetensors").exists():
        from arm.model.callbacks import WorldSamples

        samples = [WorldSamples(prepare_dir, cfg.stage_dir("tokenizer"), info, tokenizer, cfg.sampling,
                                p.sample_every_steps, p.sample_records_per_task)]
    trainer = stage_trainer(
        "pretrain", cfg.run.log_dir, ckpt_dir, stamp=stamp, max_steps=p.max_steps,
        checkpoint_every=p.val_every_steps, stop_at_step=stop_at_step, callbacks=samples,
        accelerator=p.accelerator, devices=p.devices, num_nodes=p.num_nodes, strategy=training_strategy(p),
        precision="32-true" if fsdp_bf16 else p.precision,
        use_distributed_sampler=False, accumulate_grad_batches=p.accumulate_grad_batches,
        gradient_clip_val=p.grad_clip or None,
        val_check_interval=min(p.val_every_steps * p.accumulate_grad_batches, max(1, len(batches))),
        check_val_every_n_epoch=None, log_every_n_steps=max(1, min(25, p.max_steps // 5)))
    # Always fit: resuming a finished run restores its weights and then stops at once.
    fit(trainer, module, loader, val_loader, resume=resume)
    if stop_at_step:
        return None
    minutes = (time.monotonic() - started) / 60
    # Every process takes part in validation and in gathering sharded weights; only rank 0 writes.
    val_metrics = trainer.validate(module, val_loader, verbose=False)[0] if len(val_batches) else {}
    model = full_model(module.model)
    if trainer.global_rank != 0:
        return None
    clear_outputs(out, UNIFIED_MODEL_FILES, kept=written_besides)
    metrics = {"train_minutes": round(minutes, 2), "steps": p.max_steps,
               "parameters": sum(x.numel() for x in module.model.parameters()),
               **{k: float(v) for k, v in val_metrics.items()}}
    save_unified_model(out, model, info, prepare_dir / "tokenizer.json", cfg.sampling, metrics)
    return write_metrics(None, "pretrain", metrics)
