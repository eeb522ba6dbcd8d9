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


def from_html(html: str, *, main_content: bool = True) -> Document:
    """A page as a document: its ``<title>`` and, with ``main_content``, only its article, each
    ``<img>`` at its place in the text.

    The page is read in order (scripts, styles, nav, header, footer, aside skipped). With
    ``main_content``, trafilatura's main-content extraction decides which text blocks are the
    article: navigation, breadcrumbs, tables of contents, "next tutorial" links and footers
    are left out. Trafilatura keeps only some images (none outside paragraphs, for one), so
    images are not taken from it: an image stays when trafilatura kept it or when the text
    next to it (before or after, nothing between) is article text. A page with no article
    found is read whole.
    ``meta["extractor"]`` says which way the page was read.
    """
    p = _Html()
    p.feed(html)
    p.close()
    p._flush()
    title = " ".join(p.title.split())
    if main_content:
        from lxml import etree

        try:
            main = _main_blocks(html)
        except (ValueError, TypeError, RecursionError, etree.LxmlError):  # the extractor on a page it cannot take: read the page whole
            main = None
        if main is not None:
            items = _keep_main(p.items, *main)
            if any(i.kind == "text" for i in items):
                return Document(items, title=title, meta={"extractor": "trafilatura"})
    return Document(p.items, title=title, meta={"extractor": "html"})


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _keep_main(items: list[Item], blocks: list[str], images: set[str]) -> list[Item]:
    """The items of a page that belong to its article: the text blocks trafilatura kept, and
    each image it kept or that stands next to one of those blocks (no other text between). Pure.

    >>> page = [Item("image", image="logo.png"), Item("text", text="Home Docs"), Item("text", text="Cats sleep in the ruins of Rome all day."),
    ...         Item("image", image="cat.jpg"), Item("text", text="They wake at dusk."), Item("text", text="Next Tutorial: Dogs")]
    >>> [i.text or i.image for i in _keep_main(page, ["Cats sleep in the ruins of Rome all day.", "They wake at dusk."], set())]
    ['Cats sleep in the ruins of Rome all day.', 'cat.jpg', 'They wake at dusk.']
    """
    exact = {_norm(b) for b in blocks}
    joined = " " + " ".join(_norm(b) for b in blocks) + " "
    def main_text(it: Item) -> bool:
        n = _norm(it.text)
        return bool(n) and (n in exact or (len(n) >= 40 and f" {n} " in joined))
    kept_text = [k for k, it in enumerate(items) if it.kind == "text" and main_text(it)]
    if not kept_text:
        return []
    keep = set(kept_text)
    texts = [k for k, it in enumerate(items) if it.kind == "text"]
    for k, it in enumerate(items):
        if it.kind != "image":
            continue
        before = max((t for t in texts if t < k), default=None)
        after = min((t for t in texts if t > k), default=None)
        if it.image in images or before in keep or after in keep:
            keep.add(k)
    return [it for k, it in enumerate(items) if k in keep]


_XML_BLOCK = {"head", "p", "item", "quote", "row", "cell", "code", "list", "table", "main", "lb"}


def _main_blocks(html: str) -> tuple[list[str], set[str]] | None:
    """trafilatura's article: its text blocks and the image sources it kept, or None."""
    import trafilatura
    from lxml import etree

    xml = trafilatura.extract(html, output_format="xml", include_images=True, include_links=False, include_comments=False,
                              include_tables=True, favor_recall=True, deduplicate=False)
    if not xml:
        return None
    try:
        root = etree.fromstring(xml.encode("utf-8"), parser=etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError:
        return None
    main = root.find("main")
    if main is None:
        return None
    blocks: list[str] = []
    images: set[str] = set()
    buf: list[str] = []

    def flush() -> None:
        text = " ".join(" ".join(buf).split())
        if text:
            blocks.append(text)
        buf.clear()

    def walk(el) -> None:
        if el.tag == "graphic":
            if el.get("src"):
                images.add(el.get("src"))
            return
        block = el.tag in _XML_BLOCK
        if block:
            flush()
        if el.text:
            buf.append(el.text)
        for child in el:
            walk(child)
            if child.tail:
                buf.append(child.tail)
        if block:
            flush()

    walk(main)
    flush()
    return blocks, images


def document_turns(items: list[Item], title: str, *, request: str = "", opening_words: int = 40) -> tuple[str, list[Item]]:
    """The user turn of a document sample and the items the assistant turn is made of. Pure.

    A VLM-written ``request`` is the user turn as it is. Otherwise the title becomes a request
    and the document's opening (at most ``opening_words`` words of the text before its first
    image) is given with it; the assistant turn continues after the opening, so no text is in
    both turns (a planner must not learn to echo its prompt). A heading that repeats the title
    is left out of the assistant turn for the same reason.

    >>> user, rest = document_turns([Item("text", text="Cats of Rome"), Item("text", text="Cats sleep. They wake at dusk."), Item("image", image=0)], "Cats of Rome", opening_words=3)
    >>> print(user)
    Write an illustrated article titled "Cats of Rome". It begins:
    <BLANKLINE>
    Cats sleep.
    >>> [(i.kind, i.text) for i in rest]
    [('text', 'They wake at dusk.'), ('image', '')]
    """
    body = list(items)
    t = _norm(title)
    while t and body and body[0].kind == "text" and _norm(body[0].text) == t:
        body.pop(0)
    if request:
        return request, body
    opening, rest = split_opening(body, opening_words)
    ask = f'Write an illustrated article titled "{title}".' if title else ""
    if opening:
        return (f"{ask} It begins:\n\n{opening}" if ask else f"Continue this text:\n\n{opening}"), rest
    return ask or "Write an illustrated article.", rest


_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]{1,40})""", re.IGNORECASE)
_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


def decode_html(raw: bytes) -> tuple[str, str]:
    r"""A page's text and the charset it was read with: its byte-order mark, else the charset its
    ``<meta charset>`` or HTTP-equiv Content-Type names, else UTF-8 if it decodes, else what
    charset_normalizer detects (windows-1252 among equally good fits, as browsers do). Raises
    DocumentError ``not_html`` for binary content.

    >>> decode_html("<p>caf\u00e9</p>".encode("utf-16"))
    ('<p>café</p>', 'utf-16-le')
    >>> decode_html(b'<meta charset="iso-8859-1"><p>caf\xe9</p>')[1]
    'iso8859-1'
    """
    import codecs

    text, charset = None, ""
    for bom, name in _BOMS:
        if raw.startswith(bom):
            text, charset = raw[len(bom) :].decode(name.removesuffix("-sig"), "replace"), name.removesuffix("-sig")
            break
    if text is None:
        m = _META_CHARSET.search(raw[:8192])
        if m:
            try:
                charset = codecs.lookup(m.group(1).decode("ascii")).name
                text = raw.decode(charset, "replace")
            except (LookupError, UnicodeDecodeError):
                text = None
    if text is None and b"\x00" not in raw[:4096]:
        try:
            text, charset = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text = None
    if text is None:
        import charset_normalizer

        matches = list(charset_normalizer.from_bytes(raw[: 2**20]))
        if not matches:
            raise DocumentError("not_html", "binary content: no text encoding fits it")
        # single-byte codepages often fit equally well; among the best fits, windows-1252 is what
        # browsers assume for an undeclared legacy page (the HTML standard's default)
        tied = [m for m in matches if m.chaos <= matches[0].chaos + 1e-9]
        charset = next((m.encoding for m in tied if m.encoding == "cp1252"), matches[0].encoding)
        text = raw.decode(charset, "replace")
    sample = text[:4096]
    control = sum(1 for c in sample if ord(c) < 32 and c not in "\t\n\r\f") + sample.count("\ufffd")
    if sample and control > 0.05 * len(sample):
        raise DocumentError("not_html", f"binary content ({control} control or undecodable characters in the first {len(sample)})")
    return text, charset


def split_opening(items: list[Item], words: int) -> tuple[str, list[Item]]:
    """The document's opening (at most ``words`` words of the text before its first image, cut
    at the end of a sentence where one ends in it) and the items that follow it. Pure.

    >>> op, rest = split_opening([Item("text", text="One two. Three four five."), Item("image", image="a.png")], 3)
    >>> op, [(i.kind, i.text) for i in rest]
    ('One two.', [('text', 'Three four five.'), ('image', '')])
    """
    taken: list[str] = []
    rest = list(items)
    while rest and rest[0].kind == "text" and len(taken) < words:
        w = rest[0].text.split()
        room = words - len(taken)
        if len(w) <= room:
            taken += w
            rest.pop(0)
            continue
        head = w[:room]
        ends = [k for k, x in enumerate(head) if x.endswith((".", "!", "?", ":", ";"))]
        cut = ends[-1] + 1 if ends else room
        taken += w[:cut]
        rest[0] = Item("text", text=" ".join(w[cut:]))
        break
    return " ".join(taken), rest


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
