"""The captioning engine every recipe uses: one interface over the vLLM, OpenAI and transformers backends.

`Captioner.run(requests)` returns one `CaptionResult` per request id. It:

1. keys every request (`requests.cache_key`) and answers what the result cache already holds;
2. sends each distinct pending key once to the backend, in batches the backend streams back;
3. checks every output (`checks.check_text` plus the task's format check); an output that fails
   is regenerated with another seed up to `retries_on_failed_check` times, then kept as a
   rejected result with its reason; a request whose image never reached the model (no image
   tokens in its prompt, the ray#57978 failure) is rejected as `image_not_seen`;
4. writes final results to the cache as they come, so a killed run loses nothing finished.
"""

from __future__ import annotations

import logging
import time

from weaverdata.config import EngineConfig
from weaverdata.engines.cache import ResultCache
from weaverdata.engines.checks import check_text
from weaverdata.engines.contracts import Backend, EngineUnavailable, FormatCheck  # noqa: F401  (EngineUnavailable re-exported)
from weaverdata.engines.requests import CaptionRequest, CaptionResult, RawGeneration, cache_key, model_identity, sampling_for

log = logging.getLogger(__name__)

def make_backend(cfg: EngineConfig) -> Backend:
    if not cfg.model:
        raise ValueError("engine.model is not set (a hub id or a local path)")
    if cfg.backend == "vllm":
        from weaverdata.engines.vllm_backend import VLLMBackend

        return VLLMBackend(cfg)
    if cfg.backend == "openai":
        from weaverdata.engines.openai_backend import OpenAIBackend

        return OpenAIBackend(cfg)
    from weaverdata.engines.hf_backend import TransformersBackend

    return TransformersBackend(cfg)


class Captioner:
    def __init__(
        self,
        cfg: EngineConfig,
        cache_url: str | None = None,
        format_checks: dict[str, FormatCheck] | None = None,
        backend: Backend | None = None,
        flush_every: int = 64,
        flush_seconds: float = 10.0,
        owns_backend: bool | None = None,
    ):
        self.cfg = cfg
        self.cache = ResultCache(cache_url)
        self.format_checks = format_checks or {}
        self._backend = backend
        # a backend handed in (a job's engines) outlives this captioner, unless it says it owns it
        self._owns_backend = backend is None if owns_backend is None else owns_backend
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.stats = {"requests": 0, "cached": 0, "generated": 0, "retried": 0, "rejected": 0}

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = make_backend(self.cfg)
        return self._backend

    def close(self) -> None:
        """Close the backend if this captioner made it (one it was given belongs to the caller)."""
        if self._backend is not None and self._owns_backend:
            self._backend.close()
            self._backend = None

    def engine_report(self) -> dict:
        """The backend's engine figures (engine_starts, engine_busy_fraction), if it keeps any."""
        report = getattr(self._backend, "report", None)
        return report() if report is not None else {}

    def judge(self, req: CaptionRequest, raw: RawGeneration, attempt: int) -> CaptionResult:
        """Pure: a backend output -> a result that is ok or says why not."""
        reason, detail = "", ""
        if raw.error:
            reason, detail = (raw.error.split(":", 1) + [""])[:2]
        elif req.images and raw.image_tokens is not None and raw.image_tokens < len(req.images):
            reason, detail = "image_not_seen", f"{len(req.images)} images but {raw.image_tokens} image tokens in the prompt"
        else:
            verdict = check_text(raw.text, raw.finish_reason, validate_format=self.format_checks.get(req.task))
            reason, detail = verdict.reason, verdict.detail
        return CaptionResult(
            id=req.id,
            key=raw.key,
            text=raw.text,
            finish_reason=raw.finish_reason,
            prompt_tokens=raw.prompt_tokens,
            completion_tokens=raw.completion_tokens,
            image_tokens=raw.image_tokens,
            ok=not reason,
            reason=reason,
            detail=detail,
            attempts=attempt + 1,
            model=model_identity(self.cfg),
            prompt_sha256=req.prompt_sha256,
            seed=sampling_for(self.cfg, attempt)["seed"],
        )

    def run(self, requests: list[CaptionRequest]) -> dict[str, CaptionResult]:
        """One result per request id; inference runs once per distinct key not already cached."""
        self.stats["requests"] += len(requests)
        keys = {r.id: cache_key(r, self.cfg) for r in requests}
        if len(keys) != len(requests):
            raise ValueError("request ids must be unique")
        first_by_key: dict[str, CaptionRequest] = {}
        for r in requests:
            first_by_key.setdefault(keys[r.id], r)
        pending = [r for k, r in first_by_key.items() if k not in self.cache]
        self.stats["cached"] += len(requests) - sum(1 for r in requests if keys[r.id] not in self.cache)
        transient: dict[str, CaptionResult] = {}
        attempt = 0
        while pending:
            last = attempt >= self.cfg.retries_on_failed_check
            retry: list[CaptionRequest] = []
            buffer: list[CaptionResult] = []
            flushed_at = time.monotonic()
            pkeys = [keys[r.id] for r in pending]
            by_key = dict(zip(pkeys, pending))
            try:
                for raw in self.backend.generate(pending, pkeys, sampling_for(self.cfg, attempt)):
                    req = by_key[raw.key]
                    result = self.judge(req, raw, attempt)
                    self.stats["generated"] += 1
                    if raw.error and not raw.final:  # transient (timeout, lost engine): reported, not cached, retried on the next run
                        transient[raw.key] = result
                    elif raw.error:  # the request's own fault (too long, unreadable image): a final reject, no retry
                        buffer.append(result)
                    elif result.ok or last:
                        buffer.append(result)
                    else:
                        retry.append(req)
                    if len(buffer) >= self.flush_every or time.monotonic() - flushed_at > self.flush_seconds:
                        self.cache.add(buffer)
                        buffer, flushed_at = [], time.monotonic()
            finally:
                self.cache.add(buffer)
            self.stats["retried"] += len(retry)
            pending = retry
            attempt += 1
        out: dict[str, CaptionResult] = {}
        for r in requests:
            k = keys[r.id]
            res = self.cache.get(k) or transient.get(k)
            if res is None:
                raise EngineUnavailable(f"no result for request {r.id}")
            out[r.id] = CaptionResult(**{**res.to_row(), "id": r.id})
            if not res.ok:
                self.stats["rejected"] += 1
        return out
