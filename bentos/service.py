"""The arm Bento: understanding, generation and editing over HTTP.

Two services, BentoDiffusion's shape:
- `ARM` (the entry point) takes requests, checks every argument and image (HTTP 400 with what to change,
  never a 5xx) and awaits the model service, so the event loop never runs a forward;
- `ARMModel` holds the model (loaded once per worker by tag from the BentoML model store, CUDA when
  there is a GPU, else CPU) and batches concurrent generation requests adaptively into one forward.

    bentoml serve bentos.service:ARM                       # from the repository root, after `arm package`
    curl -X POST localhost:3000/generate -H 'content-type: application/json' \
         -d '{"prompt": "a large red circle at the center"}' -o out.png

The model tag defaults to `arm-unified:latest`; set ARM_MODEL_TAG to serve another version.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Annotated, Optional

import bentoml
from annotated_types import Ge, Le
from PIL import Image

from arm.serving import (GenerationRequest, RequestError, check_generation, check_range, check_text, read_image,
                         to_png)

MODEL_TAG = os.environ.get("ARM_MODEL_TAG", "arm-unified:latest")
MAX_BATCH = int(os.environ.get("ARM_MAX_BATCH", "32"))  # 1 turns adaptive batching off (benchmarks/serve.py)


def _png_b64(image) -> str:
    buffer = io.BytesIO()
    to_png(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _from_b64(text: str):
    import numpy as np

    from arm.images import to_rgb

    return np.asarray(to_rgb(Image.open(io.BytesIO(base64.b64decode(text)))))


def _strip(images: list) -> Image.Image:
    """Several images side by side in one PNG."""
    from arm.images import make_grid

    return make_grid(images, columns=len(images), pad=0) if len(images) > 1 else to_png(images[0])


@bentoml.service(name="arm-model", workers=1, traffic={"timeout": 600, "concurrency": 64},
                 resources={"cpu": "2"})
class ARMModel:
    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        import torch

        from arm.pipeline import Pipeline

        device = "cuda" if torch.cuda.is_available() else "cpu"
        folder = Path(self.model_ref.path)
        self.pipe = Pipeline.load(folder / "model", folder / "tokenizer", device=device, batch_size=64)
        self.image_size = self.pipe.image_size

    @bentoml.api(batchable=True, max_batch_size=max(2, MAX_BATCH), max_latency_ms=300_000)
    def generate_batch(self, requests: list[dict]) -> list[list[str]]:
        """Requests (GenerationRequest fields, already checked) -> base64 PNGs per request."""
        from arm.serving import generate_batch

        if MAX_BATCH == 1:  # batching off: one forward per request
            return [[_png_b64(im) for im in generate_batch(self.pipe, [GenerationRequest(**r)])[0]]
                    for r in requests]
        results = generate_batch(self.pipe, [GenerationRequest(**r) for r in requests])
        return [[_png_b64(im) for im in images] for images in results]

    @bentoml.api
    def edit_one(self, image_png: str, instruction: str, text_guidance: float | None, image_guidance: float | None,
                 seed: int) -> str:
        """None: the model's own guidance (its sampling.json)."""
        sampling = self.pipe.sampling.overridden(edit_guidance=text_guidance, edit_image_guidance=image_guidance)
        edited = self.pipe.edit(_from_b64(image_png)[None], [instruction], seed, sampling)
        return _png_b64(edited[0])

    @bentoml.api
    def understand_one(self, image_png: str, question: str) -> dict:
        answer, description = self.pipe.explain(_from_b64(image_png)[None], [question])[0]
        return {"answer": answer, "description": description}

    @bentoml.api
    def image_size_px(self) -> int:
        return self.image_size


def _bad_request(error: Exception) -> bentoml.exceptions.InvalidArgument:
    return bentoml.exceptions.InvalidArgument(str(error))


async def _with_retry(call, *args, attempts: int = 3):
    """Call the model service, again if the connection drops before an answer. Under load a pooled
    keep-alive connection can be closed by the model server just as it is reused ("Server
    disconnected"); every call here is idempotent (seeded), so repeating it is safe."""
    import asyncio

    import aiohttp

    for attempt in range(attempts):
        try:
            return await call(*args)
        except aiohttp.ClientConnectionError:
            if attempt == attempts - 1:
                raise bentoml.exceptions.ServiceUnavailable("the model service dropped the connection; retry")
            await asyncio.sleep(0.05 * (attempt + 1))


@bentoml.service(name="arm", workers=1, traffic={"timeout": 600, "concurrency": 64})
class ARM:
    model = bentoml.depends(ARMModel)

    def __init__(self) -> None:
        self._image_size: int | None = None

    async def _size(self) -> int:
        if self._image_size is None:
            self._image_size = await _with_retry(self.model.to_async.image_size_px)
        return self._image_size

    async def _read(self, image: Path) -> str:
        """An uploaded file -> the model's input size, as base64 PNG (checked here, decoded once)."""
        try:
            data = Path(image).read_bytes()
        except OSError as e:
            raise _bad_request(RequestError(f"cannot read the uploaded image ({e}); upload a PNG or JPEG file"))
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
        (images,) = await _with_retry(self.model.to_async.generate_batch, [request.__dict__])
        return _strip([_from_b64(b) for b in images])

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
            instruction = check_text(instruction, "instruction")
            for value, name in ((text_guidance, "text_guidance"), (image_guidance, "image_guidance")):
                if value is not None:
                    check_range(value, name, 0, 20)
        except RequestError as e:
            raise _bad_request(e)
        source = await self._read(image)
        edited = await _with_retry(self.model.to_async.edit_one, source, instruction, text_guidance, image_guidance,
                                   seed)
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
        return await _with_retry(self.model.to_async.understand_one, source, question)
