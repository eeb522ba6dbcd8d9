"""The OpenAI-compatible backend: any `vllm serve`, SGLang or hosted chat-completions endpoint.

Async with at most `max_concurrency` requests in flight, a per-request timeout, retries with
exponential backoff on connection errors, the key read from an environment variable, images
sent as data URLs. A request that times out comes back as a `timeout` error (a reject for this
run, retried by the next); an endpoint that stops answering ends the run with
`EngineUnavailable` after everything finished so far has been handed back (and cached).
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
from collections.abc import Iterator
from typing import Any

from weaverdata.config import EngineConfig
from weaverdata.engines.requests import CaptionRequest, RawGeneration


def _mime(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:3] == b"GIF":
        return "image/gif"
    return "application/octet-stream"


def to_openai_messages(req: CaptionRequest, max_pixels: int) -> list[dict[str, Any]]:
    """Our messages with {"type": "image"} parts -> OpenAI parts with data URLs (images downsized first)."""
    from weaverdata.engines.vllm_backend import prepared_image

    images = iter(req.images)
    out = []
    for m in req.messages:
        content = m["content"]
        if isinstance(content, list):
            parts = []
            for p in content:
                if p.get("type") == "image":
                    data = next(images)
                    img = prepared_image(data, max_pixels)
                    buf = io.BytesIO()
                    img.save(buf, "PNG")
                    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
                    parts.append({"type": "image_url", "image_url": {"url": url}})
                else:
                    parts.append({"type": "text", "text": p["text"]})
            content = parts
        out.append({"role": m["role"], "content": content})
    return out


class OpenAIBackend:
    name = "openai"

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.ocfg = cfg.openai

    def close(self) -> None:
        pass

    async def _one(self, client, sem: asyncio.Semaphore, req: CaptionRequest, key: str, sampling: dict[str, Any]) -> RawGeneration:
        import openai

        from weaverdata.engines.contracts import EngineUnavailable

        async with sem:
            messages = to_openai_messages(req, self.cfg.max_pixels)
            delay = self.ocfg.backoff_s
            for attempt in range(self.ocfg.max_retries + 1):
                try:
                    resp = await client.chat.completions.create(
                        model=self.ocfg.served_model or self.cfg.model,
                        messages=messages,
                        temperature=sampling["temperature"],
                        top_p=sampling["top_p"],
                        max_tokens=sampling["max_tokens"],
                        seed=sampling["seed"],
                        stop=(sampling.get("stop") or None) if not req.regex else None,
                        extra_body={"repetition_penalty": sampling["repetition_penalty"], **({"structured_outputs": {"regex": req.regex}} if req.regex else {})},
                        timeout=self.ocfg.timeout_s,
                    )
                    choice = resp.choices[0]
                    usage = resp.usage
                    return RawGeneration(
                        key=key,
                        text=choice.message.content or "",
                        finish_reason=choice.finish_reason or "",
                        prompt_tokens=usage.prompt_tokens if usage else 0,
                        completion_tokens=usage.completion_tokens if usage else 0,
                    )
                except openai.APITimeoutError:
                    return RawGeneration(key=key, error=f"timeout:no answer within {self.ocfg.timeout_s} s")
                except openai.APIConnectionError as exc:
                    if attempt == self.ocfg.max_retries:
                        raise EngineUnavailable(f"the endpoint {self.ocfg.base_url} stopped answering: {exc}") from exc
                    await asyncio.sleep(delay)
                    delay *= 2
                except openai.APIStatusError as exc:
                    if exc.status_code >= 500 and attempt < self.ocfg.max_retries:
                        await asyncio.sleep(delay)
                        delay *= 2
                        continue
                    return RawGeneration(key=key, error=f"error:http_{exc.status_code}:{str(exc)[:200]}")
        raise AssertionError("unreachable")

    async def _chunk(self, requests, keys, sampling, done: list[RawGeneration]) -> BaseException | None:
        import openai

        client = openai.AsyncOpenAI(base_url=self.ocfg.base_url, api_key=os.environ.get(self.ocfg.api_key_env) or "EMPTY", max_retries=0)
        sem = asyncio.Semaphore(self.ocfg.max_concurrency)
        tasks = [asyncio.create_task(self._one(client, sem, r, k, sampling)) for r, k in zip(requests, keys)]
        failure: BaseException | None = None
        try:
            for fut in asyncio.as_completed(tasks):
                try:
                    done.append(await fut)
                except BaseException as exc:  # EngineUnavailable: stop the rest, keep what finished
                    failure = exc
                    break
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for t in tasks:  # results that finished while we were stopping are kept too
                if t.done() and not t.cancelled() and t.exception() is None and t.result() not in done:
                    done.append(t.result())
            await client.close()
        return failure

    def generate(self, requests: list[CaptionRequest], keys: list[str], sampling: dict) -> Iterator[RawGeneration]:
        chunk = self.ocfg.max_concurrency * 4
        for start in range(0, len(requests), chunk):
            done: list[RawGeneration] = []
            failure = asyncio.run(self._chunk(requests[start : start + chunk], keys[start : start + chunk], sampling, done))
            yield from done
            if failure is not None:
                raise failure
