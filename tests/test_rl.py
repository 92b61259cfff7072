"""The RL stage: log-probs against a full forward, a real GRPO run through Lightning on the tiny world,
exact resume, and a user's own reward named in config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

RL_TINY = ["rl.max_steps=3", "rl.prompts_per_step=2", "rl.group_size=3", "rl.micro_batch_size=4",
           "rl.sample_every_steps=1", "rl.checkpoint_every_steps=1", "rl.warmup_steps=1", "rl.lr=0.001"]


def constant_reward(sample) -> float:
    """A user's reward: every sample equally good, so every group's advantages are zero."""
    return 0.5


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tiny_world, pretrained_stages):
    """Overrides pointing at a copy of the session's tiny pretrained stages."""
    from tests.conftest import copy_stages, tiny_overrides

    artifacts = copy_stages(pretrained_stages, tmp_path_factory.mktemp("rl") / "a")
    return tiny_overrides(tiny_world, artifacts)


def _config(overrides, *extra):
    from arm.config import load_config

    return load_config("configs/default.yaml", [*overrides, *RL_TINY, *extra])


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_code_logprobs_match_a_full_forward_of_each_sequence_alone(pretrained):
    from arm.config import load_config
    from arm.model.vocab import SOI, T2I
    from arm.model.saved import load_unified_model
    from arm.rl.objective import token_logprobs
    from arm.rl.train import code_logprobs

    cfg = load_config("configs/default.yaml", pretrained)
    model, info, _ = load_unified_model(cfg.stage_dir("pretrain"))
    vocab = info.vocab()
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, vocab.codebook_size, (3, info.grid ** 2), generator=g)
    prefixes = [[vocab[T2I], 5, 6, vocab[SOI]], [vocab[T2I], vocab[SOI]], [vocab[T2I], 7, 8, 9, 10, vocab[SOI]]]
    with torch.no_grad():
        logp, entropy = code_logprobs(model, prefixes, codes, vocab)     # left-padded batch
    lo, hi = vocab.image_offset, vocab.image_offset + vocab.codebook_size
    for row, prefix in enumerate(prefixes):
        ids = torch.tensor([prefix + (codes[row] + lo).tolist()])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prefix) - 1:-1, lo:hi]
        expected = token_logprobs(logits[None], codes[row][None])[0]
        torch.testing.assert_close(logp[row], expected, rtol=1e-4, atol=1e-5)
    assert entropy.shape == logp.shape and bool((entropy > 0).all())
    assert float(entropy.max()) <= float(torch.log(torch.tensor(vocab.codebook_size))) + 1e-4


@pytest.mark.parametrize("task,guidance", [("t2i", {"generation_guidance": 2.0}),
                                           ("edit", {"edit_guidance": 2.5, "edit_image_guidance": 1.0}),
                                           ("edit", {"edit_guidance": 2.0, "edit_image_guidance": 1.5})])
def test_guided_mixture_logprobs_are_the_distribution_the_engine_samples(pretrained, task, guidance):
    """Greedy guided decoding picks, at every position, the code the mixture's log-probs rank first: the
    objective's guided log-probs (rl.guided_policy) are of the distribution rollouts draw from, rows and
    weights as the engine mixes them (two rows, or three when the source guidance is not 1)."""
    from arm.config import load_config
    from arm.pipeline import Pipeline
    from arm.rl.train import guidance_mixtures, mixture_logits, mixture_logprobs

    cfg = load_config("configs/default.yaml", pretrained)
    pipe = Pipeline.load(cfg.stage_dir("pretrain"), cfg.stage_dir("tokenizer"))
    greedy = pipe.sampling.overridden(temperature=0.0, top_k=0, top_p=1.0, **guidance)
    texts = ["a red circle and a blue square", "a small green triangle"] if task == "t2i" else \
        ["make the circle blue", "remove the square"]
    if task == "t2i":
        codes = pipe.generate_codes(texts, sampling=greedy)
        mixtures = [guidance_mixtures(greedy, task, pipe.generation_prompt(pipe.text_ids(t)), pipe.generation_prompt([]))
                    for t in texts]
    else:
        sources = pipe.generate_codes(["a red circle and a blue square"] * 2, seed=3)
        codes = pipe.edit_codes(sources, texts, sampling=greedy)
        mixtures = [guidance_mixtures(greedy, task, pipe.edit_prompt(src, pipe.text_ids(t)), pipe.edit_prompt(None, []),
                                      pipe.edit_prompt(src, [])) for src, t in zip(sources, texts)]
    assert len(mixtures[0]) == (2 if guidance.get("edit_image_guidance", 1.0) == 1.0 else 3)
    codes = torch.as_tensor(codes)
    with torch.no_grad():
        mixed = mixture_logits(pipe.engine.model, mixtures, codes, pipe.engine.vocab)           # (N, T, K)
        conditional = mixture_logits(pipe.engine.model, [m[:1] for m in mixtures], codes, pipe.engine.vocab)
    # The chosen code is the mix's largest logit at every position (up to float ties) ...
    gaps = mixed.max(-1).values - mixed.gather(-1, codes[..., None]).squeeze(-1)
    assert float(gaps.max()) <= 1e-4
    # ... which the conditional prompt alone does not explain: guidance changed the choice somewhere.
    assert bool((conditional.argmax(-1) != codes).any())
    logp, _ = mixture_logprobs(pipe.engine.model, mixtures, codes, pipe.engine.vocab, temperature=0.5)
    torch.testing.assert_close(logp, torch.log_softmax(mixed / 0.5, -1).gather(-1, codes[..., None]).squeeze(-1))


def test_rl_stage_trains_and_writes_a_model_the_pipeline_loads(pretrained, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from arm.pipeline import Pipeline
    from arm.rl.stage import rl_stage

    cfg = _config(pretrained, f"rl.out_dir={tmp_path / 'rl'}", f"run.log_dir={tmp_path / 'logs'}")
    metrics = rl_stage(cfg)
    out = cfg.stage_dir("rl")
    for key in ("reward/t2i/total/first", "reward/t2i/instruction/last", "reward/edit/consistency/last"):
        assert 0.0 <= metrics[key] <= 2.25, key
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3
    before, after = _weights(cfg.stage_dir("pretrain")), _weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before), "RL left the weights unchanged"
    pipe = Pipeline.load(out, cfg.stage_dir("tokenizer"))
    assert pipe.sampling == cfg.sampling      # the rl stage saved its config's sampling beside the model
    images = pipe.generate(["a small red circle"])
    assert images.shape == (1, 64, 64, 3)
    events = EventAccumulator(str(tmp_path / "logs" / "rl-rl")).Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("rl/reward", "rl/kl", "rl/entropy", "rl/clip_fraction", "rl/t2i_instruction", "rl/edit_quality_std"):
        assert tag in scalars, tag
    assert {"rl/generation", "rl/editing (sources, best, worst)"} <= set(events.Tags()["images"])


def test_rl_trains_on_the_most_varied_groups_with_each_objective_setting(pretrained, tmp_path):
    """rl.rollout_prompts > prompts_per_step: 4 prompts rolled out, the 2 whose rewards vary most trained
    on (their spread at least the step's); with the other objective settings than the default's, and
    each task scored by its own rewards."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from arm.rl.stage import rl_stage

    guided = _config(pretrained).rl.guided_policy   # the other setting than the default's
    cfg = _config(pretrained, f"rl.out_dir={tmp_path / 'rl'}", f"run.log_dir={tmp_path / 'logs'}", "rl.rollout_prompts=4",
                  f"rl.guided_policy={not guided}", "rl.advantage=mean", "rl.sampling={temperature: 1.0}",
                  "rl.rewards={instruction: 0, consistency: 0, quality: 0.5, evaluation: 1.0}",
                  "rl.rewards_by_task={edit: {consistency: 1.0}}")
    metrics = rl_stage(cfg)
    assert metrics["samples"] == 3 * 4 * 3
    assert {"reward/t2i/evaluation/last", "reward/t2i/quality/last", "reward/edit/consistency/last"} <= set(metrics)
    assert not {"reward/edit/evaluation/last", "reward/t2i/consistency/last"} & set(metrics)   # each task its own
    before, after = _weights(cfg.stage_dir("pretrain")), _weights(cfg.stage_dir("rl"))
    assert any(not torch.equal(before[k], after[k]) for k in before), "RL left the weights unchanged"
    events = EventAccumulator(str(tmp_path / "logs" / "rl-rl")).Reload()
    trained = [e.value for e in events.Scalars("rl/trained_spread")]
    everyone = [e.value for e in events.Scalars("rl/reward_std_in_group")]
    assert len(trained) == 3 and all(t >= a - 1e-6 for t, a in zip(trained, everyone))


def test_the_curriculum_draws_categories_by_their_groups_spread(pretrained):
    """rl.curriculum: a category whose groups all scored alike falls to the floor weight, one not yet seen
    weighs as the most varied, the running spread folds each step in; `draw` keeps to the weights
    (a zero-weight category is never drawn) and draws the same prompts for the same step and weights."""
    from types import SimpleNamespace

    from arm.rl.data import RLPrompts
    from arm.rl.train import CURRICULUM_DECAY, CURRICULUM_FLOOR, GRPOModule

    prompts = RLPrompts(_config(pretrained).stage_dir("prepare"), "joint", prompts_per_step=8, steps=3)
    categories = list(prompts.categories("t2i"))
    assert len(categories) >= 3 and all(p.category for p in prompts.prompts["edit"])
    varied, alike, unseen = categories[:3]
    module = SimpleNamespace(prompts=prompts, spread={})
    rewards = lambda *totals: [{"total": t} for t in totals]
    GRPOModule._update_spread(module, [(0, "t2i", varied, rewards(0.0, 1.0)), (1, "t2i", alike, rewards(0.5, 0.5))])
    GRPOModule._update_spread(module, [(0, "t2i", varied, rewards(0.0, 0.0))])
    assert module.spread["t2i"][varied] == pytest.approx(CURRICULUM_DECAY * 0.5)
    weights = GRPOModule.curriculum_weights(module)["t2i"]
    top = CURRICULUM_DECAY * 0.5
    assert weights[varied] == pytest.approx(top) and weights[unseen] == pytest.approx(top)
    assert weights[alike] == pytest.approx(CURRICULUM_FLOOR * top)
    only = {"t2i": {varied: 1.0}, "edit": {c: 1.0 for c in prompts.categories("edit")}}
    drawn = prompts.draw(1, only)
    assert {p.category for p in drawn if p.task == "t2i"} == {varied}
    assert [p.text for p in prompts.draw(1, only)] == [p.text for p in drawn]
    assert [p.text for p in prompts.draw(1)] == [p.text for p in prompts[1]]   # no weights: the uniform draw


@pytest.mark.parametrize("curriculum", [False, True], ids=["uniform", "curriculum"])
def test_rl_resumes_exactly(pretrained, tmp_path, curriculum):
    """Stopped after step 2 and resumed: the weights of an uninterrupted run (with rl.curriculum, the
    categories' running spread comes back from the checkpoint, so the resumed steps draw the same prompts)."""
    from arm.rl.stage import rl_stage

    whole = _config(pretrained, f"rl.out_dir={tmp_path / 'whole'}", f"rl.curriculum={curriculum}")
    rl_stage(whole)
    parts = _config(pretrained, f"rl.out_dir={tmp_path / 'parts'}", f"rl.curriculum={curriculum}")
    assert rl_stage(parts, stop_at_step=2) is None
    assert (tmp_path / "parts" / "checkpoints" / "last.ckpt").exists()
    rl_stage(parts)
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "parts")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    spreads = [{(task, c): v for task, by in torch.load(tmp_path / run / "checkpoints" / "last.ckpt",
                                                        weights_only=False)["category_spread"].items()
                for c, v in by.items()} for run in ("whole", "parts")]
    assert spreads[0] and spreads[0] == pytest.approx(spreads[1])   # every step folded in, before and after resuming


def test_a_users_reward_from_config_and_equal_rewards_leave_the_policy_unchanged(pretrained, tmp_path):
    """Every sample gets the same reward, so every advantage is zero; with no KL term and no weight
    decay the update is exactly zero, through the whole Lightning loop."""
    from arm.rl.stage import rl_stage

    cfg = _config(pretrained, f"rl.out_dir={tmp_path / 'rl'}", "rl.rewards={tests.test_rl:constant_reward: 1.0, instruction: 0, consistency: 0, quality: 0}",
                  "rl.beta=0.0", "rl.replay_weight=0", "rl.sample_every_steps=0")
    metrics = rl_stage(cfg)
    assert metrics["reward/t2i/tests.test_rl:constant_reward/last"] == 0.5
    before, after = _weights(cfg.stage_dir("pretrain")), _weights(cfg.stage_dir("rl"))
    for key in before:
        assert torch.equal(before[key], after[key]), key


# One step of four prompts (two of each task) x three samples: each of two processes rolls out one group
# of each task, backpropagates its 6 sequences in micro-batches of 4 and 2 (one process: 4, 4, 4) and
# replays its half of the understanding batch. No clipping: the gradients compared are the raw ones.
PARITY = ["rl.max_steps=1", "rl.prompts_per_step=4", "rl.group_size=3", "rl.micro_batch_size=4",
          "rl.replay_batch_size=4", "rl.warmup_steps=0", "rl.lr=0.001", "rl.grad_clip=0", "rl.accelerator=cpu",
          "rl.sample_every_steps=0", "rl.checkpoint_every_steps=1"]


def test_two_processes_take_the_one_process_grpo_step(pretrained, tmp_path):
    """rl.strategy=ddp over two CPU processes (gloo), from the rollout one process drew: each process draws
    its share of the step's prompts and, rolling them out itself, the very samples one process drew; the
    averaged gradients, the weights after the step and the rewards kept are the one-process ones."""
    import shutil
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.rl_parity import run

    def overrides(name, *extra):
        return [*pretrained, *PARITY, f"rl.out_dir={tmp_path / name / 'rl'}", f"run.log_dir={tmp_path / name / 'logs'}",
                *extra]

    one, two = tmp_path / "one", tmp_path / "two"
    metrics = run("record", one, overrides("one"))
    two.mkdir()
    shutil.copyfile(one / "rollout.pkl", two / "rollout.pkl")
    done = subprocess.run([sys.executable, "-m", "tests.rl_parity", "replay", str(two),
                           *overrides("two", "rl.strategy=ddp", "rl.devices=2")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank, prompts in ((0, [0, 2]), (1, [1, 3])):       # one generation and one edit group each
        share = torch.load(two / f"rollout-{rank}.pt")
        assert share["prompts"] == prompts
        assert torch.equal(share["own"], share["recorded"]), f"process {rank} drew other samples"
    expected, got, other = (torch.load(folder / f"grads-{rank}.pt") for folder, rank in ((one, 0), (two, 0), (two, 1)))
    for name in expected:
        torch.testing.assert_close(got[name], other[name], rtol=0, atol=0, msg=name)   # averaged: the same on both
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-8, msg=name)
    artifacts = next(o.split("=", 1)[1] for o in pretrained if o.startswith("run.artifacts_dir="))
    before, after, ours = _weights(Path(artifacts) / "pretrain"), _weights(one / "rl"), _weights(two / "rl")
    assert any(not torch.equal(before[name], after[name]) for name in before), "the step changed nothing"
    # Adam's first step moves each weight by lr x g / (|g| + 1e-8): an output row of a code nobody sampled
    # (g near 1e-8) turns a rounding difference of 1e-10 in g into 1e-6 of weight, so the weights are
    # held to 1% of the step (lr 1e-3; measured: 8e-7), the gradients above to float rounding.
    for name in after:
        torch.testing.assert_close(ours[name], after[name], rtol=0, atol=1e-5, msg=name)
    kept = json.loads((two / "rl" / "metrics.json").read_text())
    assert {k: v for k, v in kept.items() if k.startswith("reward/")} == {
        k: v for k, v in metrics.items() if k.startswith("reward/")}


def test_rl_config_errors_name_the_fix():
    from arm.config import load_config

    with pytest.raises(ValueError, match="rl.mode must be gen, edit or joint"):
        load_config("configs/default.yaml", ["rl.mode=both"])
    with pytest.raises(ValueError, match="group_size must be at least 2"):
        load_config("configs/default.yaml", ["rl.group_size=1"])
    with pytest.raises(ValueError, match=r"rl.sampling has unknown settings \['temprature'\]"):
        load_config("configs/default.yaml", ["rl.sampling={temprature: 1.0}"])
    with pytest.raises(ValueError, match="rl.advantage must be std"):
        load_config("configs/default.yaml", ["rl.advantage=median"])
    with pytest.raises(ValueError, match="its keys are t2i and edit"):
        load_config("configs/default.yaml", ["rl.rewards_by_task={editing: {evaluation: 1.0}}"])
    with pytest.raises(ValueError, match="rl.rewards_by_task.edit must give at least one reward"):
        load_config("configs/default.yaml", ["rl.rewards_by_task={edit: {evaluation: 0.0}}"])
    cfg = load_config("configs/default.yaml", ["rl.rewards_by_task={edit: {evaluation: 1.0}}"])
    assert cfg.rl.task_rewards("edit") == {"evaluation": 1.0} and cfg.rl.task_rewards("t2i") == dict(cfg.rl.rewards)
    with pytest.raises(ValueError, match="must be at least rl.prompts_per_step"):
        load_config("configs/default.yaml", ["rl.rollout_prompts=8"])
    from arm.rl.rewards import resolve

    with pytest.raises(ValueError, match="package.module:function"):
        resolve("nonsense")


def test_rl_config_takes_ddp_and_names_the_fix_for_what_it_cannot_split():
    from arm.config import load_config

    cfg = load_config("configs/default.yaml", ["rl.strategy=ddp", "rl.devices=2"])
    assert (cfg.rl.strategy, cfg.rl.devices) == ("ddp", 2)
    for overrides, fix in ((["rl.strategy=fsdp", "rl.devices=2"], "set rl.strategy=ddp"),
                           (["rl.devices=2"], "needs rl.strategy=ddp"),
                           (["rl.strategy=ddp", "rl.devices=3"], "set rl.prompts_per_step=18"),
                           (["rl.strategy=ddp", "rl.devices=2", "rl.replay_batch_size=5"], "set rl.replay_batch_size=6")):
        with pytest.raises(ValueError, match=fix):
            load_config("configs/default.yaml", overrides)
    load_config("configs/default.yaml", ["rl.strategy=ddp", "rl.devices=2", "rl.replay_batch_size=5",
                                         "rl.replay_weight=0"])   # nothing to replay, nothing to split
