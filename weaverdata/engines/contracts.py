"""What every captioning backend is, and how one says it stopped: the engines' leaf contracts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from weaverdata.engines.requests import CaptionRequest, RawGeneration

FormatCheck = Callable[[str], "str | None"]


class EngineUnavailable(RuntimeError):
    """The engine stopped answering (a dead server, a crashed engine); finished results are cached."""


class Backend(Protocol):
    name: str

    def generate(self, requests: list[CaptionRequest], keys: list[str], sampling: dict) -> Iterator[RawGeneration]:
        """Yield one RawGeneration per request (any order), as they finish."""

    def close(self) -> None:
        """Release the engines; a backend may be used for many runs (rounds, retries) before this."""
