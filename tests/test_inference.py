"""The pipeline users call (pixels and strings in, pixels and strings out), the world evaluation on top
of it, the `arm generate | edit | understand` commands, and the TensorBoard samples written in training."""

from __future__ import annotations

import math

import numpy as np
import pytest

from arm.pipeline import Pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_world, pretrained_stages):
    """The session's tiny unified model, copied for this module (tests read it, or write beside it)."""
    from arm.config import load_config
    from tests.conftest import copy_stages, tiny_overrides

    # With the training logs: a test reads the sample grids pretraining wrote to TensorBoard.
    artifacts = copy_stages(pretrained_stages, tmp_path_factory.mktemp("trained"),
                            ("prepare", "tokenizer", "encode", "pretrain", "logs"))
    return load_config("configs/default.yaml", tiny_overrides(tiny_world, artifacts))


@pytest.fixture(scope="module")
def pipe(trained):
    return Pipeline.load(trained.stage_dir("pretrain"), trained.stage_dir("tokenizer"), batch_size=3)


def test_pipeline_runs_all_three_tasks_on_pixels_and_strings(pipe):
    images = pipe.generate(["a red circle", "a small blue square at the top left"], seed=0)
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    again = pipe.generate(["a red circle", "a small blue square at the top left"], seed=0)
    np.testing.assert_array_equal(images, again)  # seeded
    # Image i draws with seed + i: the second image alone, at seed 1, draws the same codes. (Compared as
    # codes: the pixel decoder's convolutions round differently at batch 1 and 2, a level here and there.)
    both = pipe.generate_codes(["a red circle", "a small blue square at the top left"], seed=0)
    np.testing.assert_array_equal(pipe.generate_codes(["a small blue square at the top left"], seed=1)[0], both[1])
    np.testing.assert_array_equal(pipe.decode_codes(both), images)

    edited = pipe.edit(images, ["make the circle blue", "remove the square"], seed=1)
    assert edited.shape == images.shape
    answers = pipe.understand(images, ["what color is the circle?", "describe the image."])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert len(pipe.understand(None, ["what color is a ripe tomato?"])) == 1


def greedy_gaps(pipe, prompt: str, codes) -> np.ndarray:
    """How far below the best image logit each of `codes` is when `prompt` runs alone and is fed those
    codes (teacher forcing): all zeros for a greedy decoding of that prompt, up to float ties."""
    import torch

    from arm.rl.train import code_logits

    codes = torch.as_tensor(codes)[None]                                          # (1, T)
    with torch.no_grad():
        logits = code_logits(pipe.engine.model, [pipe.generation_prompt(pipe.text_ids(prompt))], codes,
                             pipe.engine.vocab)                                   # (1, T, K)
    return (logits.max(-1).values - logits.gather(-1, codes[..., None]).squeeze(-1))[0].numpy()


def test_pipeline_batches_like_one_call(pipe):
    """batch_size 3 over 5 prompts (batches of 3 and 2): each row is the greedy decoding of its prompt
    alone. Not exactly the codes of one-prompt calls: a batch of another size can round the logits in
    their last bits (CPU matmul kernels block by the batch's rows), and this barely trained model has
    near and exact ties between codes, which then break the other way on some machines. A mistake of
    the batching (padding, positions, rows mixed up) shows as codes the prompt alone would not choose."""
    prompts = [f"a {c} circle" for c in ("red", "green", "blue", "yellow", "purple")]
    codes = pipe.generate_codes(prompts, sampling=pipe.sampling.overridden(generation_guidance=1.0, temperature=0.0))
    assert codes.shape == (5, 64) and codes.max() < pipe.info.codebook_size and codes.min() >= 0
    for prompt, row in zip(prompts, codes):
        assert greedy_gaps(pipe, prompt, row).max() <= 1e-5, prompt
    # The check sees a mix-up: alone, the first prompt would not have decoded some other row's codes.
    assert max(greedy_gaps(pipe, prompts[0], row).max() for row in codes[1:]) > 1e-3


def test_describe_first_answers_after_the_models_own_description(pipe):
    """A describe-first model's answer is what it says after its own description (the training layout,
    fed back in one batch); asking for the description returns the first pass; a direct model and
    text-only questions have no description."""
    from dataclasses import replace

    from arm.model.sequences import DESCRIBE
    from arm.model.sequences import understanding_turns_prefix

    describer = Pipeline(pipe.model, replace(pipe.info, describe_first=True), pipe.text_tokenizer, pipe.visual,
                         pipe.sampling, batch_size=2)
    direct = Pipeline(pipe.model, replace(pipe.info, describe_first=False), pipe.text_tokenizer, pipe.visual,
                      pipe.sampling)
    images = pipe.generate(["a red circle", "a blue square", "a green triangle"], seed=0)
    codes = pipe.encode_images(images)
    questions = ["what color is the circle?", DESCRIBE, "how many squares are there?"]
    explained = describer.explain_codes(codes, questions)
    descriptions = direct.understand_codes(codes, [DESCRIBE] * 3)
    assert [d for _, d in explained] == descriptions
    assert explained[1][0] == descriptions[1]
    describe_ids = pipe.text_ids(DESCRIBE)
    caption_ids = pipe.engine.generate_text([pipe.understanding_prompt(c, describe_ids) for c in codes])
    for k in (0, 2):
        prompt = understanding_turns_prefix(pipe.vocab, codes[k], [(describe_ids, caption_ids[k])],
                                            pipe.text_ids(questions[k]))
        assert explained[k][0] == pipe.decode_text(pipe.engine.generate_text([prompt])[0])
    # The second pass on its own, after any description, with the image span left out.
    question_ids = pipe.text_ids(questions[0])
    without_image = understanding_turns_prefix(pipe.vocab, None, [(describe_ids, caption_ids[0])], question_ids)
    assert (describer.answer_after_descriptions(None, [caption_ids[0]], [question_ids])
            == pipe.engine.generate_text([without_image]))
    assert describer.understand(images, questions) == [a for a, _ in explained]
    assert all(d is None for _, d in direct.explain_codes(codes, questions))
    assert describer.explain_codes(None, ["what color is a ripe tomato?"])[0][1] is None
    with pytest.raises(ValueError, match="3 images but 2 questions"):
        describer.explain_codes(codes, questions[:2])


def test_pipeline_refuses_a_tokenizer_of_another_codebook(trained, tmp_path):
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(trained.stage_dir("tokenizer"), other)
    config = json.loads((other / "config.json").read_text())
    config["fsq_levels"] = [5, 5, 5]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not the one"):
        Pipeline.load(trained.stage_dir("pretrain"), other)


def test_pipeline_names_the_expected_image_shape(pipe):
    with pytest.raises(ValueError, match=r"\(N, 64, 64, 3\)"):
        pipe.understand(np.zeros((1, 32, 32, 3), np.uint8), ["what color is the circle?"])


def test_world_evaluation_scores_every_task(trained, pipe):
    from arm.evaluate.samples import EvalSettings
    from arm.evaluate.world import evaluate_split

    metrics, samples = evaluate_split(pipe, trained.stage_dir("prepare"), "test", EvalSettings(limit=4))
    for key in ("und/acc", "gen/acc", "edit/g_sc", "edit/g_pq", "edit/g_o"):
        assert 0.0 <= metrics[key] <= (10.0 if key.startswith("edit") else 1.0), key
    assert metrics["gen/count"] == 4 and metrics["edit/count"] == 4 and metrics["und/count"] == 8
    assert len(samples.generation) == 4 and len(samples.editing) == 4
    assert any(k.startswith("und/text_knowledge_") for k in metrics)
    # G_O is the mean of per-sample sqrt(G_SC * G_PQ), never above the larger of the two means.
    assert metrics["edit/g_o"] <= max(metrics["edit/g_sc"], metrics["edit/g_pq"]) + 1e-9
    assert all(math.isfinite(v) for v in metrics.values())


def test_evaluation_samples_with_the_models_own_sampling(trained, pipe):
    """The evaluation draws generation and edits as the model's sampling.json says (the pretrain stage
    wrote the config's `sampling` section there), unless its settings name another sampling."""
    import json

    from arm.evaluate.samples import EvalSettings, Samples, SplitData
    from arm.evaluate.world import evaluate_editing, evaluate_generation

    saved = json.loads((trained.stage_dir("pretrain") / "sampling.json").read_text())
    assert saved == {k: getattr(trained.sampling, k) for k in saved} and pipe.sampling == trained.sampling
    data = SplitData(trained.stage_dir("prepare"), "test")
    prompts = [r["text"] for r in data.task("t2i", 3)]
    samples = Samples()
    evaluate_generation(pipe, data, EvalSettings(limit=3), samples)
    scored = [s["image"] for s in samples.generation]
    assert all(np.array_equal(a, b) for a, b in zip(scored, pipe.generate(prompts, seed=0)))
    # A much hotter temperature: the tiny model's guided logits barely move with the guidance scale alone.
    other = pipe.sampling.overridden(temperature=pipe.sampling.temperature * 4)
    elsewhere = pipe.generate(prompts, seed=0, sampling=other)
    assert not all(np.array_equal(a, b) for a, b in zip(scored, elsewhere))
    overridden = Samples()
    evaluate_generation(pipe, data, EvalSettings(limit=3, sampling=other), overridden)
    assert all(np.array_equal(s["image"], b) for s, b in zip(overridden.generation, elsewhere))
    edits = data.task("edit", 2)
    evaluate_editing(pipe, data, EvalSettings(limit=2), samples)
    sources = data.images([r["source_image"] for r in edits])
    expected = pipe.edit(sources, [r["text"] for r in edits], seed=0)
    assert all(np.array_equal(s["image"], e) for s, e in zip(samples.editing, expected))


def test_training_writes_sample_grids_to_tensorboard(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained.run.log_dir) + "/pretrain")
    events.Reload()
    assert {"samples/generation", "samples/editing (sources above edits)"} <= set(events.Tags()["images"])
    assert {"world/gen_acc", "world/edit_g_o", "world/und_acc", "train/tokens_per_s"} <= set(events.Tags()["scalars"])
    assert any("samples/understanding" in t for t in events.Tags()["tensors"])


def test_generate_edit_understand_commands(trained, tmp_path, capsys):
    from arm.cli import main

    model, tok = str(trained.stage_dir("pretrain")), str(trained.stage_dir("tokenizer"))
    assert main(["generate", "a red circle", "--num", "2", "--out", str(tmp_path / "gen"), "--model", model,
                 "--tokenizer", tok]) == 0
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["0000.png", "0001.png"]
    assert main(["edit", str(tmp_path / "gen" / "0000.png"), "make the circle blue", "--out",
                 str(tmp_path / "edited.png"), "--model", model, "--tokenizer", tok]) == 0
    assert (tmp_path / "edited.png").exists()
    capsys.readouterr()
    assert main(["understand", str(tmp_path / "edited.png"), "what color is the circle?", "--model", model,
                 "--tokenizer", tok]) == 0
    assert capsys.readouterr().out.startswith("what color is the circle?\t")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert main(["understand", str(tmp_path / "broken.png"), "what?", "--model", model, "--tokenizer", tok]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main(["generate", "x", "--model", str(tmp_path / "nowhere"), "--tokenizer", tok]) == 2


def test_evaluate_stage_writes_flat_metrics_per_split(trained):
    import json

    from arm.config import load_config
    from arm.evaluate.stage import evaluate_stage

    cfg = load_config("configs/default.yaml", [f"data.root={trained.data.root}", f"run.artifacts_dir={trained.artifacts}",
                                               "evaluate.model=pretrain", "evaluate.limit=3", "evaluate.splits=[test,holdout]",
                                               "evaluate.tokenizer_images=8", "evaluate.rfid=false"])
    metrics = evaluate_stage(cfg)
    written = json.loads((trained.stage_dir("evaluate") / "metrics.json").read_text())
    assert written == pytest.approx(metrics)
    assert {"gen/acc", "edit/g_o", "und/acc", "holdout/gen/acc", "holdout/edit/g_o", "holdout/und/acc"} <= set(written)
    k = cfg.evaluate.samples_per_prompt
    assert k > 1 and written["gen/count"] == 3 * k and written["holdout/gen/count"] == 3 * k
    assert written["tok/count"] == 8 and 0 < written["tok/ssim"] <= 1 and written["tok/psnr"] > 0
    assert 0 <= written["tok/exact_recovery"] <= 1 and "tok/rfid" not in written
    out = trained.stage_dir("evaluate")
    scores = json.loads((out / "scores.json").read_text())
    # n counts prompts: the k images of a prompt are resampled together.
    assert scores["gen/acc"]["n"] == 3 and scores["gen/acc"]["low"] <= scores["gen/acc"]["value"] <= scores["gen/acc"]["high"]
    assert {"test_gen.csv", "test_edit.csv", "test_und.csv", "holdout_gen.csv"} <= {p.name for p in (out / "plots").iterdir()}
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 3 * 2 + 3 * 2  # generated and edited images, both splits
    assert "http://" not in report and "https://" not in report and "src=\"//" not in report


def test_compare_puts_two_evaluations_side_by_side(tmp_path, capsys):
    import json

    from arm.cli import main
    from arm.evaluate.compare import compare

    for name, passes in (("a", [0, 0, 1, 0] * 25), ("b", [1, 1, 1, 0] * 25)):
        folder = tmp_path / name
        folder.mkdir()
        rows = [{"split": "test", "metric": "gen/acc", "group": "single", "value": v} for v in passes]
        rows += [{"split": "test", "metric": "und/acc", "group": "color", "value": 1.0} for _ in range(10)]
        rows += [{"split": "holdout", "metric": "gen/acc", "group": "single", "value": v} for v in passes[:20]]
        (folder / "per_sample.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    compared = compare(tmp_path / "a", tmp_path / "b")
    table = {r["metric"]: r for r in compared}
    assert [r["metric"] for r in compared] == ["gen/acc", "und/acc", "holdout/gen/acc"]  # test split first
    assert table["gen/acc"]["delta"] == pytest.approx(0.5) and table["gen/acc"]["significant"]
    assert table["und/acc"]["delta"] == 0 and not table["und/acc"]["significant"]
    assert table["holdout/gen/acc"]["delta"] == pytest.approx(0.5)
    assert main(["evaluate", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--report", str(tmp_path / "c.html")]) == 0
    assert "| gen/acc | 0.250 | 0.750 | +0.500 |" in capsys.readouterr().out
    page = (tmp_path / "c.html").read_text()
    assert "0.750 (+0.500)" in page and "http" not in page
    assert main(["evaluate", "--compare", str(tmp_path / "a"), str(tmp_path / "nowhere")]) == 2


def test_compare_pairs_samples_of_the_same_items(tmp_path):
    """With item ids on both sides, the difference interval is paired (matched by id, in any order)."""
    import json

    from arm.evaluate.compare import compare

    passes = {"a": [0, 0, 1, 0, 1] * 40, "b": [1, 0, 1, 0, 1] * 40}    # B fixes one item in five
    for name, values in passes.items():
        folder = tmp_path / name
        folder.mkdir()
        rows = [{"split": "test", "metric": "gen/acc", "group": "single", "value": v, "item": f"r{i}#0"}
                for i, v in enumerate(values)]
        if name == "b":
            rows.reverse()
        (folder / "per_sample.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    row = compare(tmp_path / "a", tmp_path / "b")[0]
    assert row["paired"] and row["delta"] == pytest.approx(0.2) and row["low"] > 0.1


def test_bench_geneval_writes_the_official_layout_from_the_model(trained, tmp_path):
    from pathlib import Path

    from arm.cli import main

    fixture = Path(__file__).parent / "fixtures" / "public" / "evaluation_metadata.jsonl"
    assert main(["bench", "geneval", str(fixture), "--out", str(tmp_path / "g"), "--num", "2",
                 "--model", str(trained.stage_dir("pretrain")), "--tokenizer", str(trained.stage_dir("tokenizer"))]) == 0
    assert sorted(p.name for p in (tmp_path / "g" / "00002" / "samples").iterdir()) == ["00000.png", "00001.png"]
    assert main(["bench", "wise", str(fixture.parent / "wise"), "--model", str(trained.stage_dir("pretrain")),
                 "--tokenizer", str(trained.stage_dir("tokenizer"))]) == 2  # no judge configured: one-line error
