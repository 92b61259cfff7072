"""What the Bento service does besides BentoML: check requests, read and write images, and run many
unrelated generation requests as one batched forward. Framework-free, so it is tested directly and the
service file stays a thin shell.

Every bad input raises `RequestError` with a message that says what to change; the service turns it
into HTTP 400.

>>> check_text("  a red circle ", "prompt", max_chars=200)
'a red circle'
>>> check_range(9.0, "guidance_scale", 0.0, 20.0)
9.0
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

MAX_IMAGE_BYTES = 10 * 1024 * 1024   # what a request may upload
MAX_IMAGE_SIDE = 4096                 # larger images are refused, not resized (decompression bombs)
MAX_TEXT_CHARS = 500
MAX_IMAGES_PER_REQUEST = 8


class RequestError(ValueError):
    """A client's mistake; the message names the fix."""


def check_text(text: str, name: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    if not isinstance(text, str):
        raise RequestError(f"{name} must be a string")
    stripped = text.strip()
    if not stripped:
        raise RequestError(f"{name} is empty; give a non-empty {name}")
    if len(stripped) > max_chars:
        raise RequestError(f"{name} has {len(stripped)} characters; shorten it to at most {max_chars}")
    return stripped


def check_range(value: float, name: str, low: float, high: float) -> float:
    if value is None or not isinstance(value, (int, float)) or not np.isfinite(value) or not low <= value <= high:
        raise RequestError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")
    return value


def read_image(data: bytes | np.ndarray, size: int, max_bytes: int = MAX_IMAGE_BYTES,
               max_side: int = MAX_IMAGE_SIDE) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, ...) or a PIL image -> (size, size, 3) uint8 RGB at the model's
    input size, as `arm prepare` makes training images (`arm.images.square_rgb`). Refuses what cannot be
    decoded, truncated files and oversized images."""
    from PIL import Image, UnidentifiedImageError

    from arm.images import square_rgb

    if isinstance(data, Image.Image):
        image = data
    else:
        if len(data) == 0:
            raise RequestError("the image is empty; upload a PNG or JPEG file")
        if len(data) > max_bytes:
            raise RequestError(f"the image is {len(data):,} bytes; upload at most {max_bytes:,} bytes")
        try:
            image = Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, OSError) as e:
            raise RequestError(f"cannot decode the image ({e}); upload a PNG or JPEG file") from e
    if max(image.size) > max_side or min(image.size) < 1:
        raise RequestError(f"the image is {image.size[0]} x {image.size[1]} pixels; upload at most "
                           f"{max_side} x {max_side}")
    try:
        image.load()  # decodes now: a truncated file fails here, not later inside the model
        # As training saw its images: oriented, transparency on white, centre-cropped, never stretched.
        return square_rgb(image, size)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise RequestError(f"the image is damaged or truncated ({e}); upload the whole file") from e


def to_png(image: np.ndarray):
    """(S, S, 3) uint8 -> PIL image (BentoML sends it as PNG)."""
    from PIL import Image

    return Image.fromarray(np.asarray(image, dtype=np.uint8))


@dataclass
class GenerationRequest:
    """One /generate request. Sampling values left None are the served model's own (its sampling.json)."""

    prompt: str
    num_images: int = 1
    guidance_scale: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    seed: int = 0


def check_generation(r: GenerationRequest, max_images: int = MAX_IMAGES_PER_REQUEST) -> GenerationRequest:
    check_range(r.num_images, "num_images", 1, max_images)
    check_range(r.seed, "seed", 0, 2**31 - 1)
    for value, name, low, high, kind in ((r.guidance_scale, "guidance_scale", 0.0, 20.0, float),
                                         (r.temperature, "temperature", 0.0, 5.0, float),
                                         (r.top_k, "top_k", 0, 100_000, int)):
        if value is not None:
            check_range(value, name, low, high)
    return GenerationRequest(check_text(r.prompt, "prompt"), int(r.num_images),
                             None if r.guidance_scale is None else float(r.guidance_scale),
                             None if r.temperature is None else float(r.temperature),
                             None if r.top_k is None else int(r.top_k), int(r.seed))


def generate_batch(pipe, requests: list[GenerationRequest]) -> list[np.ndarray]:
    """Many requests, one batched forward (guided rows included): -> per request (num_images, S, S, 3).
    Image i of a request is sampled with seed `seed + i` by its own generator, so a request gets the same
    images whether it ran alone or beside others, and the same as `Pipeline.generate([prompt] * n, seed)`."""
    import torch

    from arm.generate import Sampling

    rows, scales, samplings, owners = [], [], [], []
    for k, r in enumerate(requests):
        prompt = pipe.generation_prompt(pipe.text_ids(r.prompt))
        s = pipe.sampling.overridden(generation_guidance=r.guidance_scale, temperature=r.temperature, top_k=r.top_k)
        for i in range(r.num_images):
            rows.append(prompt)
            scales.append(s.generation_guidance)
            samplings.append(Sampling(s.temperature, s.top_k, s.top_p, seed=r.seed + i))
            owners.append(k)
    if not rows:
        return []
    uncond = [pipe.generation_prompt([])] * len(rows)
    codes = []
    for a in range(0, len(rows), pipe.batch_size):
        b = a + pipe.batch_size
        codes.append(pipe.engine.generate_images(rows[a:b], pipe.num_image_tokens, uncond=uncond[a:b],
                                                 guidance_scale=scales[a:b], sampling=samplings[a:b]))
    images = pipe.decode_codes(torch.cat(codes))
    owners_array = np.asarray(owners)
    return [images[owners_array == k] for k in range(len(requests))]


@contextmanager
def local_server(bento: str, env: dict | None = None, timeout: float = 180.0, log=None):
    """`bentoml serve <bento>` on a free loopback port, yielding its URL once /readyz answers; stopped
    with all its workers (own process group) on exit. For smoke tests and benchmarks.

        with local_server("arm:latest") as url: httpx.post(f"{url}/generate", json={"prompt": "a red circle"})
    """
    import os
    import subprocess

    from arm.processes import executable, free_port, stop_group, wait_until_ready

    port = free_port()
    proc = subprocess.Popen([executable("bentoml"), "serve", bento, "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{url}/readyz", proc, timeout,
                         f"bentoml serve {bento} (is the Bento built? `arm package`, `bentoml list`)")
        yield url, proc
    finally:
        stop_group(proc)
