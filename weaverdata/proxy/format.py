"""Textual proxies: writing, parsing, validating and (when certain) repairing them. Pure.

Inside an assistant turn an image is written as ``<imagine>DESCRIPTION</imagine><BOI>`` (the
three tags are configurable: :class:`Tags`). A text is split into segments, each plain text or
a proxy (:func:`segments`); :func:`check_proxies` says whether every proxy is well formed and
:func:`repair` fixes only what has a single possible fix:

=========================  =====================================================  ============
problem                    example                                                repair
=========================  =====================================================  ============
missing ``<BOI>``          ``<imagine>a cat</imagine> The cat...``                add it
spaces around the text     ``<imagine>  a cat </imagine><BOI>``                   strip
whitespace between tags    ``<imagine>a cat</imagine> <BOI>``                     join
doubled ``<BOI>``          ``...</imagine><BOI><BOI>``                            keep one
unclosed / unopened tag    ``<imagine>a cat. The cat sat``                        none: reject
nested proxy               ``<imagine>a <imagine>cat</imagine>``                  none: reject
empty description          ``<imagine> </imagine><BOI>``                          none: reject
stray ``<BOI>``            ``text <BOI> more``                                    none: reject
placeholder left           ``<image>``, ``<image:2>``, ``[IMAGE]``, ``<|image_pad|>``  none: reject
length out of bounds       description under/over the configured words            none: reject
count mismatch             3 proxies where 4 images were placed                   none: reject
=========================  =====================================================  ============

Reasons are ``proxy_*`` strings (:data:`REASONS`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from weaverdata.verdict import Verdict

REASONS = (
    "proxy_unbalanced",
    "proxy_nested",
    "proxy_empty",
    "proxy_stray_boi",
    "proxy_placeholder_left",
    "proxy_too_short",
    "proxy_too_long",
    "proxy_count",
)

PLACEHOLDERS = re.compile(r"<image(?::\d+)?>|\[IMAGE(?:\s*\d+)?\]|<\|image_pad\|>|<\|vision_start\|>|<\|vision_end\|>|<img>|</img>", re.IGNORECASE)
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Tags:
    open: str = "<imagine>"
    close: str = "</imagine>"
    boi: str = "<BOI>"

    def proxy(self, description: str) -> str:
        return f"{self.open}{description.strip()}{self.close}{self.boi}"

    def as_dict(self) -> dict[str, str]:
        return {"open": self.open, "close": self.close, "boi": self.boi}


@dataclass(frozen=True)
class Segment:
    kind: str  # "text" | "proxy"
    text: str  # the text, or the proxy's description


def segments(text: str, tags: Tags = Tags()) -> list[Segment]:
    """Split well-formed text into text and proxy segments (call :func:`check_proxies` first)."""
    pattern = re.compile(re.escape(tags.open) + r"(.*?)" + re.escape(tags.close) + re.escape(tags.boi), re.DOTALL)
    out: list[Segment] = []
    pos = 0
    for m in pattern.finditer(text):
        if m.start() > pos and text[pos : m.start()].strip():
            out.append(Segment("text", text[pos : m.start()].strip()))
        out.append(Segment("proxy", m.group(1).strip()))
        pos = m.end()
    if text[pos:].strip():
        out.append(Segment("text", text[pos:].strip()))
    return out


def join(segs: list[Segment], tags: Tags = Tags()) -> str:
    """Segments back into text: proxies inline, text segments separated by a space."""
    parts = []
    for s in segs:
        parts.append(tags.proxy(s.text) if s.kind == "proxy" else s.text)
    out = ""
    for p in parts:
        out = p if not out else (out + ("" if out.endswith(tags.boi) and p.startswith(tags.open) else " ") + p)
    return out


def check_proxies(
    text: str,
    tags: Tags = Tags(),
    *,
    min_words: int = 5,
    max_words: int = 160,
    expected: int | None = None,
) -> Verdict:
    """Keep, or drop with the first ``proxy_*`` reason that applies (module doc)."""
    m = PLACEHOLDERS.search(text)
    if m:
        return Verdict.drop("proxy_placeholder_left", f"{m.group(0)!r} at {m.start()}")
    depth, i, count = 0, 0, 0
    tokens = re.compile("|".join(re.escape(t) for t in (tags.open, tags.close, tags.boi)))
    last_close_end = -1
    for tok in tokens.finditer(text):
        t = tok.group(0)
        if t == tags.open:
            if depth:
                return Verdict.drop("proxy_nested", f"{tags.open} inside a proxy at {tok.start()}")
            depth, i = 1, tok.end()
        elif t == tags.close:
            if not depth:
                return Verdict.drop("proxy_unbalanced", f"{tags.close} without {tags.open} at {tok.start()}")
            depth = 0
            description = text[i : tok.start()].strip()
            words = len(_WORD.findall(description))
            if not description:
                return Verdict.drop("proxy_empty", f"empty description at {i}")
            if words < min_words:
                return Verdict.drop("proxy_too_short", f"{words} words < {min_words}")
            if words > max_words:
                return Verdict.drop("proxy_too_long", f"{words} words > {max_words}")
            if not text.startswith(tags.boi, tok.end()):
                return Verdict.drop("proxy_unbalanced", f"no {tags.boi} right after {tags.close} at {tok.end()}")
            last_close_end = tok.end()
            count += 1
        else:  # boi
            if tok.start() != last_close_end:
                return Verdict.drop("proxy_stray_boi", f"{tags.boi} not right after a proxy at {tok.start()}")
    if depth:
        return Verdict.drop("proxy_unbalanced", f"{tags.open} never closed")
    if expected is not None and count != expected:
        return Verdict.drop("proxy_count", f"{count} proxies, {expected} expected")
    return Verdict.keep()


def repair(text: str, tags: Tags = Tags()) -> tuple[str, list[str]]:
    """Apply the certain repairs (module doc); returns the text and what was repaired."""
    fixes: list[str] = []
    o, c, b = re.escape(tags.open), re.escape(tags.close), re.escape(tags.boi)
    new = re.sub(c + r"[ \t]+" + b, tags.close + tags.boi, text)
    if new != text:
        fixes.append("whitespace_before_boi")
    text = new
    new = re.sub(b + r"(?:\s*" + b + r")+", tags.boi, text)
    if new != text:
        fixes.append("doubled_boi")
    text = new
    new = re.sub(c + r"(?!\s*" + b + r")", tags.close + tags.boi, text)
    if new != text:
        fixes.append("missing_boi")
    text = new
    new = re.sub(o + r"\s+(.*?)\s*" + c, lambda m: tags.open + m.group(1) + tags.close, text, flags=re.DOTALL)
    new = re.sub(o + r"(.*?)\s+" + c, lambda m: tags.open + m.group(1) + tags.close, new, flags=re.DOTALL)
    if new != text:
        fixes.append("description_whitespace")
    return new, fixes


def check_or_repair(text: str, tags: Tags = Tags(), **bounds) -> tuple[str, Verdict, list[str]]:
    """The text (whitespace inside descriptions trimmed) when valid; else repaired when the
    certain repairs make it valid; else the original text and its first reason."""
    verdict = check_proxies(text, tags, **bounds)
    if verdict.ok:  # only whitespace inside descriptions can still change
        fixed, fixes = repair(text, tags)
        return fixed, verdict, fixes
    fixed, fixes = repair(text, tags)
    if fixes:
        again = check_proxies(fixed, tags, **bounds)
        if again.ok:
            return fixed, again, fixes
    return text, verdict, []


def shape_of(text: str, tags: Tags = Tags()) -> str:
    """The planner target shape of an assistant turn: ``proxy`` (starts with a proxy), ``text_proxy``
    (text, then ends with a proxy), or ``text`` (ends with text)."""
    segs = segments(text, tags)
    if not segs:
        return "text"
    if segs[0].kind == "proxy" and len(segs) == 1:
        return "proxy"
    if segs[-1].kind == "proxy":
        return "proxy" if all(s.kind == "proxy" for s in segs) else "text_proxy"
    return "text"


def cut_after_proxy(text: str, n: int, tags: Tags = Tags()) -> str:
    """The assistant text up to and including its n-th proxy (1-based): a ``text_proxy`` (or
    ``proxy``) target whose continuation is the next turn."""
    segs = segments(text, tags)
    seen = 0
    for k, s in enumerate(segs):
        if s.kind == "proxy":
            seen += 1
            if seen == n:
                return join(segs[: k + 1], tags)
    raise ValueError(f"the text has {seen} proxies, not {n}")
