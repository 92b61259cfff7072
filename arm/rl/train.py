"""The GRPO loop as a thin LightningModule. One training step is one rollout batch:

    1. rollout  for each prompt sample G images with the inference engine (KV cache, guidance), decode
                them with the visual tokenizer and score them with the rewards -> r (P, G); with
                rl.rollout_prompts > prompts_per_step keep the groups whose rewards vary most
    2. advantage A = (r - mean_G r) / (std_G r + 1e-4), or r - mean_G r     (objective.group_advantages)
    3. log-probs of each sampled code under the policy (with rl.guided_policy, of the guided mix of
                rows the sample was drawn from; else the conditional prompt's; image ids only), the frozen
                reference (beta > 0) and, with several inner updates, the rollout-time policy
    4. loss     per token -min(ratio A, clip(ratio) A) + beta KL_k3(policy || reference), averaged per
                sequence then over sequences (objective.grpo_loss); `inner_updates` optimiser steps
    5. replay   (optional) + replay_weight x next-token loss on a batch of understanding sequences
                (PPO-ptx), so the shared weights keep answering questions while image spans change

The reference model and the visual tokenizer are held outside the module's parameters: they are neither
trained nor saved in checkpoints (the stage rebuilds them from their folders).

Data parallel (rl.strategy=ddp, W processes): each process rolls out an equal share of the step's
prompts, whole groups (arm.rl.data), every sample seeded by its prompt's place in the step, so the W
shares are the one-process rollout; advantages are per group, so local; each process holds its own
frozen reference. Its losses are means over its own sequences (and replay targets over the global
count, `data_parallel_share`), and DDP averages the gradients once per update: the one-process
gradient. Rewards are gathered from every process before they are logged and kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch

from arm.config import RLConfig, SamplingConfig
from arm.generate import left_pad
from arm.model.positions import model_positions
from arm.rl.data import Prompt
from arm.rl.objective import grpo_loss, group_advantages
from arm.rl.rewards import RewardSample
from arm.schedules import warmup_cosine


CURRICULUM_DECAY = 0.8    # rl.curriculum: weight of a category's earlier spread against its latest step's
CURRICULUM_FLOOR = 0.1    # no category is drawn at less than this fraction of the most varied one's weight


@dataclass
class Rollout:
    prompts: list[Prompt]   # P prompts; sample i belongs to prompt i // G
    # N = P * G mixtures, one per sample: (weight, prompt ids) pairs whose logits, weighted and summed,
    # are the logits the sample was drawn from (classifier-free guidance as a sum of rows; one pair of
    # weight 1, the conditional prompt, with rl.policy=conditional)
    mixtures: list[list[tuple[float, list[int]]]]
    codes: torch.Tensor     # (N, T) sampled image codes in [0, K)
    images: np.ndarray      # (N, S, S, 3) decoded
    rewards: list[dict]     # N dicts: each component and "total"

    def totals(self, group_size: int) -> torch.Tensor:
        """(P, G) total rewards."""
        return torch.tensor([r["total"] for r in self.rewards], dtype=torch.float32).view(-1, group_size)

    def most_varied(self, keep: int, group_size: int) -> "Rollout":
        """The `keep` groups whose total rewards vary most (their std), each task keeping its share of them
        (DAPO's dynamic sampling as a fixed-cost filter: a group that scores alike teaches little)."""
        spread = self.totals(group_size).std(dim=1, unbiased=False)   # (P,)
        tasks = [p.task for p in self.prompts]
        order = list(dict.fromkeys(tasks))   # tasks in rollout order
        shares = {t: tasks.count(t) * keep // len(tasks) for t in order}
        shares[order[0]] += keep - sum(shares.values())
        kept: list[int] = []
        for task in order:
            members = sorted((i for i, t in enumerate(tasks) if t == task), key=lambda i: -float(spread[i]))
            kept += sorted(members[:shares[task]])
        return self.groups(kept, group_size)

    def groups(self, indices: list[int], group_size: int) -> "Rollout":
        """The rollout of the groups (prompts) at `indices` only, in that order."""
        rows = [i * group_size + j for i in indices for j in range(group_size)]
        return Rollout([self.prompts[i] for i in indices], [self.mixtures[r] for r in rows], self.codes[rows],
                       self.images[rows], [self.rewards[r] for r in rows])


def code_logits(model, prefixes: list[list[int]], codes: torch.Tensor, vocab) -> torch.Tensor:
    """The logits over image ids that predict each code after its prefix and the codes before it, in one
    forward (teacher forcing). prefixes: N lists; codes (N, T) -> (N, T, K) float."""
    device = next(model.parameters()).device
    t = codes.shape[1]
    image_ids = codes + vocab.image_offset
    ids, mask = left_pad([p + row for p, row in zip(prefixes, image_ids.tolist())], vocab.pad)
    ids, mask = ids.to(device), mask.to(device)
    positions = model_positions(model, ids, mask)  # left padding: positions count real tokens
    # Left padding puts every image span at the end: the last T + 1 positions' logits predict its T codes.
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=t + 1).logits
    return logits[:, :-1, vocab.image_offset:vocab.image_offset + vocab.codebook_size].float()  # (N, T, K)


def code_logprobs(model, prefixes: list[list[int]], codes: torch.Tensor, vocab,
                  temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(code_t | prefix, codes_<t) and the entropy at each position, over image ids only and at the
    sampling temperature (the constrained distribution the engine samples from, without guidance).
    prefixes: N lists; codes (N, T) -> two (N, T)."""
    return mixture_logprobs(model, [[(1.0, p)] for p in prefixes], codes, vocab, temperature)


def mixture_logits(model, mixtures: list[list[tuple[float, list[int]]]], codes: torch.Tensor, vocab) -> torch.Tensor:
    """The logits each sample was drawn from (before the temperature): its mixture's rows run in one
    forward, their image logits weighted and summed, as the engine mixes classifier-free guidance
    (`guidance_mixtures`). mixtures: N lists of (weight, prefix); codes (N, T) -> (N, T, K)."""
    owners = [i for i, mix in enumerate(mixtures) for _ in mix]                  # row -> its sample
    logits = code_logits(model, [p for mix in mixtures for _, p in mix], codes[owners], vocab)   # (R, T, K)
    weights = torch.tensor([w for mix in mixtures for w, _ in mix], device=logits.device)[:, None, None]
    mixed = torch.zeros(len(mixtures), *logits.shape[1:], device=logits.device, dtype=logits.dtype)
    return mixed.index_add(0, torch.tensor(owners, device=logits.device), weights * logits)   # (N, T, K)


def mixture_logprobs(model, mixtures: list[list[tuple[float, list[int]]]], codes: torch.Tensor, vocab,
                     temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """As `code_logprobs`, of the distribution each sample was drawn from (`mixture_logits`) at the
    sampling temperature. mixtures: N lists of (weight, prefix); codes (N, T) -> two (N, T)."""
    mixed = mixture_logits(model, mixtures, codes, vocab)
    if temperature > 0:
        mixed = mixed / temperature
    logp_all = torch.log_softmax(mixed, dim=-1)
    logp = logp_all.gather(-1, codes.to(mixed.device)[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def guidance_mixtures(sampling: SamplingConfig, task: str, cond: list[int], uncond: list[int],
                      source_only: list[int] | None = None) -> list[tuple[float, list[int]]]:
    """The (weight, prompt) rows whose weighted logits are the engine's guided logits for one sample:
    generation u + s (c - u) = s c + (1 - s) u; editing u + s_img (src - u) + s_txt (c - src)
    = s_txt c + (s_img - s_txt) src + (1 - s_img) u. Rows of weight 0 are left out.

    >>> s = SamplingConfig(2.0, 2.5, 1.0, 0.5, 0, 1.0)
    >>> guidance_mixtures(s, "t2i", [1], [2])
    [(2.0, [1]), (-1.0, [2])]
    >>> guidance_mixtures(s, "edit", [1], [2], [3])
    [(2.5, [1]), (-1.5, [3])]
    """
    if task == "t2i":
        rows = [(sampling.generation_guidance, cond), (1 - sampling.generation_guidance, uncond)]
    else:
        text, image = sampling.edit_guidance, sampling.edit_image_guidance
        rows = [(text, cond), (image - text, source_only), (1 - image, uncond)]
    return [(float(w), p) for w, p in rows if w != 0]


def all_processes(rows: list) -> list:
    """Every process's `rows` in rank order (all_gather_object); the rows themselves in one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rows)
    return [row for part in parts for row in part]


def rollout_sampling(sampling: SamplingConfig, changes: dict) -> SamplingConfig:
    """How rollouts sample: the model's sampling (the config's `sampling` section, as the evaluation draws)
    with the settings `rl.sampling` changes.

    >>> base = SamplingConfig(2.0, 2.5, 1.0, 0.5, 0, 1.0)
    >>> rollout_sampling(base, {"temperature": 1.0, "top_k": 16.0})
    SamplingConfig(generation_guidance=2.0, edit_guidance=2.5, edit_image_guidance=1.0, temperature=1.0, top_k=16, top_p=1.0, jacobi_window=0)
    """
    changes = dict(changes)
    if "top_k" in changes:   # the config holds every change as a float
        changes["top_k"] = int(changes["top_k"])
    return sampling.overridden(**changes)


class GRPOModule(L.LightningModule):
    def __init__(self, model, reference, visual_tokenizer, info, text_tokenizer, reward_fn, settings: RLConfig,
                 sampling: SamplingConfig, replay=None):
        super().__init__()
        self.model = model
        self.replay = replay  # step -> a batch of understanding sequences (arm.model.data.TaskMixBatches)
        self.settings = settings  # the config's `rl` section
        self.sampling = rollout_sampling(sampling, settings.sampling)  # how rollouts draw
        self.info, self.text_tokenizer, self.reward_fn = info, text_tokenizer, reward_fn
        # Not submodules: frozen, not optimised, not checkpointed.
        # With beta 0 there is no KL term, and no reference to hold or run (None).
        self._frozen = {"visual": visual_tokenizer.eval().requires_grad_(False)}
        if reference is not None:
            self._frozen["reference"] = reference.eval().requires_grad_(False)
        self.automatic_optimization = False
        self.history: list[dict] = []  # per step: mean reward per task and component (for metrics.json)
        # rl.curriculum: the prompts to draw from (`RLPrompts`, set by the stage) and, per task and category,
        # a running mean of the spread of its groups' rewards (every step's, all processes', also without it).
        self.prompts = None
        self.spread: dict[str, dict[str, float]] = {}

    @property
    def reference(self):
        return self._frozen.get("reference")

    def on_fit_start(self) -> None:
        from arm.pipeline import Pipeline

        for key, module in self._frozen.items():
            self._frozen[key] = module.to(self.device)
        self.pipe = Pipeline(self.model, self.info, self.text_tokenizer, self._frozen["visual"],
                             self.sampling, batch_size=max(64, self.settings.group_size))
        self.model.train()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["reward_history"] = self.history  # so a resumed run still reports its whole curve
        checkpoint["category_spread"] = self.spread  # so a resumed curriculum draws what it would have

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("reward_history", []))
        self.spread = {task: dict(v) for task, v in checkpoint.get("category_spread", {}).items()}

    # --- 0. the curriculum ------------------------------------------------------------------------------

    def curriculum_weights(self) -> dict[str, dict[str, float]]:
        """Task -> category -> weight for `RLPrompts.draw`: the running spread of the category's groups'
        rewards; a category not yet rolled out weighs as the most varied one, and none falls below
        CURRICULUM_FLOOR of it (the estimates of a category drawn rarely would otherwise never recover)."""
        out = {}
        for task in self.prompts.tasks:
            seen = self.spread.get(task, {})
            top = max(seen.values(), default=0.0) or 1.0
            out[task] = {c: max(seen.get(c, top), CURRICULUM_FLOOR * top) for c in self.prompts.categories(task)}
        return out

    def _update_spread(self, groups: list[tuple]) -> None:
        """Fold a step's groups (index, task, category, rewards) into the running spread per category."""
        step: dict[tuple[str, str], list[float]] = {}
        for _, task, category, samples in groups:
            step.setdefault((task, category), []).append(float(np.std([r["total"] for r in samples])))
        for (task, category), spreads in step.items():
            value, seen = float(np.mean(spreads)), self.spread.setdefault(task, {})
            seen[category] = value if category not in seen else \
                CURRICULUM_DECAY * seen[category] + (1 - CURRICULUM_DECAY) * value

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # Prompts (text, numpy images, scene graphs): the rollout moves what it needs

    # --- 1. rollout -----------------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, prompts: list[Prompt], step: int) -> Rollout:
        s, pipe, g = self.settings, self.pipe, self.settings.group_size
        base = s.seed * 1_000_003 + step * 101

        def seeds(group: list[Prompt]) -> list[int]:   # sample j of the step's prompt k: base + k * G + j,
            return [base + p.index * g + j for p in group for j in range(g)]   # whichever process draws it

        prompts = [p for p in prompts if p.task == "t2i"] + [p for p in prompts if p.task == "edit"]
        gen = [p for p in prompts if p.task == "t2i"]
        edits = [p for p in prompts if p.task == "edit"]
        mixtures, codes = [], []
        guided = self.sampling if s.guided_policy else self.sampling.overridden(
            generation_guidance=1.0, edit_guidance=1.0, edit_image_guidance=1.0)   # the conditional row alone
        if gen:
            texts = [p.text for p in gen for _ in range(g)]
            codes.append(torch.as_tensor(pipe.generate_codes(texts, seeds(gen))))
            mixtures += [guidance_mixtures(guided, "t2i", pipe.generation_prompt(pipe.text_ids(t)),
                                           pipe.generation_prompt([])) for t in texts]
        if edits:
            sources = np.repeat(pipe.encode_images(np.stack([p.source for p in edits])), g, axis=0)
            texts = [p.text for p in edits for _ in range(g)]
            codes.append(torch.as_tensor(pipe.edit_codes(sources, texts, seeds(edits))))
            mixtures += [guidance_mixtures(guided, "edit", pipe.edit_prompt(src, pipe.text_ids(t)),
                                           pipe.edit_prompt(None, []), pipe.edit_prompt(src, []))
                         for src, t in zip(sources, texts)]
        all_codes = torch.cat(codes).long()
        images = pipe.decode_codes(all_codes)
        rewards = []
        for i, image in enumerate(images):
            p = prompts[i // g]
            rewards.append(self.reward_fn(RewardSample(p.task, image, spec=p.spec, source=p.source,
                                                       source_scene=p.scene, edit=p.edit, size=pipe.image_size,
                                                       text=p.text, target=p.target)))
        self.model.train()  # the pipeline put it in eval mode for sampling
        return Rollout(prompts, mixtures, all_codes, images, rewards)

    # --- 2 to 4. advantages, log-probs, the clipped objective -------------------------------------------

    def _chunks(self, n: int):
        size = max(1, self.settings.micro_batch_size)
        for a in range(0, n, size):
            yield slice(a, min(n, a + size))

    def _backward(self, loss: torch.Tensor, last: bool) -> None:
        """manual_backward; in a data-parallel job gradients accumulate locally and are averaged over the
        processes (one all-reduce) on an update's last backward."""
        ddp = self.trainer.model  # DistributedDataParallel under rl.strategy=ddp, else this module
        if last or not hasattr(ddp, "no_sync"):
            self.manual_backward(loss)
        else:
            with ddp.no_sync():
                self.manual_backward(loss)

    @torch.no_grad()
    def _frozen_logprobs(self, model, roll: Rollout) -> torch.Tensor:
        return torch.cat([mixture_logprobs(model, roll.mixtures[c], roll.codes[c], self.pipe.vocab,
                                           self.sampling.temperature)[0]
                          for c in self._chunks(len(roll.mixtures))])

    def training_step(self, batch: list[Prompt], batch_idx: int) -> None:
        s = self.settings
        started = time.perf_counter()
        step = self.global_step // s.inner_updates
        if s.curriculum:   # the loader's uniform draw is replaced by one weighted by what earlier steps taught
            batch = self.prompts.draw(step, self.curriculum_weights())
        rolled = self.rollout(batch, step)
        rollout_seconds = time.perf_counter() - started
        # With rl.rollout_prompts > prompts_per_step, train on the groups with the most signal (this
        # process's equal share of them).
        roll = rolled.most_varied(len(rolled.prompts) * s.prompts_per_step // s.rollout_prompts, s.group_size) \
            if s.rollout_prompts > s.prompts_per_step else rolled
        rewards = roll.totals(s.group_size)                            # (P, G), this process's trained groups
        advantages = group_advantages(rewards, scale=s.advantage == "std").flatten().to(self.device)  # (N,)
        n = len(advantages)
        replaying = self.replay is not None and s.replay_weight > 0
        logp_ref = self._frozen_logprobs(self.reference, roll) if s.beta > 0 else None
        # With one update per rollout the policy is still the rollout policy: ratio 1, no extra forward.
        logp_old = self._frozen_logprobs(self.model, roll) if s.inner_updates > 1 else None
        opt, schedule = self.optimizers(), self.lr_schedulers()
        for _ in range(s.inner_updates):
            opt.zero_grad()
            totals = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0}
            chunks = list(self._chunks(n))
            for k, c in enumerate(chunks):
                logp, entropy = mixture_logprobs(self.model, roll.mixtures[c], roll.codes[c], self.pipe.vocab,
                                                 self.sampling.temperature)
                old = logp.detach() if logp_old is None else logp_old[c]
                ref = logp.detach() if logp_ref is None else logp_ref[c]   # beta 0: KL 0, no reference run
                terms = grpo_loss(logp, old, ref, advantages[c], torch.ones_like(logp), s.clip_eps, s.beta)
                # The mean over this process's n sequences; every process holds as many (whole groups, an
                # equal share), so DDP's average over processes is the mean over all of the step's.
                weight = (c.stop - c.start) / n
                self._backward(terms.loss * weight, last=k == len(chunks) - 1 and not replaying)
                for key, value in (("loss", terms.loss), ("kl", terms.kl), ("clip_fraction", terms.clip_fraction),
                                   ("entropy", entropy.mean())):
                    totals[key] += float(value.detach()) * weight
            if replaying:
                totals["replay_loss"] = float(self._replay_step(step))
            if s.grad_clip:
                self.clip_gradients(opt, gradient_clip_val=s.grad_clip, gradient_clip_algorithm="norm")
            opt.step()
            schedule.step()
        self.log("rl/trained_spread", float(rewards.std(dim=1, unbiased=False).mean()))
        self._log_step(rolled, rolled.totals(s.group_size), totals, rollout_seconds, time.perf_counter() - started, step)

    def _replay_step(self, step: int) -> torch.Tensor:
        """Backpropagate replay_weight x the next-token loss of this step's understanding batch (this
        process's share of it: summed over its targets, divided by the global count over the processes,
        as pretraining does, since answers and captions differ in length)."""
        from arm.model.train import attention_mask_for, data_parallel_share, target_loss

        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in self.replay[step].items()}
        loss = target_loss(self.model, batch["input_ids"], batch["labels"], attention_mask_for(batch),
                           divide_by=data_parallel_share(batch["labels"]))
        self._backward(self.settings.replay_weight * loss, last=True)
        return loss.detach()

    # --- what a person watches ----------------------------------------------------------------------------

    def _log_step(self, roll: Rollout, local_rewards: torch.Tensor, totals: dict, rollout_s: float, step_s: float,
                  step: int) -> None:
        g = self.settings.group_size
        # Every process's groups in the step's order: the curves and metrics.json are the whole step's.
        groups = sorted(all_processes([(p.index, p.task, p.category, roll.rewards[i * g:(i + 1) * g])
                                       for i, p in enumerate(roll.prompts)]), key=lambda group: group[0])
        rewards = torch.tensor([[r["total"] for r in samples] for *_, samples in groups])  # (P, G)
        self._update_spread(groups)
        for task, categories in self.spread.items():
            for category, value in categories.items():
                self.log(f"rl/spread_{task}_{category or 'all'}", value)
        summary = {}
        for task in ("t2i", "edit"):
            rows = [r for _, t, _, samples in groups if t == task for r in samples]
            for key in (rows[0] if rows else {}):
                values = np.array([r[key] for r in rows])
                summary[f"{task}/{key}"] = float(values.mean())
                self.log(f"rl/{task}_{key}", float(values.mean()))
                self.log(f"rl/{task}_{key}_std", float(values.std()))
        self.history.append(summary)
        self.log("rl/reward", float(rewards.mean()), prog_bar=True)
        self.log("rl/reward_std_in_group", float(rewards.std(dim=1, unbiased=False).mean()))
        self.log("rl/groups_without_signal", float((rewards.std(dim=1) == 0).float().mean()))
        synced = self.trainer.world_size > 1   # equal shares: the mean of the processes' means
        for key, value in totals.items():
            self.log(f"rl/{key}", value, prog_bar=key == "kl", sync_dist=synced)
        self.log("rl/rollout_seconds", rollout_s, sync_dist=synced, reduce_fx="max")
        self.log("rl/samples_per_s", rewards.numel() / max(step_s, 1e-9))
        every = self.settings.sample_every_steps
        if every > 0 and step % every == 0:
            self._log_best_and_worst(roll, local_rewards, step)   # process 0's groups

    def _log_best_and_worst(self, roll: Rollout, rewards: torch.Tensor, step: int, groups: int = 8) -> None:
        """Per group (columns): the source for edits, then the best and the worst sample (rows)."""
        from arm.images import grid_to_tensorboard, make_grid

        writer = getattr(self.logger, "experiment", None)
        if writer is None or not hasattr(writer, "add_image") or self.global_rank:
            return
        g = self.settings.group_size
        for task in ("t2i", "edit"):
            rows = [i for i, p in enumerate(roll.prompts) if p.task == task][:groups]
            if not rows:
                continue
            best = [i * g + int(rewards[i].argmax()) for i in rows]
            worst = [i * g + int(rewards[i].argmin()) for i in rows]
            tiles = ([roll.prompts[i].source for i in rows] if task == "edit" else []) \
                + [roll.images[j] for j in best] + [roll.images[j] for j in worst]
            grid = make_grid(tiles, columns=len(rows), scale=2)
            name = "generation" if task == "t2i" else "editing (sources, best, worst)"
            writer.add_image(f"rl/{name}", grid_to_tensorboard(grid), step)
            writer.add_text(f"rl/{task}_prompts", "\n\n".join(
                f"{k}. {roll.prompts[i].text} (best {float(rewards[i].max()):.2f}, worst {float(rewards[i].min()):.2f})"
                for k, i in enumerate(rows)), step)

    def configure_optimizers(self):
        s = self.settings
        opt = torch.optim.AdamW(self.model.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.95))
        # Warmup, then constant: RL runs are short and are judged at their end.
        schedule = warmup_cosine(s.warmup_steps * s.inner_updates, s.max_steps * s.inner_updates, constant=True)
        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, schedule), "interval": "step"}}
