"""One input sample as a reader yields it: the leaf contract between the readers (io, media) and the recipes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


def sample_id(locator: str) -> str:
    """Stable, dot-free id of a sample: 20 hex chars of blake2b over its locator."""
    return hashlib.blake2b(locator.encode("utf-8", "surrogateescape"), digest_size=10).hexdigest()


@dataclass
class SourceItem:
    """One input sample as read: a payload, or an error saying why it could not be read."""

    locator: str
    payload: dict[str, Any] = field(default_factory=dict)
    error: tuple[str, str] | None = None  # (reason, detail)

    @property
    def id(self) -> str:
        return sample_id(self.locator)
