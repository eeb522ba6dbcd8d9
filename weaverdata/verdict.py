"""The answer of every filter: keep, or drop with a short machine-readable reason and a detail.

A leaf module (it imports nothing of weaverdata), so the pure logic of every package can use it
without depending on another package."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""
    detail: str = ""

    @classmethod
    def keep(cls) -> Verdict:
        return cls(True)

    @classmethod
    def drop(cls, reason: str, detail: str = "") -> Verdict:
        return cls(False, reason, detail)
