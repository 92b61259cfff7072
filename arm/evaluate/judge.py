"""A vision-language judge reached over an OpenAI-compatible chat-completions API (vLLM, SGLang, a hosted
model): the image goes inline as a data URL, the reply must be a JSON object with the asked-for scores.

A timeout, an HTTP error or a malformed reply is retried; after the last try the sample is recorded as a
judge error with the reason, counted in the results, and left out of every mean: never scored as zero.

    judge = Judge(JudgeConfig(base_url="http://localhost:8000/v1", model="Qwen2.5-VL-72B-Instruct"))
    scores = judge.score([image], "Rate ...", keys=("consistency", "realism"), scale=(0, 2))
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass

import numpy as np

from arm.evaluate.report import png_data_uri


@dataclass
class JudgeConfig:
    base_url: str | None = None      # e.g. http://localhost:8000/v1 ; else $ARM_JUDGE_BASE_URL
    model: str | None = None         # pinned in every report ; else $ARM_JUDGE_MODEL
    api_key: str | None = None       # else $ARM_JUDGE_API_KEY (may be empty for a local server)
    timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 1.0

    def resolved(self) -> "JudgeConfig":
        base_url = self.base_url or os.environ.get("ARM_JUDGE_BASE_URL")
        model = self.model or os.environ.get("ARM_JUDGE_MODEL")
        if not base_url or not model:
            raise ValueError("no judge configured: set evaluate.judge_base_url and evaluate.judge_model (or "
                             "ARM_JUDGE_BASE_URL and ARM_JUDGE_MODEL) to an OpenAI-compatible chat endpoint")
        return JudgeConfig(base_url.rstrip("/"), model, self.api_key or os.environ.get("ARM_JUDGE_API_KEY", ""),
                           self.timeout_s, self.retries, self.backoff_s)


class JudgeError(RuntimeError):
    pass


@dataclass
class Verdict:
    scores: dict[str, float] | None   # None when the judge failed
    error: str | None = None
    attempts: int = 1


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_scores(text: str, keys: tuple[str, ...], scale: tuple[float, float]) -> dict[str, float]:
    """The first JSON object in the reply (models often wrap it in prose or a code fence), with every key
    present and numeric within the scale."""
    match = _JSON_OBJECT.search(text or "")
    if not match:
        raise JudgeError(f"no JSON object in the reply: {text[:200]!r}")
    try:
        obj = json.loads(match.group(0))
    except json.JSONDecodeError as e:
        raise JudgeError(f"reply is not valid JSON ({e}): {match.group(0)[:200]!r}") from e
    out = {}
    for key in keys:
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise JudgeError(f"reply lacks a numeric {key!r}: {obj}")
        if not scale[0] <= value <= scale[1]:
            raise JudgeError(f"{key}={value} is outside {scale[0]} to {scale[1]}")
        out[key] = float(value)
    return out


class Judge:
    def __init__(self, config: JudgeConfig):
        import httpx

        self.config = config.resolved()
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        self.client = httpx.Client(base_url=self.config.base_url, headers=headers, timeout=self.config.timeout_s)

    @property
    def model(self) -> str:
        return self.config.model

    def score(self, images: list[np.ndarray], instruction: str, keys: tuple[str, ...],
              scale: tuple[float, float]) -> Verdict:
        """Our own rubric: the images, then `instruction` asking for a JSON object of `keys` on `scale`."""
        text = (instruction + "\nAnswer with only a JSON object with the keys " + ", ".join(keys)
                + f", each a number from {scale[0]:g} to {scale[1]:g}.")
        return self.ask(text, images, lambda reply: parse_scores(reply, keys, scale), text_first=False)

    def ask(self, text: str, images: list[np.ndarray], parse, system: str | None = None, text_first: bool = False,
            max_tokens: int | None = None) -> Verdict:
        """One chat request with `text` and `images` (in the order a benchmark's own script sends them),
        its reply turned into scores by `parse` (which raises JudgeError on a reply it cannot read);
        retried as the config says, and a Verdict with the last error when every try failed."""
        import httpx

        parts = [{"type": "image_url", "image_url": {"url": png_data_uri(im)}} for im in images]
        content = ([{"type": "text", "text": text}] + parts) if text_first else (parts + [{"type": "text", "text": text}])
        messages = ([{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []) + [
            {"role": "user", "content": content}]
        body = {"model": self.config.model, "temperature": 0.0, "messages": messages}
        if max_tokens:
            body["max_tokens"] = max_tokens
        error = ""
        for attempt in range(1, self.config.retries + 1):
            try:
                response = self.client.post("/chat/completions", json=body)
                response.raise_for_status()
                reply = response.json()["choices"][0]["message"]["content"]
                return Verdict(parse(reply), attempts=attempt)
            except (httpx.HTTPError, JudgeError, KeyError, IndexError, TypeError, ValueError) as e:
                error = f"{type(e).__name__}: {e}"
                if attempt < self.config.retries:
                    time.sleep(self.config.backoff_s * attempt)
        return Verdict(None, error=error, attempts=self.config.retries)

    def close(self) -> None:
        self.client.close()
