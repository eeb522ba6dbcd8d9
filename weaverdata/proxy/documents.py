"""Interleaved web documents: parse them into text and image items, and filter them. Pure.

Readers of one document each (the recipe maps them over rows or files):

* :func:`from_obelics`: OBELICS rows, ``texts`` and ``images`` lists of one length where each
  position holds either a text or an image (the other is None).
* :func:`from_mmc4`: MMC4 rows, ``text_list`` plus ``image_info`` entries that name the
  sentence index each image belongs after (``matched_text_index``).
* :func:`from_html`: an HTML page: the title, paragraph-level text, and ``<img>`` in reading
  order (scripts, styles and navigation skipped).

Filters (:func:`image_verdict`, :func:`document_verdict`) use the published OBELICS / MMC4
defaults: images at least 150 px on the shorter side with an aspect ratio in 0.5..2; documents
with 1 to 30 images and 10 to 2,000 words. An image that fails is left out of its document
(counted); a document that fails is rejected with its reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from weaverdata.verdict import Verdict

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class Item:
    kind: str  # "text" | "image"
    text: str = ""
    image: Any = None  # a URL, a path relative to the document, bytes, or {bytes, path}


@dataclass
class Document:
    items: list[Item]
    title: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def words(self) -> int:
        return sum(len(_WORD.findall(i.text)) for i in self.items if i.kind == "text")

    @property
    def images(self) -> list[Item]:
        return [i for i in self.items if i.kind == "image"]


class DocumentError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def from_obelics(row: dict[str, Any]) -> Document:
    texts, images = row.get("texts"), row.get("images")
    if not isinstance(texts, list) or not isinstance(images, list):
        raise DocumentError("missing_field", "an OBELICS row needs lists `texts` and `images`")
    if len(texts) != len(images):
        raise DocumentError("invalid_document", f"{len(texts)} texts but {len(images)} images")
    items = []
    for t, im in zip(texts, images):
        if im not in (None, ""):
            items.append(Item("image", image=im))
        elif isinstance(t, str) and t.strip():
            items.append(Item("text", text=t.strip()))
    return Document(items, title=str(row.get("title") or ""), meta={k: v for k, v in row.items() if k in ("url", "id", "document_url")})


def from_mmc4(row: dict[str, Any]) -> Document:
    texts, infos = row.get("text_list"), row.get("image_info")
    if not isinstance(texts, list) or not isinstance(infos, list):
        raise DocumentError("missing_field", "an MMC4 row needs lists `text_list` and `image_info`")
    after: dict[int, list[Any]] = {}
    for info in infos:
        idx = info.get("matched_text_index")
        if not isinstance(idx, int) or not 0 <= idx < len(texts):
            raise DocumentError("invalid_document", f"image matched to sentence {idx!r} of {len(texts)}")
        after.setdefault(idx, []).append(info.get("image_name") or info.get("raw_url") or info.get("image"))
    items = []
    for k, t in enumerate(texts):
        if isinstance(t, str) and t.strip():
            items.append(Item("text", text=t.strip()))
        items += [Item("image", image=im) for im in after.get(k, [])]
    return Document(items, title=str(row.get("title") or ""), meta={k: v for k, v in row.items() if k in ("url", "id")})


_BLOCK = {"p", "div", "section", "article", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "figcaption", "td", "br", "tr", "main"}
_SKIP = {"script", "style", "nav", "header", "footer", "noscript", "template", "svg", "form", "aside"}


class _Html(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.items: list[Item] = []
        self.title = ""
        self._buf: list[str] = []
        self._skip = 0
        self._in_title = False

    def _flush(self) -> None:
        text = " ".join(" ".join(self._buf).split())
        if text:
            self.items.append(Item("text", text=text))
        self._buf = []

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag == "img" and not self._skip:
            src = dict(attrs).get("src")
            if src:
                self._flush()
                self.items.append(Item("image", image=src))
        elif tag in _BLOCK:
            self._flush()

    def handle_endtag(self, tag):
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif tag in _BLOCK:
            self._flush()

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        elif not self._skip:
            self._buf.append(data)


def from_html(html: str) -> Document:
    p = _Html()
    p.feed(html)
    p.close()
    p._flush()
    return Document(p.items, title=" ".join(p.title.split()))


def image_verdict(width: int, height: int, *, min_side: int = 150, aspect_range: tuple[float, float] = (0.5, 2.0)) -> Verdict:
    if min(width, height) < min_side:
        return Verdict.drop("too_small", f"{width}x{height}, shorter side under {min_side}")
    aspect = width / height
    if not aspect_range[0] <= aspect <= aspect_range[1]:
        return Verdict.drop("bad_aspect", f"aspect {aspect:.3f} outside {aspect_range[0]}..{aspect_range[1]}")
    return Verdict.keep()


def document_verdict(doc: Document, *, min_images: int = 1, max_images: int = 30, min_words: int = 10, max_words: int = 2000) -> Verdict:
    n, w = len(doc.images), doc.words
    if n < min_images:
        return Verdict.drop("too_few_images", f"{n} images < {min_images}")
    if n > max_images:
        return Verdict.drop("too_many_images", f"{n} images > {max_images}")
    if w < min_words:
        return Verdict.drop("too_few_words", f"{w} words < {min_words}")
    if w > max_words:
        return Verdict.drop("too_many_words", f"{w} words > {max_words}")
    return Verdict.keep()


def context_around(doc: Document, image_index: int, *, words: int = 80) -> tuple[str, str]:
    """The text just before and just after the image_index-th image (at most `words` each)."""
    if words <= 0:
        return "", ""
    positions = [k for k, it in enumerate(doc.items) if it.kind == "image"]
    at = positions[image_index]
    before = " ".join(it.text for it in doc.items[:at] if it.kind == "text").split()
    after = " ".join(it.text for it in doc.items[at + 1 :] if it.kind == "text").split()
    return " ".join(before[-words:]), " ".join(after[:words])


def clip_chars(text: str, limit: int, *, keep: str = "start") -> str:
    """At most ``limit`` characters of ``text``, cut at a space where there is one: the start of
    it (``keep="start"``, text after an image) or the end (``keep="end"``, text before it).

    >>> clip_chars("one two three", 9), clip_chars("one two three", 9, keep="end"), clip_chars("abc", 0)
    ('one two', 'two three', '')
    """
    if len(text) <= limit:
        return text
    if limit <= 0:
        return ""
    if keep == "end":
        cut = text[len(text) - limit :]
        return cut.split(" ", 1)[1] if " " in cut and not text[len(text) - limit - 1].isspace() else cut.lstrip()
    cut = text[:limit]
    return cut.rsplit(" ", 1)[0] if " " in cut and not text[limit].isspace() else cut.rstrip()
