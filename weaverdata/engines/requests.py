"""What goes into a captioning engine and what comes out, and the key that caches it.

A request is chat messages in OpenAI form whose image parts are `{"type": "image"}`
placeholders, plus the images' bytes in order. Its cache key hashes everything that decides
the output: the messages (images by sha256), the model and revision, the sampling parameters
(seed included) and the prompt's sha256. Same key, same result: a resumed run never pays twice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from weaverdata.config import EngineConfig


@dataclass
class CaptionRequest:
    id: str  # the caller's id (sample id, task, slot ...)
    messages: list[dict[str, Any]]  # [{"role": ..., "content": str | [{"type": "text", "text"} | {"type": "image"}]}]
    images: list[bytes] = field(default_factory=list)
    prompt_sha256: str = ""
    task: str = ""  # prompt name, for format checks and reports
    image_sha256: list[str] = field(default_factory=list)
    regex: str = ""  # constrain the output to this regular expression (vLLM structured outputs); "" = free
    # shorter forms of `messages` (less surrounding context), tried in order when `messages` does
    # not fit the engine's prompt budget (max_model_len - max_tokens); same images, same slots
    shorter: list[list[dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        slots = sum(1 for m in self.messages if isinstance(m["content"], list) for p in m["content"] if p.get("type") == "image")
        if slots != len(self.images):
            raise ValueError(f"request {self.id}: {slots} image parts but {len(self.images)} images")
        if not self.image_sha256:
            self.image_sha256 = [hashlib.sha256(b).hexdigest() for b in self.images]


@dataclass
class CaptionResult:
    id: str
    key: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    image_tokens: int | None  # image placeholder tokens in the prompt (None when the backend cannot tell)
    ok: bool
    reason: str  # "" when ok; else empty | truncated | repetition | refusal | format:* | timeout | image_not_seen | error:*
    detail: str
    attempts: int
    model: str
    prompt_sha256: str
    seed: int

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RawGeneration:
    """What a backend returns for one request attempt, before the output checks."""

    key: str
    text: str = ""
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    image_tokens: int | None = None
    error: str = ""  # a per-request failure (timeout, ...) that is not the model's output: "<reason>:<detail>"
    final: bool = False  # the failure is the request's own (too long, unreadable image): cached, not retried by a rerun


def model_identity(cfg: EngineConfig) -> str:
    return f"{cfg.model}@{cfg.revision or 'local'}"


def sampling_for(cfg: EngineConfig, attempt: int) -> dict[str, Any]:
    """Sampling params of attempt N (0-based): a retry uses another seed."""
    params = cfg.sampling.model_dump()
    params["seed"] = cfg.sampling.seed + 1009 * attempt
    return params


def cache_key(req: CaptionRequest, cfg: EngineConfig) -> str:
    """Key of the first attempt; retries are part of the same cached result."""
    messages = []
    images = iter(req.image_sha256)
    for m in req.messages:
        content = m["content"]
        if isinstance(content, list):
            content = [{"type": "image", "sha256": next(images)} if p.get("type") == "image" else p for p in content]
        messages.append({"role": m["role"], "content": content})
    # the prompt budget decides which form is sent, or that none fits (a cached reject)
    fit = {"max_model_len": cfg.max_model_len, **({"shorter": req.shorter} if req.shorter else {})}
    blob = json.dumps(
        {"messages": messages, "model": model_identity(cfg), "sampling": cfg.sampling.model_dump(), "prompt": req.prompt_sha256, "max_pixels": cfg.max_pixels,
         **({"regex": req.regex} if req.regex else {}), **fit},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()
