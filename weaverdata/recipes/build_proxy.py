"""`weaverdata build-proxy`: textual-proxy interleaved documents for planner training.

Four recipes (``recipe:`` in the config), one shape of job (as build-refs: module doc there):

1. **prepare** (Ray task per unit, ``work/prep/part-<unit>.parquet``): inputs read and checked.
   ``documents``: OBELICS / MMC4 rows and HTML pages parsed (:mod:`weaverdata.proxy.documents`),
   their images resolved, decoded and filtered (an image that fails leaves the document), then
   the document filters; ``single_image`` / ``image_group``: images decoded and filtered;
   ``text_seed``: the seed text of each row.
2. **plan** (driver): rounds of one :class:`~weaverdata.engines.captioner.Captioner` run each
   (results cached in ``work/captions``), then pure assembly and checks:

   * documents: round 1 describes every image with its surrounding text as context, except an
     image whose subject (CLIP cosine) was seen earlier in its document; round 2 describes those
     with the earlier description in the prompt, so a subject is described the same way. The
     user turn is the title and opening (or a VLM-written request). Each image becomes a proxy at
     its place; optionally the document cut after its first proxy is a second sample.
   * single_image: round 1 writes a request and a dense description; round 2 an answer that
     leads into the image and ends with its proxy (``text_proxy``), or the answer is the proxy
     alone (``proxy``); a share of samples shows the image as a real input instead (``text``).
   * image_group: groups by repeated maximum cliques of CLIP similarity (build-refs' grouping);
     round 1 describes each image and writes a request from the first; round 2 weaves the
     images, in order, into one narrative with a proxy each; round 3 refines it.
   * text_seed: the LLM writes the whole illustrated answer with proxies.

   With ``text.constrain`` a generation that must contain proxies is held by a regular
   expression (vLLM structured outputs): the given descriptions, in order, between free text.
   Every assistant turn then passes :func:`weaverdata.proxy.format.check_or_repair` (balanced
   tags, bounds, no placeholder left, the expected count): repaired when certain, else rejected
   with its ``proxy_*`` reason. Exact and near-duplicate documents (MinHash) are dropped.
3. **write** (Ray task per pending unit): the unit's samples into shards split by recipe, shape
   and input-image count; every input in no sample is a reject row with its reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from weaverdata.config import ProxyConfig
from weaverdata.io.layout import WORK_DIR, OutputLayout
from weaverdata.io.shards import RejectRow, UnitWriter
from weaverdata.io.sources import WorkUnit, _resolve_image_value, read_unit, sample_id
from weaverdata.io.storage import Location
from weaverdata.media.image import ImageRejected, decode_image
from weaverdata.proxy import documents as docs
from weaverdata.proxy.dedup import MinHasher, find_duplicates
from weaverdata.proxy.format import Tags, check_or_repair, cut_after_proxy, segments, shape_of
from weaverdata.recipes.staged import DETAILS, plan_path, prepare_all, read_plan, read_prep, read_prep_media, reject_dict, write_prep
from weaverdata.refs.quality import quality_verdict

log = logging.getLogger(__name__)

RECIPE = "build-proxy"
SCHEMA = "proxy_document"
SEED_FIELDS = ("seed", "title", "keyword", "label", "category", "text")
HTML_EXTS = ("html", "htm")

PREP_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("unit", pa.string()),
        ("locator", pa.string()),
        ("kind", pa.string()),  # image | document | doc_image | seed
        ("parent", pa.string()),  # doc_image: the document's id
        ("position", pa.int32()),  # doc_image: its index among the document's images
        ("data", pa.binary()),
        ("ext", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("sha256", pa.string()),
        ("text", pa.string()),  # document: JSON {title, items}; seed: the seed
        ("reason", pa.string()),
        ("stage", pa.string()),
        ("detail", pa.string()),
    ]
)


def _row(unit: str, rid: str, locator: str, kind: str, **kw: Any) -> dict[str, Any]:
    row = {"id": rid, "unit": unit, "locator": locator, "kind": kind, "parent": "", "position": -1, "data": b"", "ext": "", "width": 0,
           "height": 0, "sha256": "", "text": "", "reason": "", "stage": "", "detail": ""}
    row.update(kw)
    return row


# -- stage 1: prepare ------------------------------------------------------------------------


def _judge_image(data: bytes, cfg: ProxyConfig) -> tuple[dict[str, Any] | None, tuple[str, str, str] | None]:
    try:
        img = decode_image(data, max_pixels=cfg.image.max_pixels, with_phash=False)
    except ImageRejected as exc:
        return None, (exc.reason, "decode", exc.detail)
    q = cfg.quality
    v = quality_verdict(img.width, img.height, q.min_side, (q.aspect_min, q.aspect_max))
    if not v.ok:
        return None, (v.reason, "filter", v.detail)
    return {"ext": img.ext, "width": img.width, "height": img.height, "sha256": img.sha256}, None


def _prepare_images(unit: WorkUnit, cfg: ProxyConfig) -> list[dict[str, Any]]:
    from weaverdata.io.sources import image_from_row

    rows = []
    for item in read_unit(unit, cfg.input):
        if not item.error and "row" in item.payload:
            item = image_from_row(item, cfg.input, unit.root)
        if item.error:
            rows.append(_row(unit.unit, item.id, item.locator, "image", reason=item.error[0], stage="read", detail=item.error[1]))
            continue
        fields, bad = _judge_image(item.payload["image"], cfg)
        if bad:
            rows.append(_row(unit.unit, item.id, item.locator, "image", reason=bad[0], stage=bad[1], detail=bad[2]))
        else:
            rows.append(_row(unit.unit, item.id, item.locator, "image", data=item.payload["image"], **fields))
    return rows


def _prepare_seeds(unit: WorkUnit, cfg: ProxyConfig) -> list[dict[str, Any]]:
    rows = []
    for item in read_unit(unit, cfg.input):
        if item.error:
            rows.append(_row(unit.unit, item.id, item.locator, "seed", reason=item.error[0], stage="read", detail=item.error[1]))
            continue
        row = item.payload.get("row")
        if row is None:
            rows.append(_row(unit.unit, item.id, item.locator, "seed", reason="not_a_seed", stage="read", detail="text seeds are rows of JSON Lines, Parquet or HF datasets"))
            continue
        name = cfg.seed_field or next((k for k in SEED_FIELDS if isinstance(row.get(k), str) and row[k].strip()), None)
        seed = row.get(name) if name else None
        if not isinstance(seed, str) or not seed.strip():
            rows.append(_row(unit.unit, item.id, item.locator, "seed", reason="missing_field", stage="read", detail=f"no seed text (tried {cfg.seed_field or ', '.join(SEED_FIELDS)})"))
        else:
            rows.append(_row(unit.unit, item.id, item.locator, "seed", text=" ".join(seed.split())[:500]))
    return rows


def _document_items(unit: WorkUnit, cfg: ProxyConfig):
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


def _prepare_documents(unit: WorkUnit, cfg: ProxyConfig) -> list[dict[str, Any]]:
    rows = []
    d = cfg.documents
    for locator, doc, error, base in _document_items(unit, cfg):
        did = sample_id(locator)
        if error:
            rows.append(_row(unit.unit, did, locator, "document", reason=error[0], stage="read", detail=error[1]))
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
            fields, bad = _judge_image(data, cfg)
            verdict = docs.image_verdict(fields["width"], fields["height"], min_side=cfg.quality.min_side or 1, aspect_range=(cfg.quality.aspect_min, cfg.quality.aspect_max)) if fields else None
            if bad or not verdict.ok:
                dropped[bad[0] if bad else verdict.reason] += 1
                continue
            src = item.image if isinstance(item.image, str) else f"{locator}#image={k}"
            image_rows.append(_row(unit.unit, sample_id(f"{locator}#image={k}"), src[:2000], "doc_image", parent=did, position=k, data=data, **fields))
            kept_items.append({"image": k})
        kept = docs.Document([docs.Item("image") if "image" in i else docs.Item("text", text=i["text"]) for i in kept_items], doc.title)
        v = docs.document_verdict(kept, min_images=d.min_images, max_images=d.max_images, min_words=d.min_words, max_words=d.max_words)
        if not v.ok:
            detail = v.detail + (f" (images left out: {dict(dropped)})" if dropped else "")
            rows.append(_row(unit.unit, did, locator, "document", reason=v.reason, stage="filter", detail=detail))
            continue
        rows.append(_row(unit.unit, did, locator, "document", text=json.dumps({"title": doc.title, "items": kept_items, "dropped_images": dict(dropped)})))
        rows += image_rows
    return rows


def prepare_unit(unit: WorkUnit, cfg: ProxyConfig) -> dict[str, Any]:
    """Stage 1 for one unit; idempotent. A document's images are not inputs (the document is)."""
    make = {"documents": _prepare_documents, "text_seed": _prepare_seeds}.get(cfg.recipe, _prepare_images)
    return write_prep(cfg, unit, lambda: make(unit, cfg), PREP_SCHEMA, counts=lambda r: r["kind"] != "doc_image")


# -- stage 2: plan ---------------------------------------------------------------------------


@dataclass
class Draft:
    """A sample being built: its input ids, user turn, assistant turn and images."""

    id: str
    inputs: list[str]  # prep ids of the inputs it is made of
    unit: str  # where it is written (the unit of its first input)
    source: str
    user: str = ""
    assistant: str = ""
    images: list[dict[str, Any]] = field(default_factory=list)  # image rows (output first, then input)
    input_images: list[str] = field(default_factory=list)  # prep ids of images shown in the user turn
    expected: int = 0  # proxies the assistant turn must hold


class TextRound:
    """One Captioner run over many requests; results by request id."""

    def __init__(self, cfg: ProxyConfig, layout: OutputLayout, backend: Any = None):
        from weaverdata.engines.captioner import Captioner
        from weaverdata.engines.prompts import load_prompt

        self.cfg = cfg
        self.tags = Tags(cfg.tags.open, cfg.tags.close, cfg.tags.boi)
        self.cache_url = layout.loc.url.rstrip("/") + "/" + posixpath.join(WORK_DIR, "captions")
        self.Captioner = Captioner
        self.prompt = lambda name: load_prompt(name)
        self.stats: Counter = Counter()
        self.backend = backend  # None: the configured engine; tests pass a scripted one
        self.log: list[list[Any]] = []  # the requests of every round, in order
        self.seconds = 0.0  # wall time inside the engine runs (engine start included)

    def request(self, rid: str, prompt_name: str, images: list[bytes], regex: str = "", **values: Any):
        from weaverdata.engines.requests import CaptionRequest

        p = self.prompt(prompt_name)
        tag_values = {"open_tag": self.tags.open, "close_tag": self.tags.close, "boi_tag": self.tags.boi}
        values = {**tag_values, **values}
        system = p.system.format(**{k: v for k, v in values.items() if "{" + k + "}" in p.system}) if "{" in p.system else p.system
        text = p.render(**{k: v for k, v in values.items() if k in p.fields})
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        return CaptionRequest(id=rid, messages=messages, images=images, prompt_sha256=p.sha256, task=p.name, regex=regex)

    def run(self, requests: list) -> dict[str, Any]:
        if not requests:
            return {}
        self.log.append(list(requests))
        captioner = self.Captioner(self.cfg.engine, cache_url=self.cache_url, backend=self.backend)
        started = time.monotonic()
        try:
            results = captioner.run(requests)
        finally:
            captioner.close()
            self.seconds += time.monotonic() - started
        self.stats.update(captioner.stats)
        return results


def _text_re(max_chars: int) -> str:
    return r"[^<>\[\]]{1," + str(max_chars) + "}"


def proxies_regex(tags: Tags, descriptions: list[str], max_chars: int, *, lead: bool = True, tail: bool = True) -> str:
    """Free text, then each given description as a proxy, in order, with free text between."""
    t = _text_re(max_chars)
    parts = [t if lead else ""]
    for k, desc in enumerate(descriptions):
        if k:
            parts.append(" " + t + " ")
        parts.append(re.escape(tags.proxy(desc)))
    if tail:
        parts.append("(?: " + t + ")?")
    return "".join(parts)


def free_proxies_regex(tags: Tags, max_images: int, max_chars: int, desc_chars: tuple[int, int] = (60, 600)) -> str:
    """Text seeds: 1..max_images proxies with free descriptions, free text around them."""
    t = _text_re(max_chars)
    proxy = re.escape(tags.open) + r"[^<>\[\]]{" + f"{desc_chars[0]},{desc_chars[1]}" + "}" + re.escape(tags.close) + re.escape(tags.boi)
    return f"{t} {proxy}(?: {t} {proxy}){{0,{max_images - 1}}}(?: {t})?"


def _ok_text(results: dict, rid: str) -> tuple[str | None, tuple[str, str] | None]:
    r = results.get(rid)
    if r is None:
        return None, ("caption_missing", rid)
    if not r.ok:
        return None, (f"caption_{r.reason.split(':')[0]}", f"{rid.split(':')[-1]}: {r.detail or r.reason}")
    return " ".join(r.text.split()), None


def _described_by(cfg: ProxyConfig, prompt_sha256: str) -> dict[str, str]:
    return {"model": cfg.engine.model or "", "revision": cfg.engine.revision or "", "prompt_sha256": prompt_sha256}


def _image_entry(slot: int, role: str, row: dict[str, Any], description: str, described_by: dict[str, str]) -> dict[str, Any]:
    return {"slot": slot, "role": role, "sha256": row["sha256"], "source": row["locator"], "width": row["width"], "height": row["height"],
            "description": description, "described_by": described_by}


def _share(key: str, seed: int) -> float:
    """A stable number in [0, 1) for a key and a seed (seeded choices that survive resumes)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}|{key}".encode(), digest_size=8).digest(), "big") / 2**64


def plan_single_images(images: list[dict], cfg: ProxyConfig, rounds: TextRound) -> tuple[list[Draft], dict[str, tuple[str, str]]]:
    failed: dict[str, tuple[str, str]] = {}
    r1 = []
    for im in images:
        r1.append(rounds.request(f"{im['id']}:description", cfg.text.description_prompt, [im["data"]], context=""))
        r1.append(rounds.request(f"{im['id']}:request", cfg.text.request_prompt, [im["data"]], context=""))
    res1 = rounds.run(r1)
    desc_sha = rounds.prompt(cfg.text.description_prompt).sha256
    r2, ready = [], []
    for im in images:
        desc, e1 = _ok_text(res1, f"{im['id']}:description")
        request, e2 = _ok_text(res1, f"{im['id']}:request")
        if e1 or e2:
            failed[im["id"]] = e1 or e2
            continue
        u = _share(im["id"], cfg.seed)
        if u < cfg.input_image_share:
            mode = "input"
        elif u < cfg.input_image_share + (1 - cfg.input_image_share) / 3:
            mode = "proxy"
        else:
            mode = "text_proxy"
            regex = proxies_regex(rounds.tags, [desc], cfg.text.text_max_chars, tail=False) if cfg.text.constrain else ""
            r2.append(rounds.request(f"{im['id']}:answer", cfg.text.answer_prompt, [], regex=regex, request=request, description=desc))
        ready.append((im, desc, request, mode))
    res2 = rounds.run(r2)
    drafts = []
    for im, desc, request, mode in ready:
        d = Draft(sample_id(f"proxy|single_image|{im['id']}|{mode}"), [im["id"]], im["unit"], im["locator"], user=request)
        if mode == "input":
            d.user = f"<image:0>\n{request}"
            d.assistant = desc
            d.images = [_image_entry(0, "input", im, desc, _described_by(cfg, desc_sha))]
            d.input_images = [im["id"]]
        elif mode == "proxy":
            d.assistant = rounds.tags.proxy(desc)
            d.images = [_image_entry(0, "output", im, desc, _described_by(cfg, desc_sha))]
            d.expected = 1
        else:
            answer, err = _ok_text(res2, f"{im['id']}:answer")
            if err:
                failed[im["id"]] = err
                continue
            d.assistant = answer
            d.images = [_image_entry(0, "output", im, desc, _described_by(cfg, desc_sha))]
            d.expected = 1
        drafts.append(d)
    return drafts, failed


def plan_groups(images: list[dict], emb: np.ndarray, cfg: ProxyConfig, rounds: TextRound) -> tuple[list[Draft], dict[str, tuple[str, str]]]:
    from weaverdata.refs.samples import clique_candidates

    g = cfg.grouping
    cands = clique_candidates(emb, list(range(len(images))), edge_threshold=g.edge_threshold, min_size=g.min_size, max_size=g.max_size,
                              exact_max_images=g.exact_max_images, knn_k=g.knn_k, knn_index=g.knn_index, group_prefix="")
    groups = [sorted([t, *refs]) for refs, t, _ in cands]  # woven in input order
    failed: dict[str, tuple[str, str]] = {}
    grouped = {i for grp in groups for i in grp}
    for i, im in enumerate(images):
        if i not in grouped:
            failed[im["id"]] = ("no_group", "similar to no other image above grouping.edge_threshold")
    r1 = []
    for grp in groups:
        for i in grp:
            r1.append(rounds.request(f"{images[i]['id']}:description", cfg.text.description_prompt, [images[i]["data"]], context=""))
        r1.append(rounds.request(f"{images[grp[0]]['id']}:request", cfg.text.request_prompt, [images[grp[0]]["data"]], context=""))
    res1 = rounds.run(r1)
    desc_sha = rounds.prompt(cfg.text.description_prompt).sha256
    woven, r2 = [], []
    for grp in groups:
        descs, err = [], None
        for i in grp:
            text, e = _ok_text(res1, f"{images[i]['id']}:description")
            err = err or e
            descs.append(text)
        request, e = _ok_text(res1, f"{images[grp[0]]['id']}:request")
        err = err or e
        gid = sample_id("group|" + "|".join(images[i]["id"] for i in grp))
        if err:
            for i in grp:
                failed[images[i]["id"]] = err
            continue
        listing = "\n".join(f"{k + 1}. {d}" for k, d in enumerate(descs))
        regex = proxies_regex(rounds.tags, descs, cfg.text.text_max_chars) if cfg.text.constrain else ""
        r2.append(rounds.request(f"{gid}:narrative", cfg.text.narrative_prompt, [], regex=regex, request=request, num_images=len(grp), descriptions=listing))
        woven.append((grp, gid, descs, request, regex))
    res2 = rounds.run(r2)
    r3, texts = [], {}
    for grp, gid, descs, request, regex in woven:
        text, err = _ok_text(res2, f"{gid}:narrative")
        if err:
            for i in grp:
                failed[images[i]["id"]] = err
            continue
        texts[gid] = text
        if cfg.text.refine:
            r3.append(rounds.request(f"{gid}:refinement", cfg.text.refinement_prompt, [], regex=regex, document=text))
    res3 = rounds.run(r3)
    drafts = []
    for grp, gid, descs, request, _regex in woven:
        if gid not in texts:
            continue
        text = texts[gid]
        if cfg.text.refine:
            text, err = _ok_text(res3, f"{gid}:refinement")
            if err:
                for i in grp:
                    failed[images[i]["id"]] = err
                continue
        members = [images[i] for i in grp]
        d = Draft(sample_id(f"proxy|image_group|{gid}"), [m["id"] for m in members], members[0]["unit"], members[0]["locator"], user=request, assistant=text, expected=len(grp))
        d.images = [_image_entry(k, "output", m, desc, _described_by(cfg, desc_sha)) for k, (m, desc) in enumerate(zip(members, descs))]
        drafts.append(d)
    return drafts, failed


def plan_seeds(seeds: list[dict], cfg: ProxyConfig, rounds: TextRound) -> tuple[list[Draft], dict[str, tuple[str, str]]]:
    regex = free_proxies_regex(rounds.tags, cfg.seed_max_images, cfg.text.text_max_chars) if cfg.text.constrain else ""
    reqs = [rounds.request(f"{s['id']}:answer", cfg.text.seed_prompt, [], regex=regex, seed=s["text"], max_images=cfg.seed_max_images) for s in seeds]
    res = rounds.run(reqs)
    drafts, failed = [], {}
    for s in seeds:
        text, err = _ok_text(res, f"{s['id']}:answer")
        if err:
            failed[s["id"]] = err
            continue
        d = Draft(sample_id(f"proxy|text_seed|{s['id']}"), [s["id"]], s["unit"], s["locator"], user=s["text"], assistant=text)
        d.expected = None  # any count from 1 to seed_max_images; no real image behind a proxy, so `images` stays empty
        drafts.append(d)
    return drafts, failed


def plan_documents(doc_rows: list[dict], images_by_doc: dict[str, list[dict]], emb_of: dict[str, np.ndarray] | None, cfg: ProxyConfig, rounds: TextRound) -> tuple[list[Draft], dict[str, tuple[str, str]]]:
    d = cfg.documents
    parsed = {r["id"]: json.loads(r["text"]) for r in doc_rows}
    first_of: dict[str, str | None] = {}  # doc image id -> an earlier image of the same subject
    for did, ims in images_by_doc.items():
        for k, im in enumerate(ims):
            first_of[im["id"]] = None
            if emb_of is not None:
                for prev in ims[:k]:
                    if first_of[prev["id"]] is None and float(emb_of[im["id"]] @ emb_of[prev["id"]]) >= d.same_subject_cosine:
                        first_of[im["id"]] = prev["id"]
                        break

    def context(did: str, k: int) -> str:
        doc = parsed[did]
        items = [docs.Item("image") if "image" in i else docs.Item("text", text=i["text"]) for i in doc["items"]]
        before, after = docs.context_around(docs.Document(items), k, words=d.context_words)
        return f"Text before the image: {before or '(none)'}\nText after the image: {after or '(none)'}"

    descs: dict[str, str] = {}
    errors: dict[str, tuple[str, str]] = {}
    for round_no in (1, 2):
        reqs = []
        for did, ims in images_by_doc.items():
            for k, im in enumerate(ims):
                earlier = first_of[im["id"]]
                if (round_no == 1) != (earlier is None):
                    continue
                ctx = context(did, k)
                if earlier is not None:
                    if earlier not in descs:
                        continue  # its first appearance failed: reported below
                    ctx += f"\nThe same subject appeared earlier in this document, described as: {descs[earlier]}\nDescribe it consistently."
                reqs.append(rounds.request(f"{im['id']}:description", cfg.text.description_prompt, [im["data"]], context=ctx))
        res = rounds.run(reqs)
        for r in reqs:
            iid = r.id.split(":")[0]
            text, err = _ok_text(res, r.id)
            if err:
                errors[iid] = err
            else:
                descs[iid] = text
    request_texts: dict[str, str] = {}
    if d.request == "vlm":
        reqs = [rounds.request(f"{did}:request", cfg.text.request_prompt, [ims[0]["data"]], context=f"The document is titled: {parsed[did]['title']}") for did, ims in images_by_doc.items() if ims]
        res = rounds.run(reqs)
        for r in reqs:
            text, err = _ok_text(res, r.id)
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
        entries = [_image_entry(k, "output", im, descs[im["id"]], _described_by(cfg, desc_sha)) for k, im in enumerate(ims)]
        full = Draft(sample_id(f"proxy|documents|{did}"), [did], row["unit"], row["locator"], user=request or "Continue.", assistant=content, images=entries, expected=len(ims))
        drafts.append(full)
        cut = cut_after_proxy(content, 1, rounds.tags) if d.cut_samples and ims else content
        if cut != content:  # a text-then-proxy (or proxy) target, unless the document already is one
            drafts.append(Draft(sample_id(f"proxy|documents|{did}|cut1"), [did], row["unit"], row["locator"], user=full.user, assistant=cut, images=entries[:1], expected=1))
    return drafts, failed


def finish(drafts: list[Draft], cfg: ProxyConfig, tags: Tags) -> tuple[list[dict], dict[str, tuple[str, str]], Counter]:
    """Check or repair every assistant turn, drop duplicates; (records, failed inputs, repairs)."""
    t = cfg.text
    kept: list[tuple[Draft, str]] = []
    failed: dict[str, tuple[str, str]] = {}
    repairs: Counter = Counter()
    for dr in drafts:
        text, verdict, fixes = check_or_repair(dr.assistant, tags, min_words=t.description_min_words, max_words=t.description_max_words, expected=dr.expected if dr.expected is not None else None)
        n_proxies = sum(1 for seg in segments(text, tags) if seg.kind == "proxy") if verdict.ok else 0
        if dr.expected is None and verdict.ok and not 1 <= n_proxies <= cfg.seed_max_images:
            verdict_reason = ("proxy_count", f"{n_proxies} proxies, 1..{cfg.seed_max_images} expected")
            for i in dr.inputs:
                failed.setdefault(i, verdict_reason)
            continue
        if not verdict.ok:
            for i in dr.inputs:
                failed.setdefault(i, (verdict.reason, verdict.detail))
            continue
        repairs.update(fixes)
        kept.append((dr, text))
    dropped = find_duplicates([text for _, text in kept], threshold=cfg.dedup_threshold, hasher=MinHasher()) if cfg.dedup else {}
    records = []
    for k, (dr, text) in enumerate(kept):
        if k in dropped:
            reason, first = dropped[k]
            for i in dr.inputs:
                failed.setdefault(i, (reason, f"same text as sample {kept[first][0].id}"))
            continue
        records.append({
            "record": {
                "id": dr.id, "recipe": cfg.recipe, "shape": shape_of(text, tags),
                "messages": [{"role": "user", "content": dr.user}, {"role": "assistant", "content": text}],
                "images": dr.images, "tags": {"open": tags.open, "close": tags.close, "boi": tags.boi}, "source": dr.source,
            },
            "inputs": dr.inputs, "unit": dr.unit, "input_images": dr.input_images,
        })
    return records, failed, repairs


def _embed(layout: OutputLayout, rows: list[dict], cfg: ProxyConfig) -> dict[str, np.ndarray]:
    import ray

    from weaverdata.models.clip import embed_dataset

    if not rows:
        return {}
    ds = ray.data.from_items([{"id": r["id"], "image": r["data"]} for r in rows])
    out = {}
    for batch in embed_dataset(ds, cfg.clip).iter_batches(batch_size=1024, batch_format="numpy"):
        for i, e in zip(batch["id"], batch["embedding"]):
            out[str(i)] = np.asarray(e, dtype=np.float32)
    return out


def plan_job(cfg: ProxyConfig, units: list[WorkUnit], pending: list[WorkUnit], layout: OutputLayout) -> dict[str, Any]:
    prepare_all(cfg, units, layout, prepare_unit, "build-proxy prepare")
    table = read_prep(layout, units, PREP_SCHEMA)
    ok = table.filter(pc.equal(table.column("reason"), "")).to_pylist()
    rounds = TextRound(cfg, layout)
    tags = rounds.tags
    if cfg.recipe == "single_image":
        drafts, failed = plan_single_images([r for r in ok if r["kind"] == "image"], cfg, rounds)
    elif cfg.recipe == "image_group":
        images = [r for r in ok if r["kind"] == "image"]
        emb_of = _embed(layout, images, cfg)
        emb = np.stack([emb_of[r["id"]] for r in images]) if images else np.zeros((0, 1), np.float32)
        drafts, failed = plan_groups(images, emb, cfg, rounds)
    elif cfg.recipe == "text_seed":
        drafts, failed = plan_seeds([r for r in ok if r["kind"] == "seed"], cfg, rounds)
    else:
        doc_rows = [r for r in ok if r["kind"] == "document"]
        images_by_doc: dict[str, list[dict]] = {r["id"]: [] for r in doc_rows}
        doc_images = [r for r in ok if r["kind"] == "doc_image"]
        for r in sorted(doc_images, key=lambda r: r["position"]):
            images_by_doc[r["parent"]].append(r)
        emb_of = _embed(layout, doc_images, cfg) if cfg.documents.same_subject_cosine < 1 else None
        drafts, failed = plan_documents(doc_rows, images_by_doc, emb_of, cfg, rounds)
    records, failed2, repairs = finish(drafts, cfg, tags)
    for k, v in failed2.items():
        failed.setdefault(k, v)
    used = {i for r in records for i in r["inputs"]}
    by_unit: dict[str, list[dict]] = {}
    for r in records:
        by_unit.setdefault(r["unit"], []).append(r)
    inputs = [r for r in table.to_pylist() if r["kind"] != "doc_image"]
    for u in pending:
        rejects, used_here = [], []
        for row in inputs:
            if row["unit"] != u.unit:
                continue
            if row["reason"]:
                rejects.append(reject_dict(row, row["reason"], row["stage"], row["detail"]))
            elif row["id"] in used:
                used_here.append(row["id"])
            else:
                reason, detail = failed.get(row["id"], ("no_output", "not in any sample"))
                stage = "caption" if reason.startswith("caption_") else ("dedup" if reason.startswith("duplicate") else ("group" if reason == "no_group" else "validate"))
                rejects.append(reject_dict(row, reason, stage, detail))
        samples = sorted(by_unit.get(u.unit, []), key=lambda r: r["record"]["id"])
        layout.write_json(plan_path(u.unit), {"unit": u.unit, "samples": [{"record": s["record"], "input_images": s["input_images"]} for s in samples], "used": used_here, "rejects": rejects})
    details = {
        "recipe": cfg.recipe,
        "samples": len(records),
        "samples_by_shape": dict(sorted(Counter(r["record"]["shape"] for r in records).items())),
        "repairs": dict(sorted(repairs.items())),
        "inputs_failed_by_reason": dict(sorted(Counter(v[0] for v in failed.values()).items())),
        "captioning": dict(rounds.stats),
        "engine_seconds": round(rounds.seconds, 3),
        "engine_rounds": len(rounds.log),
        "constrained": cfg.text.constrain,
    }
    layout.write_json(DETAILS, details)
    return details


# -- stage 3: write --------------------------------------------------------------------------


def process_unit(unit: WorkUnit, cfg: ProxyConfig) -> dict[str, Any]:
    layout = OutputLayout(Location.of(cfg.output.path))
    plan = read_plan(layout, unit)
    media_of = read_prep_media(layout, unit.unit, {i for s in plan["samples"] for i in s["input_images"]})
    writer = UnitWriter.for_output(layout, unit.unit, SCHEMA, unit.describe(), cfg.output, composite=True)
    try:
        for s in plan["samples"]:
            rec = s["record"]
            group = f"{rec['recipe'].replace('_', '-')}-{rec['shape'].replace('_', '-')}"
            writer.add(rec, {"input_images": [media_of[i] for i in s["input_images"]]}, group=group)
        writer.mark_used(plan["used"])
        for r in plan["rejects"]:
            writer.reject(RejectRow(r["id"], r["source"], r["reason"], r["stage"], r["detail"] or None, r["sha256"]))
        return writer.commit()
    except BaseException:
        writer.abort()
        raise

