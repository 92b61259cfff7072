"""The arm Bento: understanding, generation and editing over HTTP.

Two services, BentoDiffusion's shape:
- `ARM` (the entry point) takes requests, checks every argument and image (HTTP 400 with what to change,
  never a 5xx) and awaits the model service, so the event loop never runs a forward;
- `ARMModel` holds the model (loaded once per worker by tag from the BentoML model store, CUDA when
  there is a GPU, else CPU), checks what it is sent again (token counts included: only it has the
  tokenizer) and batches concurrent generation requests adaptively into one forward.

The two talk JSON; both refuse pickle bodies, bound request bodies, and `ARM` answers 503 with
Retry-After past ARM_MAX_CONCURRENCY requests in flight (arm/asgi.py). docs/serving.md lists what is
refused and how.

    bentoml serve bentos.service:ARM                       # from the repository root, after `arm package`
    curl -X POST localhost:3000/generate -H 'content-type: application/json' \
         -d '{"prompt": "a large red circle at the center"}' -o out.png

The model tag defaults to `arm-unified:latest`; set ARM_MODEL_TAG to serve another version.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Optional

import bentoml
from annotated_types import Ge, Le
from PIL import Image

from arm.asgi import LimitBody, LimitConcurrency, RefusePickle
from arm.serving import (MAX_REQUEST_BYTES, GenerationRequest, ModelThread, RequestError, check_edit, check_generation,
                         check_text, check_tokens, check_upload_size, from_base64, generate_batch, read_image, to_png)

MODEL_TAG = os.environ.get("ARM_MODEL_TAG", "arm-unified:latest")
MAX_BATCH = int(os.environ.get("ARM_MAX_BATCH", "32"))  # 1 turns adaptive batching off (benchmarks/serve.py)
# Requests `ARM` works on at once; past it, 503 with Retry-After rather than an unbounded queue. One full
# adaptive batch: a request beyond it would wait a whole forward anyway.
MAX_CONCURRENCY = int(os.environ.get("ARM_MAX_CONCURRENCY", "32"))
# ARM_COMPILE=1: decoding steps through torch.compile (docs/serving.md: faster steps, and each new batch
# size compiles once, tens of seconds on a CPU, inside the first request that meets it).
COMPILE = os.environ.get("ARM_COMPILE", "0") == "1"
API_PATHS = frozenset({"/generate", "/edit", "/understand"})

logger = logging.getLogger(__name__)


def _png_b64(image) -> str:
    buffer = io.BytesIO()
    to_png(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _from_b64(text: str):
    """The model service's own PNGs (trusted) -> (S, S, 3) uint8."""
    import numpy as np

    from arm.images import to_rgb

    return np.asarray(to_rgb(Image.open(io.BytesIO(base64.b64decode(text)))))


def _strip(images: list) -> Image.Image:
    """Several images side by side in one PNG."""
    from arm.images import make_grid

    return make_grid(images, columns=len(images), pad=0) if len(images) > 1 else to_png(images[0])


def _bad_request(error: Exception) -> bentoml.exceptions.InvalidArgument:
    return bentoml.exceptions.InvalidArgument(str(error))


def _outcome(result) -> dict:
    """One generation request's outcome, as the model service answers it."""
    if isinstance(result, RequestError):
        return {"error": str(result), "status": 400}
    if isinstance(result, Exception):  # logged with its traceback by generate_batch
        return {"error": "generation failed for this request; the server log has the cause", "status": 500}
    return {"images": [_png_b64(image) for image in result]}


@bentoml.service(name="arm-model", workers=1, traffic={"timeout": 600, "concurrency": 64},
                 resources={"cpu": "2"})
class ARMModel:
    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        import torch

        from arm.pipeline import Pipeline

        device = "cuda" if torch.cuda.is_available() else "cpu"
        folder = Path(self.model_ref.path)
        # Loading and every forward on one thread (ModelThread: two threads' OpenMP teams on the same
        # cores made a request 2.3x slower); the APIs are async and await it, so BentoML runs none of
        # them on its own threads.
        self.model_thread = ModelThread()
        self.pipe = self.model_thread.call(Pipeline.load, folder / "model", folder / "tokenizer", device=device,
                                           batch_size=64, compile=COMPILE)
        self.image_size = self.pipe.image_size

    @bentoml.api(batchable=True, max_batch_size=max(2, MAX_BATCH), max_latency_ms=300_000)
    async def generate_batch(self, requests: list[dict]) -> list[dict]:
        """Requests (GenerationRequest fields) -> per request {"images": [base64 PNG, ...]} or {"error": ...,
        "status": 400 or 500}: a request that fails its checks or breaks the forward fails alone."""
        return await self.model_thread.run(self._generate_batch, requests)

    def _generate_batch(self, requests: list[dict]) -> list[dict]:
        if MAX_BATCH == 1:  # batching off: one forward per request
            return [_outcome(generate_batch(self.pipe, [r])[0]) for r in requests]
        return [_outcome(result) for result in generate_batch(self.pipe, requests)]

    @bentoml.api
    async def edit_one(self, image_png: str, instruction: str, text_guidance: float | None,
                       image_guidance: float | None, seed: int) -> str:
        """None: the model's own guidance (its sampling.json)."""
        return await self.model_thread.run(self._edit_one, image_png, instruction, text_guidance, image_guidance, seed)

    def _edit_one(self, image_png: str, instruction: str, text_guidance: float | None, image_guidance: float | None,
                  seed: int) -> str:
        try:
            instruction = check_edit(instruction, text_guidance, image_guidance, seed)
            check_tokens(self.pipe, instruction, "instruction", "edit")
            source = read_image(from_base64(image_png), self.image_size)
        except RequestError as e:
            raise _bad_request(e)
        sampling = self.pipe.sampling.overridden(edit_guidance=text_guidance, edit_image_guidance=image_guidance)
        edited = self.pipe.edit(source[None], [instruction], seed, sampling)
        return _png_b64(edited[0])

    @bentoml.api
    async def understand_one(self, image_png: str, question: str) -> dict:
        return await self.model_thread.run(self._understand_one, image_png, question)

    def _understand_one(self, image_png: str, question: str) -> dict:
        try:
            question = check_text(question, "question")
            check_tokens(self.pipe, question, "question", "understand")
            source = read_image(from_base64(image_png), self.image_size)
        except RequestError as e:
            raise _bad_request(e)
        answer, description = self.pipe.explain(source[None], [question])[0]
        return {"answer": answer, "description": description}

    @bentoml.api
    def image_size_px(self) -> int:
        return self.image_size


def connection_dropped(error: Exception) -> bool:
    """Whether a model service call failed because its connection dropped: BentoML's client between
    services is aiohttp, which raises ClientConnectionError (ServerDisconnectedError, ClientOSError...)
    when the server goes away, and ClientPayloadError when it goes away mid-answer. Timeouts are not
    retried: the call already waited the service's whole timeout."""
    import aiohttp

    if isinstance(error, aiohttp.ServerTimeoutError):
        return False
    return isinstance(error, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError))


async def call_with_retry(call, *args, attempts: int = 3):
    """Call the model service, again if the connection drops before an answer: a model worker that dies
    is restarted, and a pooled connection can be closed just as it is reused ("Server disconnected").
    Every call here is idempotent (seeded), so repeating it is safe."""
    import asyncio

    for attempt in range(attempts):
        try:
            return await call(*args)
        except Exception as e:
            if not connection_dropped(e):
                raise
            logger.warning("the model service dropped a call (%s: %s); attempt %d of %d", type(e).__name__, e,
                           attempt + 1, attempts)
            if attempt == attempts - 1:
                raise bentoml.exceptions.ServiceUnavailable("the model service dropped the connection; retry") from e
            await asyncio.sleep(0.05 * (attempt + 1))


def _model_error(error: bentoml.exceptions.BentoMLException) -> str:
    """The message of the model service's 400 (its body, `[{"error": ...}]` or `{"error": ...}`)."""
    try:
        body = json.loads(str(error))
    except ValueError:
        return str(error)
    if isinstance(body, list) and body:
        body = body[0]
    return str(body.get("error", body)) if isinstance(body, dict) else str(body)


@bentoml.service(name="arm", workers=1, traffic={"timeout": 600, "concurrency": 64})
class ARM:
    # JSON between the services. BentoML calls a served dependency with pickle bodies, which the model
    # service refuses (RefusePickle); a dependency given by URL it calls with JSON. A worker knows the URL
    # when it imports this file (BentoML sets its map of served services first); elsewhere (`bentoml serve`
    # planning its processes, `bentoml build`) it is None and this is the plain dependency that makes
    # `bentoml serve` start ARMModel.
    model = bentoml.depends(ARMModel, url=ARMModel.url)

    def __init__(self) -> None:
        self._image_size: int | None = None

    async def _call_model(self, method: str, *args):
        """A model service call. Its 400s are the client's (the model service checks its inputs again,
        token counts included), passed on with their message."""
        try:
            return await call_with_retry(getattr(self.model.to_async, method), *args)
        except bentoml.exceptions.BentoMLException as e:
            if e.error_code == HTTPStatus.BAD_REQUEST:
                raise _bad_request(RequestError(_model_error(e)))
            raise

    async def _size(self) -> int:
        if self._image_size is None:
            self._image_size = await self._call_model("image_size_px")
        return self._image_size

    async def _read(self, image: Path) -> str:
        """An uploaded file -> the model's input size, as base64 PNG: the upload is checked and shrunk here,
        so the model service receives (and checks again) a small PNG."""
        try:
            check_upload_size(Path(image).stat().st_size)  # before reading a byte of it
            data = Path(image).read_bytes()
        except OSError as e:
            raise _bad_request(RequestError(f"cannot read the uploaded image ({e}); upload a PNG, JPEG or WebP file"))
        except RequestError as e:
            raise _bad_request(e)
        try:
            return _png_b64(read_image(data, await self._size()))
        except RequestError as e:
            raise _bad_request(e)

    @bentoml.api
    async def generate(
        self,
        prompt: str = "a large red circle at the center",
        # Sampling left out (null) is the served model's own, its sampling.json: as `arm generate` samples.
        num_images: Annotated[int, Ge(1), Le(8)] = GenerationRequest.num_images,
        guidance_scale: Optional[Annotated[float, Ge(0), Le(20)]] = None,
        temperature: Optional[Annotated[float, Ge(0), Le(5)]] = None,
        top_k: Optional[Annotated[int, Ge(0), Le(100_000)]] = None,
        seed: Annotated[int, Ge(0), Le(2**31 - 1)] = GenerationRequest.seed,
    ) -> Image.Image:
        """Text -> PNG (several images side by side when num_images > 1). The same seed gives the same
        images, whatever else the server is doing."""
        try:
            request = check_generation(GenerationRequest(prompt, num_images, guidance_scale, temperature, top_k, seed))
        except RequestError as e:
            raise _bad_request(e)
        (outcome,) = await self._call_model("generate_batch", [request.__dict__])
        if "error" in outcome:
            if outcome.get("status") == 400:
                raise _bad_request(RequestError(outcome["error"]))
            raise bentoml.exceptions.InternalServerError(outcome["error"])
        return _strip([_from_b64(b) for b in outcome["images"]])

    @bentoml.api
    async def edit(
        self,
        image: Path,
        instruction: str = "make the circle blue",
        text_guidance: Optional[Annotated[float, Ge(0), Le(20)]] = None,   # null: the model's own
        image_guidance: Optional[Annotated[float, Ge(0), Le(20)]] = None,
        seed: Annotated[int, Ge(0), Le(2**31 - 1)] = 0,
    ) -> Image.Image:
        """Source image + instruction -> edited PNG (at the model's image size)."""
        try:
            instruction = check_edit(instruction, text_guidance, image_guidance, seed)
        except RequestError as e:
            raise _bad_request(e)
        source = await self._read(image)
        edited = await self._call_model("edit_one", source, instruction, text_guidance, image_guidance, seed)
        return to_png(_from_b64(edited))

    @bentoml.api
    async def understand(self, image: Path, question: str = "what color is the circle?") -> dict:
        """Image + question -> {"answer": ..., "description": ...}: a describe-first model's own
        description of the image, which it answered after (null for a model that answers directly)."""
        try:
            question = check_text(question, "question")
        except RequestError as e:
            raise _bad_request(e)
        source = await self._read(image)
        return await self._call_model("understand_one", source, question)


# Outermost first: cheap refusals before anything counts or parses the request.
for _service in (ARMModel, ARM):
    _service.add_asgi_middleware(RefusePickle)
    _service.add_asgi_middleware(LimitBody, max_bytes=MAX_REQUEST_BYTES)
ARM.add_asgi_middleware(LimitConcurrency, max_concurrency=MAX_CONCURRENCY, paths=API_PATHS)
