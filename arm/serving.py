"""What the Bento service does besides BentoML: check requests, read and write images, and run many
unrelated generation requests as one batched forward. Framework-free, so it is tested directly and the
service file stays a thin shell.

Every bad input raises `RequestError` with a message that says what to change; the service turns it
into HTTP 400. Both services check: the entry service before it forwards a request, the model service
again on what it receives, as it trusts no caller.

>>> check_text("  a red circle ", "prompt", max_chars=200)
'a red circle'
>>> check_range(9.0, "guidance_scale", 0.0, 20.0)
9.0
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

import numpy as np

MAX_IMAGE_BYTES = 10 * 1024 * 1024   # what a request may upload
MAX_REQUEST_BYTES = MAX_IMAGE_BYTES + 64 * 1024   # a whole request body: one image and its form fields
MAX_IMAGE_SIDE = 4096                 # larger images are refused, not resized (decompression bombs)
MAX_TEXT_CHARS = 500
MAX_IMAGES_PER_REQUEST = 8
MAX_ANSWER_TOKENS = 64                # what /understand lets the model write (`Pipeline.explain`'s default)
# The formats the service reads, by Pillow's name -> the name users know. Anything else is refused by
# name before Pillow parses more than its first bytes: fewer decoders facing the network.
ACCEPTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP"}
ACCEPTED = "a PNG, JPEG or WebP file"

logger = logging.getLogger(__name__)


class RequestError(ValueError):
    """A client's mistake; the message names the fix."""


# --- text and numbers ----------------------------------------------------------------------------------


def check_text(text: str, name: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    if not isinstance(text, str):
        raise RequestError(f"{name} must be a string")
    stripped = text.strip()
    if not stripped:
        raise RequestError(f"{name} is empty; give a non-empty {name}")
    if len(stripped) > max_chars:
        raise RequestError(f"{name} has {len(stripped)} characters; shorten it to at most {max_chars}")
    try:
        stripped.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate ("\\ud800" in JSON): no tokenizer can read it
        raise RequestError(f"{name} is not valid Unicode (character {e.start} is a lone surrogate); "
                           "send UTF-8 text") from e
    return stripped


def check_range(value: float, name: str, low: float, high: float) -> float:
    if (value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value)
            or not low <= value <= high):
        raise RequestError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")
    return value


def check_integer(value: int, name: str, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RequestError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return value


def check_tokens(pipe, text: str, name: str, task: str) -> list[int]:
    """`text`'s token ids, if the whole request fits the model's positions (prompt and what the model
    writes after it); characters alone do not bound this: a symbol the tokenizer never saw costs a
    token per byte, so 500 emoji are 2,000 tokens."""
    ids = pipe.text_ids(text)
    needed, limit = pipe.positions_needed(task, ids, MAX_ANSWER_TOKENS), pipe.max_positions
    if needed > limit:
        room = max(0, limit - (needed - len(ids)))
        raise RequestError(f"{name} is {len(ids)} tokens; with the rest of the request it needs {needed} of the "
                           f"model's {limit} positions: shorten it to at most {room} tokens (unusual symbols "
                           "and emoji take several tokens each)")
    return ids


# --- images --------------------------------------------------------------------------------------------


def read_image(data: bytes, size: int, max_bytes: int = MAX_IMAGE_BYTES, max_side: int = MAX_IMAGE_SIDE) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG or WebP) -> (size, size, 3) uint8 RGB at the model's input size, as
    `arm prepare` makes training images (`arm.images.square_rgb`). Whatever Pillow refuses is a
    `RequestError` naming the problem: other formats, oversized or zero-sized images, decompression
    bombs, metadata that inflates past Pillow's limits, damaged and truncated files."""
    check_upload_size(len(data), max_bytes)
    image_format = sniff_format(data)
    image = open_image(data, image_format, max_side)
    return decode_image(image, image_format, size)


def check_upload_size(n_bytes: int, max_bytes: int = MAX_IMAGE_BYTES) -> None:
    if n_bytes == 0:
        raise RequestError(f"the image is empty; upload {ACCEPTED}")
    if n_bytes > max_bytes:
        raise RequestError(f"the image is {n_bytes:,} bytes; upload at most {max_bytes:,} bytes")


def sniff_format(data: bytes) -> str:
    """The format `data` starts as, by Pillow's own signature checks on its first 16 bytes (nothing is
    parsed); a format outside ACCEPTED_FORMATS is refused by name."""
    from PIL import Image

    Image.init()
    prefix = data[:16]

    def claims(name: str) -> bool:
        accept = Image.OPEN[name][1]
        try:
            answer = accept(prefix) if accept else False  # a plugin without a check claims every file: ignore it
        except Exception:  # some checks unpack more bytes than a tiny file has; Pillow's own open ignores that too
            return False
        return bool(answer) and not isinstance(answer, str)

    for name in ACCEPTED_FORMATS:
        if claims(name):
            return name
    other = next((name for name in Image.ID if name in Image.OPEN and claims(name)), None)
    if other:
        raise RequestError(f"{other} images are not accepted; convert it to {ACCEPTED}")
    raise RequestError(f"cannot decode the upload: its first bytes are not those of an image; upload {ACCEPTED}")


def open_image(data: bytes, image_format: str, max_side: int = MAX_IMAGE_SIDE):
    """Pillow's lazy open (the header only) of a sniffed format, its size checked before any pixel is
    decoded. A PNG's size is read from its header first, so even sizes Pillow refuses outright (a
    decompression bomb, a width of 0) are named."""
    from PIL import Image, UnidentifiedImageError

    if image_format == "PNG" and data[12:16] == b"IHDR":
        check_dimensions(int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), max_side)
    try:
        image = Image.open(io.BytesIO(data), formats=[image_format])
    except Image.DecompressionBombError as e:
        raise RequestError(f"the image is too large to decode ({e}); upload at most {max_side} x {max_side} "
                           "pixels") from e
    except UnidentifiedImageError as e:  # its signature is right, the header after it is not
        raise RequestError(f"the {ACCEPTED_FORMATS[image_format]} file's header is damaged; re-save it") from e
    except Exception as e:  # Pillow raises SyntaxError, ValueError, TypeError, struct.error...: all the file's fault
        raise RequestError(damaged(image_format, e)) from e
    check_dimensions(*image.size, max_side)
    return image


def check_dimensions(width: int, height: int, max_side: int = MAX_IMAGE_SIDE) -> None:
    if min(width, height) < 1:
        raise RequestError(f"the image header says {width} x {height} pixels; an image needs at least 1 x 1: "
                           "re-save it")
    if max(width, height) > max_side:
        raise RequestError(f"the image is {width} x {height} pixels; upload at most {max_side} x {max_side} "
                           "(shrink it first)")


def decode_image(image, image_format: str, size: int) -> np.ndarray:
    from arm.images import square_rgb

    try:
        image.load()  # decodes now: a truncated file fails here, not later inside the model
        # As training saw its images: oriented, transparency on white, centre-cropped, never stretched.
        return square_rgb(image, size)
    except Exception as e:  # whatever decoding client bytes raises is about those bytes
        raise RequestError(damaged(image_format, e)) from e


def damaged(image_format: str, error: Exception) -> str:
    """The message for a file Pillow could not read, naming its cause."""
    if "MAX_TEXT" in str(error):  # PngImagePlugin's limits on zTXt, iTXt and iCCP chunks
        return (f"the image's metadata (a compressed text or colour-profile chunk) inflates past Pillow's safety "
                f"limit ({error}); re-save it without metadata")
    name = ACCEPTED_FORMATS.get(image_format, image_format)
    return f"the {name} file is damaged or truncated ({type(error).__name__}: {error}); upload the whole file"


def from_base64(text: str, name: str = "image") -> bytes:
    """How the model service receives images from the entry service; refused if not base64."""
    if not isinstance(text, str):
        raise RequestError(f"{name} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(f"{name} is not valid base64 ({e}); send the image's bytes base64-encoded") from e


def to_png(image: np.ndarray):
    """(S, S, 3) uint8 -> PIL image (BentoML sends it as PNG)."""
    from PIL import Image

    return Image.fromarray(np.asarray(image, dtype=np.uint8))


# --- requests ------------------------------------------------------------------------------------------


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
    num_images = check_integer(r.num_images, "num_images", 1, max_images)
    seed = check_integer(r.seed, "seed", 0, 2**31 - 1)
    for value, name, low, high in ((r.guidance_scale, "guidance_scale", 0.0, 20.0),
                                   (r.temperature, "temperature", 0.0, 5.0)):
        if value is not None:
            check_range(value, name, low, high)
    top_k = None if r.top_k is None else check_integer(r.top_k, "top_k", 0, 100_000)
    return GenerationRequest(check_text(r.prompt, "prompt"), num_images,
                             None if r.guidance_scale is None else float(r.guidance_scale),
                             None if r.temperature is None else float(r.temperature), top_k, seed)


def generation_request(values) -> GenerationRequest:
    """A generation request as the model service receives it (a JSON object), checked in full."""
    if isinstance(values, GenerationRequest):
        values = asdict(values)
    known = [f.name for f in fields(GenerationRequest)]
    if not isinstance(values, dict):
        raise RequestError(f"a generation request must be an object with the fields {known}")
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise RequestError(f"unknown fields {unknown}; a generation request takes {known}")
    if "prompt" not in values:
        raise RequestError("prompt is missing; give the text to draw")
    return check_generation(GenerationRequest(**values))


def check_edit(instruction: str, text_guidance: float | None, image_guidance: float | None, seed: int) -> str:
    """An /edit request's arguments besides the image -> the instruction, stripped."""
    for value, name in ((text_guidance, "text_guidance"), (image_guidance, "image_guidance")):
        if value is not None:
            check_range(value, name, 0, 20)
    check_integer(seed, "seed", 0, 2**31 - 1)
    return check_text(instruction, "instruction")


# --- batched generation --------------------------------------------------------------------------------


def generate_batch(pipe, requests: list) -> list:
    """Many requests (GenerationRequest or its fields as a dict), one batched forward (guided rows
    included) -> per request, its (num_images, S, S, 3) uint8 images or the exception it alone caused.

    Each request is checked here, token count included, and one that fails its checks is answered
    alone. If the batched forward itself raises, its requests run one by one, so only the one that
    breaks the model fails. Image i of a request is sampled with seed `seed + i` by its own generator,
    so a request gets the same images whether it ran alone or beside others, and the same as
    `Pipeline.generate([prompt] * n, seed)`."""
    outcomes: list = [None] * len(requests)
    checked = []
    for k, values in enumerate(requests):
        try:
            request = generation_request(values)
            checked.append((k, request, check_tokens(pipe, request.prompt, "prompt", "generate")))
        except RequestError as e:
            outcomes[k] = e
    if not checked:
        return outcomes
    try:
        results = generate_together(pipe, [(r, ids) for _, r, ids in checked])
    except Exception as error:
        logger.exception("a batched forward of %d request(s) failed", len(checked))
        results = [error] if len(checked) == 1 else [generate_alone(pipe, r, ids) for _, r, ids in checked]
    for (k, _, _), result in zip(checked, results):
        outcomes[k] = result
    return outcomes


def generate_alone(pipe, request: GenerationRequest, ids: list[int]):
    """One request's images, or the exception it raised (logged: a request that breaks the model is a bug)."""
    try:
        return generate_together(pipe, [(request, ids)])[0]
    except Exception as e:
        logger.exception("generation failed for one request (prompt %r)", request.prompt[:80])
        return e


def generate_together(pipe, requests: list[tuple[GenerationRequest, list[int]]]) -> list[np.ndarray]:
    """Checked requests and their prompt ids, one batched forward -> per request (num_images, S, S, 3)."""
    import torch

    from arm.pipeline import row_samplings

    rows, scales, samplings, owners = [], [], [], []
    for k, (r, ids) in enumerate(requests):
        prompt = pipe.generation_prompt(ids)
        s = pipe.sampling.overridden(generation_guidance=r.guidance_scale, temperature=r.temperature, top_k=r.top_k)
        rows += [prompt] * r.num_images
        scales += [s.generation_guidance] * r.num_images
        samplings += row_samplings(s, r.seed, 0, r.num_images)  # image i: seed + i, as Pipeline.generate
        owners += [k] * r.num_images
    uncond = [pipe.generation_prompt([])] * len(rows)
    codes = []
    for a in range(0, len(rows), pipe.batch_size):
        b = a + pipe.batch_size
        codes.append(pipe.engine.generate_images(rows[a:b], pipe.num_image_tokens, uncond=uncond[a:b],
                                                 guidance_scale=scales[a:b], sampling=samplings[a:b],
                                                 window=pipe.sampling.jacobi_window))
    images = pipe.decode_codes(torch.cat(codes))
    owners_array = np.asarray(owners)
    return [images[owners_array == k] for k in range(len(requests))]


class ModelThread:
    """One thread for all of a model's work: loading it and every forward.

    On a CPU each thread that calls into torch gets its own OpenMP team of worker threads, and two
    teams on the same cores spin against each other: with the model loaded on one thread and requests
    served on another, a batch-1 generation took 2.3x as long as in a single thread (docs/serving.md).
    One thread also runs one forward at a time, which is what a CPU (or one GPU stream) can do anyway.

    >>> import threading
    >>> worker = ModelThread()
    >>> worker.call(threading.get_ident) == worker.call(threading.get_ident) != threading.get_ident()
    True
    >>> import asyncio; asyncio.run(worker.run(sum, [1, 2, 3]))
    6
    """

    def __init__(self, name: str = "arm-model") -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def call(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) on the model thread, waiting for it (for loading, outside an event loop)."""
        return self._executor.submit(fn, *args, **kwargs).result()

    async def run(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) on the model thread, awaited: the event loop stays free meanwhile."""
        import asyncio

        return await asyncio.wrap_future(self._executor.submit(fn, *args, **kwargs))


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
