"""The Bento as users reach it: `arm package` into a temporary BentoML home, then `bentoml serve` of the
built Bento on a loopback port, called over real HTTP (BentoML's client and raw multipart)."""

from __future__ import annotations

import concurrent.futures
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arm.serving import RequestError, check_range, check_text, read_image

pytestmark = pytest.mark.slow


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# --- the checks, without a server ---------------------------------------------------------------------


def test_image_checks_refuse_bad_files_with_the_fix():
    good = _png(np.full((80, 60, 3), 200, np.uint8))
    assert read_image(good, 64).shape == (64, 64, 3)
    for data, message in ((b"", "empty"), (b"not an image at all", "cannot decode"),
                          (good[: len(good) // 2], "truncated"), (good, "at most 10 bytes")):
        with pytest.raises(RequestError, match=message):
            read_image(data, 64, max_bytes=10 if message == "at most 10 bytes" else 10_000_000)
    with pytest.raises(RequestError, match="upload at most 64 x 64"):
        read_image(_png(np.zeros((65, 10, 3), np.uint8)), 64, max_side=64)


def test_text_and_number_checks():
    assert check_text(" hi ", "prompt") == "hi"
    with pytest.raises(RequestError, match="prompt is empty"):
        check_text("   ", "prompt")
    with pytest.raises(RequestError, match="shorten it to at most 5"):
        check_text("abcdefgh", "prompt", max_chars=5)
    with pytest.raises(RequestError, match="from 0 to 20"):
        check_range(float("nan"), "guidance_scale", 0, 20)


# --- the real server ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def packaged(tmp_path_factory, tiny_world, pretrained_stages):
    """`arm package` of the tiny pretrained model: a model in the store and a built, exported Bento."""
    from arm.config import load_config
    from arm.package import package_stage
    from tests.conftest import copy_stages, tiny_overrides

    artifacts = copy_stages(pretrained_stages, tmp_path_factory.mktemp("package"), ("prepare", "tokenizer", "pretrain"))
    return package_stage(load_config("configs/default.yaml", tiny_overrides(tiny_world, artifacts, "package.model=pretrain")))


@pytest.fixture(scope="module")
def server(packaged, tmp_path_factory):
    """The built Bento served on loopback (`bentoml serve arm:<version>`), as a user serves it."""
    from arm.serving import local_server

    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out, local_server(packaged["bento_tag"], log=out) as (url, _):
        yield url


def test_package_lists_the_bento_and_the_model(packaged):
    import bentoml

    assert packaged["bento_tag"].split(":")[0] in {str(b.tag.name) for b in bentoml.list()}
    model = bentoml.models.get(packaged["model_tag"])
    assert {"config", "lineage", "metrics"} <= set(model.info.metadata)
    assert (model.path_of("model") and Path(model.path_of("model"), "model.safetensors").is_file())
    assert Path(packaged["bento_file"]).is_file()


def test_every_endpoint_through_bentomls_client(server, pretrained_stages, tmp_path):
    import json

    import bentoml

    from arm.world.verifier import parse

    with bentoml.SyncHTTPClient(server, timeout=120) as client:
        image = client.generate(prompt="a large red circle at the center", num_images=1, seed=3)
        assert isinstance(image, Image.Image) and image.size == (64, 64)
        parse(np.asarray(image.convert("RGB")), 64)  # the verifier reads the served format
        strip = client.generate(prompt="a small blue square", num_images=2, seed=3)
        assert strip.size == (128, 64)
        source = tmp_path / "source.png"
        image.save(source)
        edited = client.edit(image=source, instruction="make the circle blue", seed=1)
        assert isinstance(edited, Image.Image) and edited.size == (64, 64)
        answer = client.understand(image=source, question="what color is the circle?")
        assert isinstance(answer["answer"], str)
        # The packaged model says how it answers: describe-first models also return their description.
        describes_first = json.loads((pretrained_stages / "pretrain" / "vocab.json").read_text())["describe_first"]
        assert (answer["description"] is not None) == describes_first


def test_raw_multipart_and_json_http(server):
    import httpx

    source = _png(np.full((64, 64, 3), 255, np.uint8))
    r = httpx.post(f"{server}/understand", files={"image": ("s.png", source, "image/png")},
                   data={"question": "how many objects are there?"}, timeout=120)
    assert r.status_code == 200 and isinstance(r.json()["answer"], str)
    r = httpx.post(f"{server}/edit", files={"image": ("s.png", source, "image/png")},
                   data={"instruction": "add a red circle", "seed": "2"}, timeout=120)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    r = httpx.post(f"{server}/generate", json={"prompt": "a red circle"}, timeout=120)
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (64, 64)
    assert httpx.get(f"{server}/livez").status_code == 200
    assert "bentoml_service_request" in httpx.get(f"{server}/metrics").text


@pytest.mark.parametrize("path,payload,message", [
    ("generate", {"prompt": ""}, "prompt is empty"),
    ("generate", {"prompt": "x" * 600}, "shorten it"),
    ("generate", {"prompt": "a circle", "num_images": 0}, "num_images"),
    ("generate", {"prompt": "a circle", "num_images": 100}, "num_images"),
    ("generate", {"prompt": "a circle", "guidance_scale": -1}, "guidance_scale"),
    ("generate", {"prompt": "a circle", "temperature": 99}, "temperature"),
    ("generate", {"prompt": "a circle", "seed": -5}, "seed"),
    ("generate", {"prompt": 7}, "prompt"),
])
def test_bad_json_gets_a_4xx_that_names_the_field(server, path, payload, message):
    import httpx

    r = httpx.post(f"{server}/{path}", json=payload, timeout=60)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert message in r.text


@pytest.mark.parametrize("upload,message", [
    (b"definitely not a png", "cannot decode"),
    (_png(np.zeros((64, 64, 3), np.uint8))[:60], "truncated"),
    (_png(np.zeros((8, 5000, 3), np.uint8)), "upload at most 4096 x 4096"),
    (b"", "empty"),
])
def test_bad_images_get_a_400_and_the_worker_lives_on(server, upload, message):
    import httpx

    for path, data in (("understand", {"question": "what?"}), ("edit", {"instruction": "make it red"})):
        r = httpx.post(f"{server}/{path}", files={"image": ("x.png", upload, "image/png")}, data=data, timeout=60)
        assert r.status_code == 400, (path, r.status_code, r.text)
        assert message in r.text
    r = httpx.post(f"{server}/understand", files={"image": ("x.png", _png(np.zeros((64, 64, 3), np.uint8)), "image/png")},
                   data={"question": ""}, timeout=60)
    assert r.status_code == 400 and "question is empty" in r.text
    assert httpx.get(f"{server}/livez").status_code == 200


def test_concurrent_generation_is_batched_and_seeded(server):
    """32 requests at once all succeed, the server's metrics record batches larger than one, and a
    request's images do not depend on which others shared its batch."""
    import httpx

    def call(i: int) -> bytes:
        r = httpx.post(f"{server}/generate", json={"prompt": f"a red circle number {i % 4}", "seed": i}, timeout=300)
        assert r.status_code == 200, r.text
        return r.content

    alone = call(5)
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(call, range(32)))
    assert all(Image.open(io.BytesIO(b)).size == (64, 64) for b in results)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(results[5]))), np.asarray(Image.open(io.BytesIO(alone))))
    metrics = httpx.get(f"{server}/metrics").text
    buckets = {float(le): float(v) for le, v in re.findall(
        r'bentoml_service_adaptive_batch_size_bucket\{[^}]*le="([0-9.+Inf]+)"[^}]*\} ([0-9.]+)', metrics)
        if le != "+Inf"}
    totals = [float(v) for v in re.findall(r"bentoml_service_adaptive_batch_size_count\{[^}]*\} ([0-9.]+)", metrics)]
    assert totals and buckets, metrics[-2000:]
    assert buckets[1.0] < sum(totals), "every batch had one request: adaptive batching did not batch"


def test_schemathesis_finds_no_server_error(server):
    """Property-based requests from the service's own OpenAPI document (bounded, loopback only)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{server}/docs.json")
    checked = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path not in ("/generate", "/edit", "/understand"):
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def no_5xx(case):
            response = case.call(base_url=server, timeout=120)
            assert response.status_code < 500, (case.body, response.status_code, response.text[:500])

        no_5xx()
        checked += 1
    assert checked == 3


def test_cli_pipeline_and_bento_sample_the_same_image(server, pretrained_stages, tmp_path):
    """One sampling source: the model's sampling.json. The same prompt and seed give the same image through
    `arm generate`, `Pipeline.generate` and `/generate`; the same edit through `arm edit` and `/edit`."""
    import httpx

    from arm.cli import main
    from arm.pipeline import Pipeline

    model, tokenizer = str(pretrained_stages / "pretrain"), str(pretrained_stages / "tokenizer")
    prompt, seed = "a small green triangle at the top left", 7
    assert main(["generate", prompt, "--model", model, "--tokenizer", tokenizer, "--seed", str(seed),
                 "--out", str(tmp_path / "cli")]) == 0
    by_cli = np.asarray(Image.open(tmp_path / "cli" / "0000.png").convert("RGB"))
    by_pipeline = Pipeline.load(model, tokenizer).generate([prompt], seed)[0]
    r = httpx.post(f"{server}/generate", json={"prompt": prompt, "seed": seed}, timeout=120)
    assert r.status_code == 200, r.text
    by_bento = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    assert np.array_equal(by_cli, by_pipeline) and np.array_equal(by_pipeline, by_bento)

    source = tmp_path / "source.png"
    Image.fromarray(by_pipeline).save(source)
    instruction = "make the triangle red"
    assert main(["edit", str(source), instruction, "--model", model, "--tokenizer", tokenizer, "--seed", "3",
                 "--out", str(tmp_path / "edited.png")]) == 0
    cli_edit = np.asarray(Image.open(tmp_path / "edited.png").convert("RGB"))
    r = httpx.post(f"{server}/edit", files={"image": ("s.png", source.read_bytes(), "image/png")},
                   data={"instruction": instruction, "seed": "3"}, timeout=120)
    assert r.status_code == 200, r.text
    assert np.array_equal(cli_edit, np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")))
    # And the sampling the service is given is really used: another temperature gives another image.
    r = httpx.post(f"{server}/generate", json={"prompt": prompt, "seed": seed, "temperature": 2.0}, timeout=120)
    assert not np.array_equal(np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")), by_bento)
