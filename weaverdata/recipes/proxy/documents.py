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
from collections import Counter
from typing import Any

import numpy as np

from weaverdata.config import ProxyConfig
from weaverdata.io.layout import OutputLayout
from weaverdata.io.sources import WorkUnit, _resolve_image_value, read_unit, sample_id
from weaverdata.io.storage import Location
from weaverdata.proxy import documents as docs
from weaverdata.proxy.format import cut_after_proxy
from weaverdata.proxy.rounds import Draft, TextRound, described_by, image_entry, ok_text
from weaverdata.recipes.proxy.base import judge_image, prep_row, read_unit_prep
from weaverdata.recipes.staged import embed_prep, read_items, read_prep_meta, write_items

HTML_EXTS = ("html", "htm")
CHARS_PER_WORD = 12  # a context of N words is also cut at 12 N characters (one "word" of a crawled page can be a whole URL or script)


class Documents:
    name = "documents"

    def prepare(self, unit: WorkUnit, cfg: ProxyConfig) -> list[dict[str, Any]]:
        return prepare_documents(unit, cfg)

    def is_input(self, row: dict[str, Any]) -> bool:
        return row["kind"] != "doc_image"

    def plan(self, cfg: ProxyConfig, units: list[WorkUnit], layout: OutputLayout) -> dict[str, Any]:
        """Which document images repeat an earlier subject of their document (embeddings on the
        driver: ids and vectors only), as one small items file per unit."""
        if cfg.documents.same_subject_cosine >= 1:
            return {}
        meta = read_prep_meta(layout, units, ["id", "unit", "kind", "parent", "position", "reason"])
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
        return {"repeated_subjects": len(links)}

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
    """(locator, Document | None, (reason, detail) | None, base folder) for every input document."""
    loc = Location.of(unit.root)
    if unit.kind == "images":  # a folder listing: HTML pages are documents, anything else is not
        for rel, _txt, _meta in unit.items:
            if rel.rsplit(".", 1)[-1].lower() not in HTML_EXTS:
                yield rel, None, ("not_a_document", "the documents recipe reads HTML pages, JSON Lines and Parquet rows"), ""
                continue
            try:
                html = loc.fs.cat_file(loc.path(rel)).decode("utf-8", "replace")
            except OSError as exc:
                yield rel, None, ("read_error", str(exc)), ""
                continue
            yield rel, docs.from_html(html), None, posixpath.dirname(rel)
        return
    for item in read_unit(unit, cfg.input):
        if item.error:
            yield item.locator, None, item.error, ""
            continue
        row = item.payload.get("row") or {}
        try:
            doc = docs.from_mmc4(row) if "text_list" in row else docs.from_obelics(row)
        except docs.DocumentError as exc:
            yield item.locator, None, (exc.reason, exc.detail), ""
            continue
        yield item.locator, doc, None, item.payload.get("base", "")


def prepare_documents(unit: WorkUnit, cfg: ProxyConfig) -> list[dict[str, Any]]:
    rows = []
    d = cfg.documents
    for locator, doc, error, base in document_items(unit, cfg):
        did = sample_id(locator)
        if error:
            rows.append(prep_row(unit.unit, did, locator, "document", reason=error[0], stage="read", detail=error[1]))
            continue
        kept_items, image_rows, dropped = [], [], Counter()
        for item in doc.items:
            if item.kind == "text":
                kept_items.append({"text": item.text})
                continue
            k = len(image_rows)
            try:
                data = _resolve_image_value(item.image, unit.root, base)
            except (OSError, ValueError, TypeError) as exc:
                dropped[f"read_error: {type(exc).__name__}"] += 1
                continue
            fields, bad = judge_image(data, cfg)
            verdict = docs.image_verdict(fields["width"], fields["height"], min_side=cfg.quality.min_side or 1, aspect_range=(cfg.quality.aspect_min, cfg.quality.aspect_max)) if fields else None
            if bad or not verdict.ok:
                dropped[bad[0] if bad else verdict.reason] += 1
                continue
            src = item.image if isinstance(item.image, str) else f"{locator}#image={k}"
            image_rows.append(prep_row(unit.unit, sample_id(f"{locator}#image={k}"), src[:2000], "doc_image", parent=did, position=k, data=data, **fields))
            kept_items.append({"image": k})
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
        words = " ".join(i["text"] for i in doc["items"] if "text" in i).split()
        request = request_texts.get(did) or " ".join(x for x in (doc["title"], " ".join(words[: d.opening_words])) if x).strip()
        parts = [rounds.tags.proxy(descs[ims[i["image"]]["id"]]) if "image" in i else i["text"] for i in doc["items"]]
        content = ""
        for p in parts:
            content = p if not content else content + ("" if content.endswith(rounds.tags.boi) and p.startswith(rounds.tags.open) else " ") + p
        entries = [image_entry(k, "output", im, descs[im["id"]], described_by(cfg, desc_sha)) for k, im in enumerate(ims)]
        full = Draft(sample_id(f"proxy|documents|{did}"), [did], row["unit"], row["locator"], user=request or "Continue.", assistant=content, images=entries, expected=len(ims))
        drafts.append(full)
        cut = cut_after_proxy(content, 1, rounds.tags) if d.cut_samples and ims else content
        if cut != content:  # a text-then-proxy (or proxy) target, unless the document already is one
            drafts.append(Draft(sample_id(f"proxy|documents|{did}|cut1"), [did], row["unit"], row["locator"], user=full.user, assistant=cut, images=entries[:1], expected=1))
    return drafts, failed
