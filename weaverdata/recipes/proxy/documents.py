"""Proxy source ``documents``: interleaved web documents (OBELICS / MMC4 rows, HTML pages).

Each image becomes a proxy at its place. Round 1 describes every image with its surrounding
text as context, except an image whose subject (CLIP cosine) appeared earlier in its document;
round 2 describes those with the earlier description in the prompt, so a subject is described
the same way. The user turn is the title and opening (or a VLM-written request). Optionally the
document cut after its first proxy is a second sample.

A document and its images are one unit's: the driver only decides, from the images'
embeddings, which image repeats an earlier subject (``work/items``), and the unit's task does
the rest. A context too long for the prompt budget is shortened (``documents.shorten_context``)
or the image is rejected ``caption_prompt_too_long``.
"""

from __future__ import annotations

import json
import posixpath
import urllib.parse
import zlib
from collections import Counter
from typing import Any

import numpy as np

from weaverdata.config import ProxyConfig
from weaverdata.io.layout import OutputLayout
from weaverdata.io.policy import InputPolicy, ReferenceRejected, check_inside, resolve_reference, scheme_of
from weaverdata.io.sources import IMAGE_EXTS, WorkUnit, read_unit, sample_id, warc_index, warc_record_body
from weaverdata.io.storage import Location
from weaverdata.proxy import documents as docs
from weaverdata.proxy.format import cut_after_proxy
from weaverdata.proxy.rounds import Draft, TextRound, described_by, image_entry, ok_text
from weaverdata.recipes.proxy.base import judge_image, prep_row, read_unit_prep
from weaverdata.recipes.staged import embed_prep, read_items, read_prep_meta, write_items

HTML_EXTS = ("html", "htm", "xhtml")
ASSET_EXTS = IMAGE_EXTS | {"svg", "css", "js", "mjs", "woff", "woff2", "ttf", "otf", "eot", "map", "ico"}
"""Files a saved page brings along (its images, styles, scripts, fonts): they belong to the page,
so a folder listing does not count them as inputs (the summary counts them as page_assets)."""
CHARS_PER_WORD = 12  # a context of N words is also cut at 12 N characters (one "word" of a crawled page can be a whole URL or script)


class Documents:
    name = "documents"

    def prepare(self, unit: WorkUnit, cfg: ProxyConfig) -> list[dict[str, Any]]:
        return prepare_documents(unit, cfg)

    def is_input(self, row: dict[str, Any]) -> bool:
        return row["kind"] == "document"

    def plan(self, cfg: ProxyConfig, units: list[WorkUnit], layout: OutputLayout) -> dict[str, Any]:
        """Which document images repeat an earlier subject of their document (embeddings on the
        driver: ids and vectors only), as one small items file per unit."""
        meta = read_prep_meta(layout, units, ["id", "unit", "kind", "parent", "position", "reason"])
        counts = {"page_assets": sum(1 for r in meta if r["kind"] == "asset"),
                  "document_images_left_out": dict(sorted(Counter(r["reason"] for r in meta if r["kind"] == "doc_image" and r["reason"]).items()))}
        if cfg.documents.same_subject_cosine >= 1:
            return counts
        rows = sorted((r for r in meta if r["kind"] == "doc_image" and not r["reason"]), key=lambda r: (r["parent"], r["position"]))
        ids, emb = embed_prep(layout, units, cfg.clip, kind="doc_image")
        emb_of = dict(zip(ids, emb))
        by_doc: dict[str, list[str]] = {}
        unit_of: dict[str, str] = {}
        for r in rows:
            if r["id"] in emb_of:
                by_doc.setdefault(r["parent"], []).append(r["id"])
                unit_of[r["id"]] = r["unit"]
        links = same_subject_links(by_doc, emb_of, cfg.documents.same_subject_cosine)
        per_unit: dict[str, list[dict[str, Any]]] = {u.unit: [] for u in units}
        for i, earlier in sorted(links.items()):
            per_unit[unit_of[i]].append({"kind": "link", "id": i, "members": [earlier], "member_units": [unit_of[i]]})
        for u, items in per_unit.items():
            write_items(layout, u, items)
        return {**counts, "repeated_subjects": len(links)}

    def drafts(self, unit: WorkUnit, cfg: ProxyConfig, rounds: TextRound, layout: OutputLayout) -> tuple[list[Draft], dict[str, tuple[str, str]]]:
        rows = read_unit_prep(layout, unit.unit, ("document", "doc_image"))
        doc_rows = [r for r in rows if r["kind"] == "document"]
        images_by_doc: dict[str, list[dict]] = {r["id"]: [] for r in doc_rows}
        for r in sorted((r for r in rows if r["kind"] == "doc_image"), key=lambda r: r["position"]):
            images_by_doc[r["parent"]].append(r)
        first_of = {it["id"]: it["members"][0] for it in read_items(layout, unit.unit) if it["kind"] == "link"}
        return plan_documents(doc_rows, images_by_doc, first_of, cfg, rounds)


def same_subject_links(images_by_doc: dict[str, list[str]], emb_of: dict[str, np.ndarray], threshold: float) -> dict[str, str]:
    """For each document image whose subject (CLIP cosine >= threshold) appeared earlier in its
    document, the id of that earlier first appearance. Pure.

    >>> e = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0]), "c": np.array([1.0, 0.0])}
    >>> same_subject_links({"doc": ["a", "b", "c"]}, e, 0.9)
    {'c': 'a'}
    """
    links: dict[str, str] = {}
    for ids in images_by_doc.values():
        for k, i in enumerate(ids):
            for prev in ids[:k]:
                if prev not in links and float(emb_of[i] @ emb_of[prev]) >= threshold:
                    links[i] = prev
                    break
    return links


def document_items(unit: WorkUnit, cfg: ProxyConfig):
    """(locator, Document | None, (reason, detail) | None, resolve) for every input document,
    where ``resolve(reference) -> bytes`` reads one of its images under the input policy; a page
    asset in a folder listing is (locator, None, ("page_asset", ...), None)."""
    loc = Location.of(unit.root)
    policy = InputPolicy.of(cfg.input)

    def resolver(base: str):
        return lambda ref: resolve_reference(ref, unit.root, base, policy)

    if unit.kind == "images":  # a folder listing: HTML pages are documents, their assets are not inputs
        for rel, _txt, _meta in unit.items:
            ext = rel.rsplit(".", 1)[-1].lower() if "." in posixpath.basename(rel) else ""
            if ext not in HTML_EXTS:
                if ext in ASSET_EXTS:
                    yield rel, None, ("page_asset", "a file a page may use; not a document of its own"), None
                else:
                    yield rel, None, ("not_a_document", "the documents recipe reads HTML pages, WARC files, JSON Lines and Parquet rows"), None
                continue
            try:
                check_inside(loc, rel, policy)
                size = loc.fs.size(loc.path(rel))
                if size > cfg.documents.max_page_bytes:
                    raise docs.DocumentError("page_too_large", f"{size} bytes > documents.max_page_bytes {cfg.documents.max_page_bytes}")
                doc = _page(loc.fs.cat_file(loc.path(rel)), cfg)
            except (ReferenceRejected, docs.DocumentError) as exc:
                yield rel, None, (exc.reason, exc.detail), None
                continue
            except OSError as exc:
                yield rel, None, ("read_error", str(exc)), None
                continue
            yield rel, doc, None, resolver(posixpath.dirname(rel))
        return
    if unit.kind == "warc":
        yield from _warc_documents(unit, cfg, policy)
        return
    for item in read_unit(unit, cfg.input):
        if item.error:
            yield item.locator, None, item.error, None
            continue
        row = item.payload.get("row") or {}
        try:
            doc = docs.from_mmc4(row) if "text_list" in row else docs.from_obelics(row)
        except docs.DocumentError as exc:
            yield item.locator, None, (exc.reason, exc.detail), None
            continue
        yield item.locator, doc, None, resolver(item.payload.get("base", ""))


def _page(raw: bytes, cfg: ProxyConfig) -> docs.Document:
    if len(raw) > cfg.documents.max_page_bytes:
        raise docs.DocumentError("page_too_large", f"{len(raw)} bytes > documents.max_page_bytes {cfg.documents.max_page_bytes}")
    html, _charset = docs.decode_html(raw)
    return docs.from_html(html, main_content=cfg.documents.main_content)


def _warc_documents(unit: WorkUnit, cfg: ProxyConfig, policy: InputPolicy):
    """The HTML pages of a WARC file as documents. A page's images are looked up in the same
    archive by their absolute URL (they are part of the input); an image the archive lacks is a
    remote reference, fetched only as the input policy allows. Image records are the pages'
    assets, not inputs."""
    loc = Location.of(unit.root)
    try:
        index = warc_index(loc, unit.path)
    except (OSError, EOFError, ValueError, zlib.error):
        index = {}  # reading the records below reports what is wrong with the file
    with loc.open(unit.path, "rb") as archive:

        def resolver(page_url: str):
            def resolve(ref):
                if not isinstance(ref, str) or ref.startswith("data:"):
                    return resolve_reference(ref, unit.root, "", policy)
                url = urllib.parse.urljoin(page_url, ref.strip())
                if url in index:
                    return warc_record_body(archive, index[url])
                if not scheme_of(url):  # a relative reference of a page with no URL: never a local path
                    raise ReferenceRejected("missing_in_archive", f"{ref[:300]} (the page has no URL to resolve it against)")
                return resolve_reference(url, unit.root, "", policy)
            return resolve

        for item in read_unit(unit, cfg.input):
            if item.error:
                yield item.locator, None, item.error, None
            elif "image" in item.payload:
                yield item.locator, None, ("page_asset", f"an image record of the archive ({item.payload['meta'].get('url', '')[:300]})"), None
            else:
                row = item.payload["row"]
                try:
                    doc = _page(row["html"], cfg)
                except docs.DocumentError as exc:
                    yield item.locator, None, (exc.reason, exc.detail), None
                    continue
                doc.meta["url"] = row["url"]
                yield item.locator, doc, None, resolver(row["url"])


def prepare_documents(unit: WorkUnit, cfg: ProxyConfig) -> list[dict[str, Any]]:
    """Prep rows: one per document (accepted, or rejected with its reason), one per kept image
    of an accepted document, one per image left out (its reason and detail: a reference the input
    policy refuses, an undecodable or too small image), one per page asset."""
    rows = []
    d = cfg.documents
    for locator, doc, error, resolve in document_items(unit, cfg):
        did = sample_id(locator)
        if error:
            kind = "asset" if error[0] == "page_asset" else "document"
            rows.append(prep_row(unit.unit, did, locator, kind, reason=error[0], stage="read", detail=error[1]))
            continue
        kept_items, image_rows, dropped, dropped_rows = [], [], Counter(), []
        for pos, item in enumerate(doc.items):
            if item.kind == "text":
                kept_items.append({"text": item.text})
                continue
            k = len(image_rows)
            ref = item.image if isinstance(item.image, str) else f"{locator}#item={pos}"
            try:
                data = resolve(item.image)
            except ReferenceRejected as exc:
                dropped[exc.reason] += 1
                dropped_rows.append(prep_row(unit.unit, sample_id(f"{locator}#item={pos}"), ref[:2000], "doc_image", parent=did, reason=exc.reason, stage="read", detail=exc.detail))
                continue
            except (OSError, ValueError, TypeError) as exc:
                dropped["read_error"] += 1
                dropped_rows.append(prep_row(unit.unit, sample_id(f"{locator}#item={pos}"), ref[:2000], "doc_image", parent=did, reason="read_error", stage="read", detail=f"{type(exc).__name__}: {exc}"[:500]))
                continue
            fields, bad = judge_image(data, cfg)
            verdict = docs.image_verdict(fields["width"], fields["height"], min_side=cfg.quality.min_side or 1, aspect_range=(cfg.quality.aspect_min, cfg.quality.aspect_max)) if fields else None
            if bad or not verdict.ok:
                reason, stage, detail = bad if bad else (verdict.reason, "filter", verdict.detail)
                dropped[reason] += 1
                dropped_rows.append(prep_row(unit.unit, sample_id(f"{locator}#item={pos}"), ref[:2000], "doc_image", parent=did, reason=reason, stage=stage, detail=detail))
                continue
            image_rows.append(prep_row(unit.unit, sample_id(f"{locator}#image={k}"), ref[:2000], "doc_image", parent=did, position=k, data=data, **fields))
            kept_items.append({"image": k})
        rows += dropped_rows
        kept = docs.Document([docs.Item("image") if "image" in i else docs.Item("text", text=i["text"]) for i in kept_items], doc.title)
        v = docs.document_verdict(kept, min_images=d.min_images, max_images=d.max_images, min_words=d.min_words, max_words=d.max_words)
        if not v.ok:
            detail = v.detail + (f" (images left out: {dict(dropped)})" if dropped else "")
            rows.append(prep_row(unit.unit, did, locator, "document", reason=v.reason, stage="filter", detail=detail))
            continue
        rows.append(prep_row(unit.unit, did, locator, "document", text=json.dumps({"title": doc.title, "items": kept_items, "dropped_images": dict(dropped)})))
        rows += image_rows
    return rows


def plan_documents(doc_rows: list[dict], images_by_doc: dict[str, list[dict]], first_of: dict[str, str | None], cfg: ProxyConfig, rounds: TextRound) -> tuple[list[Draft], dict[str, tuple[str, str]]]:
    d = cfg.documents
    parsed = {r["id"]: json.loads(r["text"]) for r in doc_rows}
    def context(did: str, k: int, words: int) -> str:
        doc = parsed[did]
        items = [docs.Item("image") if "image" in i else docs.Item("text", text=i["text"]) for i in doc["items"]]
        before, after = docs.context_around(docs.Document(items), k, words=words)
        return f"Text before the image: {docs.clip_chars(before, words * CHARS_PER_WORD, keep='end') or '(none)'}\nText after the image: {docs.clip_chars(after, words * CHARS_PER_WORD) or '(none)'}"

    # a context too long for the prompt budget is cut to half, a quarter, then none (or the image is rejected)
    fallback_words = [w for w in (d.context_words // 2, d.context_words // 4, 0) if w < d.context_words] if d.shorten_context else []

    descs: dict[str, str] = {}
    errors: dict[str, tuple[str, str]] = {}
    for round_no in (1, 2):
        reqs = []
        for did, ims in images_by_doc.items():
            for k, im in enumerate(ims):
                earlier = first_of.get(im["id"])
                if (round_no == 1) != (earlier is None):
                    continue
                if earlier is not None and earlier not in descs:
                    continue  # its first appearance failed: reported below
                same = f"\nThe same subject appeared earlier in this document, described as: {descs[earlier]}\nDescribe it consistently." if earlier is not None else ""
                reqs.append(rounds.request(f"{im['id']}:description", cfg.text.description_prompt, [im["data"]], context=context(did, k, d.context_words) + same,
                                           shorter=[{"context": context(did, k, w) + same} for w in dict.fromkeys(fallback_words)]))
        res = rounds.run(reqs)
        for r in reqs:
            iid = r.id.split(":")[0]
            text, err = ok_text(res, r.id)
            if err:
                errors[iid] = err
            else:
                descs[iid] = text
    request_texts: dict[str, str] = {}
    if d.request == "vlm":
        reqs = [rounds.request(f"{did}:request", cfg.text.request_prompt, [ims[0]["data"]], context=f"The document is titled: {parsed[did]['title']}") for did, ims in images_by_doc.items() if ims]
        res = rounds.run(reqs)
        for r in reqs:
            text, err = ok_text(res, r.id)
            if err:
                errors[r.id.split(":")[0]] = err
            else:
                request_texts[r.id.split(":")[0]] = text
    desc_sha = rounds.prompt(cfg.text.description_prompt).sha256
    drafts, failed = [], {}
    for row in doc_rows:
        did = row["id"]
        ims = images_by_doc.get(did, [])
        missing = [im["id"] for im in ims if im["id"] not in descs]
        if missing or did in errors:
            failed[did] = errors.get(did) or errors.get(missing[0]) or ("caption_missing", f"image {missing[0]} has no description")
            continue
        doc = parsed[did]
        items = [docs.Item("image", image=i["image"]) if "image" in i else docs.Item("text", text=i["text"]) for i in doc["items"]]
        request, rest = docs.document_turns(items, doc["title"], request=request_texts.get(did, ""), opening_words=d.opening_words)
        parts = [rounds.tags.proxy(descs[ims[i.image]["id"]]) if i.kind == "image" else i.text for i in rest if i.kind == "image" or i.text]
        content = ""
        for p in parts:
            content = p if not content else content + ("" if content.endswith(rounds.tags.boi) and p.startswith(rounds.tags.open) else " ") + p
        entries = [image_entry(k, "output", im, descs[im["id"]], described_by(cfg, desc_sha)) for k, im in enumerate(ims)]
        full = Draft(sample_id(f"proxy|documents|{did}"), [did], row["unit"], row["locator"], user=request, assistant=content, images=entries, expected=len(ims))
        drafts.append(full)
        cut = cut_after_proxy(content, 1, rounds.tags) if d.cut_samples and ims else content
        if cut != content:  # a text-then-proxy (or proxy) target, unless the document already is one
            drafts.append(Draft(sample_id(f"proxy|documents|{did}|cut1"), [did], row["unit"], row["locator"], user=full.user, assistant=cut, images=entries[:1], expected=1))
    return drafts, failed
