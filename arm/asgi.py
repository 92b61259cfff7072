"""Plain ASGI middlewares the Bento's services run behind (bentos/service.py), checked before BentoML
parses a request: they refuse pickle bodies, bound the request body, and shed load past a concurrency
limit with 503 and Retry-After. No framework, so they are tested directly with a toy app.

Every refusal is JSON `{"error": ...}` naming what to change, as the services' own 400s are.
"""

from __future__ import annotations

import json
import math
import time

PICKLE_MEDIA_TYPE = "application/vnd.bentoml+pickle"


async def send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})


def header(scope, name: bytes) -> str | None:
    """A request header's value (the first), or None."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RefusePickle:
    """415 for pickle bodies. BentoML deserialises `application/vnd.bentoml+pickle` with pickle.loads,
    which runs any code the body names; it refuses it only on the entry service, while every other
    service of a Bento listens on a local socket and takes it (CVE-2025-27520 was this on the entry
    service). Ours talk JSON to each other, so nothing of ours needs pickle."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and "pickle" in (header(scope, b"content-type") or "").lower():
            return await send_json(send, 415, {"error": f"{PICKLE_MEDIA_TYPE} bodies are refused; send JSON "
                                                        "(or multipart for uploads)"})
        return await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    pass


class LimitBody:
    """413 for a request body over `max_bytes`: at once when Content-Length says so, else as soon as
    the bytes received pass it (chunked uploads), so no request makes the server hold or parse more."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def refusal(self, size: str) -> dict:
        return {"error": f"the request body is {size}; send at most {self.max_bytes:,} bytes (one image of at most "
                         f"{self.max_bytes // 2**20} MB and its fields)"}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = header(scope, b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            return await send_json(send, 413, self.refusal(f"{int(declared):,} bytes"))
        received, too_large, answered = 0, False, False

        async def counting_receive():
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message):
            nonlocal answered
            if too_large:  # the app's answer to BodyTooLarge (BentoML's 500) becomes our 413
                if message["type"] == "http.response.start" and not answered:
                    answered = True
                    await send_json(send, 413, self.refusal(f"over {self.max_bytes:,} bytes"))
                return
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            pass
        if too_large and not answered:
            await send_json(send, 413, self.refusal(f"over {self.max_bytes:,} bytes"))


class LimitConcurrency:
    """503 with Retry-After for a request to `paths` beyond `max_concurrency` in flight, instead of
    queueing without bound; every other 503 the app answers (the model service unreachable) gets the
    same Retry-After. Retry-After is the recent mean request time, rounded up, 1 to 60 seconds.
    One worker's event loop runs this, so a plain counter is exact."""

    def __init__(self, app, max_concurrency: int, paths: frozenset[str] | set[str]) -> None:
        self.app, self.max_concurrency, self.paths = app, max_concurrency, frozenset(paths)
        self.in_flight = 0
        self.mean_seconds = 1.0

    def retry_after(self) -> int:
        return min(60, max(1, math.ceil(self.mean_seconds)))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        retry_after = [(b"retry-after", str(self.retry_after()).encode())]
        if self.in_flight >= self.max_concurrency:
            return await send_json(send, 503, {"error": f"the server is busy ({self.max_concurrency} requests in "
                                                        f"progress); retry after {self.retry_after()} s"}, retry_after)

        async def send_with_retry_after(message):
            if message["type"] == "http.response.start" and message["status"] == 503:
                names = {key.lower() for key, _ in message.get("headers", ())}
                if b"retry-after" not in names:
                    message = {**message, "headers": [*message.get("headers", ()), *retry_after]}
            await send(message)

        self.in_flight += 1
        started = time.monotonic()
        try:
            await self.app(scope, receive, send_with_retry_after)
        finally:
            self.in_flight -= 1
            self.mean_seconds = 0.9 * self.mean_seconds + 0.1 * (time.monotonic() - started)
