"""Pretraining the unified model: plain next-token prediction on the targets of each task's sequence.

    loss = cross-entropy(logits[:, :-1], labels[:, 1:]) over target positions (labels != -100)

with the output head run only at the positions that predict a target (`target_loss`) and, on
right-padded batches, no padding mask (`attention_mask_for`): the same loss, about 10% less time.

The LightningModule is a thin wrapper: it owns the schedule (warmup, then cosine to min_lr_ratio or
constant), logs the loss per task and tokens per second, and under `ModelParallelStrategy` applies FSDP2
in `configure_model`: every decoder block is its own `fully_shard` unit (parameters gathered one block at
a time), then the root, with bf16 parameters and fp32 gradient reduction when asked.
"""

from __future__ import annotations

import time

import lightning as L
import torch
import torch.nn.functional as F

from arm.model.backbone import build_causal_lm
from arm.model.positions import uses_image_positions
from arm.model.sequences import IGNORE
from arm.optim import build_optimizer
from arm.schedules import warmup_cosine


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting labels[:, t+1] from position t. logits (B, T, V), labels (B, T)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE)


def predicts_target(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) labels -> (B, T) bool: True at the positions t whose next label, t + 1, is a target.

    >>> predicts_target(torch.tensor([[-100, -100, 5, 6, -100]])).tolist()
    [[False, True, True, False, False]]
    """
    return F.pad(labels[:, 1:] != IGNORE, (0, 1), value=False)


def target_loss(model, input_ids: torch.Tensor, labels: torch.Tensor,
                attention_mask: torch.Tensor | None = None, divide_by: torch.Tensor | float | None = None) -> torch.Tensor:
    """`next_token_loss` with the output head run only at the positions that predict a target (about
    half of them in the task mix: prompts and padding predict nothing), which our image-positions models
    do through `logits_at`; any other causal LM computes every position's logits and keeps those.
    The same mean over targets as `next_token_loss`, up to float rounding. input_ids, labels (B, T).

    `divide_by`: what the summed cross-entropy is divided by instead of this batch's own target count;
    data-parallel training passes `data_parallel_share(labels)`."""
    at = predicts_target(labels)
    if uses_image_positions(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_at=at)   # (N, V)
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[at]
    summed = F.cross_entropy(logits.float(), labels[:, 1:][at[:, :-1]], reduction="sum")
    return summed / (at.sum() if divide_by is None else divide_by)


def data_parallel_share(labels: torch.Tensor) -> torch.Tensor:
    """The global batch's target count divided by the number of processes (this process's own count
    outside a process group). DDP and FSDP2 average gradients over processes, so dividing each process's
    summed loss by this makes the average exactly the one-process mean over every target of the global
    batch, however the targets fall across processes (VQA answers and captions vary in length; image
    spans do not). One all-reduce of a scalar per step. labels (B, T), this process's share."""
    import torch.distributed as dist

    count = predicts_target(labels).sum().to(torch.float32)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return count


def attention_mask_for(batch: dict) -> torch.Tensor | None:
    """The attention mask a training batch needs: none when it is right-padded, as `collate` builds it.
    Every real token then comes before its row's padding, so the causal mask alone keeps it from
    attending to a pad (and pads predict no target); without a padding mask, attention takes its causal
    fast path. A batch with padding before real tokens keeps its mask."""
    mask = batch["attention_mask"]
    left_padded = bool((mask[:, 1:] > mask[:, :-1]).any())
    return mask if left_padded else None


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder block's activations in backward: memory per block, not per layer output.
    transformers renamed the switch (`gradient_checkpointing_enable` is deprecated from 5.2x on)."""
    switch = getattr(model, "activation_checkpointing_enable", None)
    if switch is not None:
        switch(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def compile_blocks(model) -> None:
    """torch.compile each decoder block on its own (norms, activations, rotary and residual adds fused
    around the matrix products), as torchtitan does before sharding; the rest stays eager. The module
    tree and its parameter names do not change, so checkpoints and saved models are the same."""
    for block in model.model.layers:
        block.compile()


def shard_with_fsdp2(model, mesh, bf16: bool) -> None:
    """FSDP2 over the 1-D data-parallel `mesh`: every decoder block its own `fully_shard` unit (its
    parameters gathered just before it runs and freed after), then the root (embeddings, final norm,
    output head). `bf16`: compute in bf16 parameters, reduce gradients in fp32, keep fp32 masters.
    What `pretrain.strategy=fsdp` runs, and what `benchmarks/gpu.py` times on one device."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for block in model.model.layers:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)


class PretrainModule(L.LightningModule):
    def __init__(self, backbone: dict, lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.1,
                 schedule: str = "cosine", weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95),
                 activation_checkpointing: bool = False, fsdp_mixed_precision: bool = False,
                 optimizer: str = "adamw", compile: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_causal_lm(**backbone)
        if activation_checkpointing:
            enable_activation_checkpointing(self.model)
        self._tick: float | None = None

    def configure_model(self) -> None:
        """Compiled blocks when asked, then FSDP2 (only under ModelParallelStrategy, which provides the
        device mesh): shard each decoder block, then the root (embeddings, final norm, output head).
        Idempotent, as Lightning may call it again for validation after fitting."""
        if getattr(self, "_configured", False):
            return
        if self.hparams.compile:
            compile_blocks(self.model)
        mesh = getattr(self, "_device_mesh", None)
        if mesh is not None:
            shard_with_fsdp2(self.model, mesh["data_parallel"], bf16=self.hparams.fsdp_mixed_precision)
        self._configured = True

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = target_loss(self.model, batch["input_ids"], batch["labels"], attention_mask_for(batch),
                           divide_by=data_parallel_share(batch["labels"]))
        task = batch["task"]
        # Each process's loss is its share of the global mean; their mean over processes is that mean.
        synced = self.trainer.world_size > 1
        self.log("train/loss", loss, prog_bar=True, sync_dist=synced)
        self.log(f"train/loss_{task}", loss, sync_dist=synced)
        now = time.perf_counter()
        if self._tick is not None:
            tokens = batch["attention_mask"].sum() * self.trainer.world_size
            self.log("train/tokens_per_s", tokens / (now - self._tick))
        self._tick = now
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = target_loss(self.model, batch["input_ids"], batch["labels"], attention_mask_for(batch))
        self.log(f"val/loss_{batch['task']}", loss, batch_size=len(batch["input_ids"]), sync_dist=True)
        self.log("val/loss", loss, batch_size=len(batch["input_ids"]), sync_dist=True)

    def configure_optimizers(self):
        opt = build_optimizer(self.model, self.hparams.optimizer, self.hparams.lr, self.hparams.weight_decay,
                              tuple(self.hparams.betas))
        schedule = warmup_cosine(self.hparams.warmup_steps, self.hparams.max_steps, self.hparams.min_lr_ratio,
                                 constant=self.hparams.schedule == "constant")
        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, schedule), "interval": "step"}}
