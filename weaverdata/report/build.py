"""`weaverdata inspect OUT`: a self-contained HTML report of an output folder (one `index.html`
plus a `thumbs/` folder of small JPEGs; no script, no network, opens offline).

It shows the run summary, histograms of what the samples hold (similarity scores, description
lengths, images per document, references per sample), a sample browser (proxy documents with
the original image beside each `<imagine>` span; reference samples as references then target,
with scores and instruction) and the rejects with their reasons and thumbnails. The output folder
may be remote (any fsspec URL); the report is written wherever `report_url` points.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from weaverdata.io.card import committed_files
from weaverdata.io.layout import RUN_MANIFEST, SUMMARY_JSON, OutputLayout
from weaverdata.io.storage import Location, StorageError
from weaverdata.job import memory_text
from weaverdata.report.images import ImageFinder, NoPreview, thumbnail
from weaverdata.report.plots import bars_svg, histogram_svg

REPORT_HTML = "index.html"
THUMBS = "thumbs"


class ReportError(ValueError):
    """The folder is not a finished weaverdata output (the message says what is missing)."""


@dataclass
class Thumbs:
    """Writes each distinct image once into `thumbs/` and returns its relative path, or None
    with the reason it cannot be shown."""

    loc: Location
    written: dict[str, str] = field(default_factory=dict)
    failed: Counter = field(default_factory=Counter)

    def add(self, data: bytes | None, why_missing: str = "image not found") -> tuple[str | None, str]:
        if not data:
            self.failed[why_missing] += 1
            return None, why_missing
        key = hashlib.sha256(data).hexdigest()[:24]
        if key not in self.written:
            try:
                jpg = thumbnail(data)
            except NoPreview as exc:
                self.failed[str(exc)] += 1
                return None, str(exc)
            rel = f"{THUMBS}/{key}.jpg"
            self.loc.fs.pipe_file(self.loc.path(rel), jpg)
            self.written[key] = rel
        return self.written[key], ""


def _words(text: str | None) -> int:
    return len((text or "").split())


def _light_columns(schema: pa.Schema) -> list[str]:
    """Columns without image bytes (cheap to read for every sample)."""
    return [f.name for f in schema if "binary" not in str(f.type)]


def _img(rel: str | None, why: str, caption: str = "", cls: str = "thumb") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    if rel is None:
        return f'<figure class="{cls} missing"><div class="noimg">no preview: {html.escape(why)}</div>{cap}</figure>'
    return f'<figure class="{cls}"><img src="{html.escape(rel)}" alt="">{cap}</figure>'


# -- reading the output ------------------------------------------------------------------------


def in_turn(lists: dict[str, list[Any]], limit: int) -> list[Any]:
    """Up to `limit` items taken from the lists in turn (keys in sorted order), so that every
    list shows before any shows twice."""
    out: list[Any] = []
    keys = sorted(lists)
    k = 0
    while len(out) < limit and any(k < len(lists[key]) for key in keys):
        out += [lists[key][k] for key in keys if k < len(lists[key])][: limit - len(out)]
        k += 1
    return out


@dataclass
class OutputView:
    layout: OutputLayout
    summary: dict[str, Any]
    manifest: dict[str, Any]
    shards: list[tuple[str, str, int]]  # (group, parquet rel path, samples)
    rejects: list[str]

    @classmethod
    def open(cls, url: str) -> OutputView:
        layout = OutputLayout(Location.of(url))
        if not layout.loc.exists():
            raise ReportError(f"output folder {url} does not exist")
        summary = layout.read_json(SUMMARY_JSON)
        if summary is None:
            raise ReportError(f"{url} has no {SUMMARY_JSON}: not a weaverdata output, or its run never finished (rerun the command)")
        files = committed_files([layout.read_json(layout.stats(u)) or {} for u in sorted(layout.committed_units())])
        return cls(layout, summary, layout.read_json(RUN_MANIFEST) or {}, files.shards, files.rejects)

    def read(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        with self.layout.loc.open(rel, "rb") as f:
            return pq.read_table(f, columns=columns)

    def light_rows(self, limit: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for _, rel, _ in self.shards:
            with self.layout.loc.open(rel, "rb") as f:
                cols = _light_columns(pq.read_schema(f))
            rows += self.read(rel, cols).to_pylist()
            if len(rows) >= limit:
                return rows[:limit]
        return rows

    def browse_rows(self, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` whole samples, taken from the groups in turn (so a small group shows)."""
        groups: dict[str, list[str]] = {}
        for g, rel, _ in self.shards:
            groups.setdefault(g, []).append(rel)
        per_group: dict[str, list[dict[str, Any]]] = {}
        for g in sorted(groups):
            taken: list[dict[str, Any]] = []
            for rel in groups[g]:
                taken += self.read(rel).slice(0, limit - len(taken)).to_pylist()
                if len(taken) >= limit:
                    break
            per_group[g] = [{**r, "_group": g} for r in taken]
        return in_turn(per_group, limit)

    def reject_rows(self, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` rejects, taken from the reasons in turn."""
        by_reason: dict[str, list[dict[str, Any]]] = {}
        for rel in self.rejects:
            for r in self.read(rel).to_pylist():
                by_reason.setdefault(r["reason"], []).append(r)
        return in_turn(by_reason, limit)


# -- distributions -----------------------------------------------------------------------------


def distributions(recipe: str, rows: list[dict[str, Any]]) -> list[str]:
    """The histograms that say something for this recipe's samples (SVG figures)."""
    figs: list[str] = []
    if recipe == "build-refs":
        cos = [r["clip_cosine"] for s in rows for r in s.get("references") or [] if r.get("clip_cosine") is not None]
        ph = [r["phash_distance"] for s in rows for r in s.get("references") or [] if r.get("phash_distance") is not None]
        figs.append(histogram_svg(cos, "CLIP similarity, reference to target", "cosine"))
        figs.append(histogram_svg(ph, "pHash distance, reference to target", "bits", integer=True))
        figs.append(histogram_svg([len(s.get("references") or []) for s in rows], "references per sample", "references", integer=True))
        figs.append(histogram_svg([_words(s.get("description")) for s in rows if s.get("description")], "description length", "words"))
        figs.append(histogram_svg([_words(s.get("instruction")) for s in rows if s.get("instruction")], "instruction length", "words"))
    elif recipe == "build-proxy":
        figs.append(histogram_svg([len(s.get("images") or []) for s in rows], "images per document", "images", integer=True))
        figs.append(histogram_svg([sum(1 for i in s.get("images") or [] if i.get("role") == "output") for s in rows], "textual proxies per document", "<imagine> spans", integer=True))
        figs.append(histogram_svg([_words(i.get("description")) for s in rows for i in s.get("images") or [] if i.get("description")], "description length (each image)", "words"))
        figs.append(histogram_svg([_words((s.get("messages") or [{}])[-1].get("content")) for s in rows], "assistant turn length", "words"))
    else:
        figs.append(histogram_svg([s["width"] for s in rows if s.get("width")], "image width", "pixels"))
        figs.append(histogram_svg([s["height"] for s in rows if s.get("height")], "image height", "pixels"))
        figs.append(histogram_svg([s["num_bytes"] / 1024 for s in rows if s.get("num_bytes")], "file size", "KiB"))
        figs.append(histogram_svg([_words(s.get("caption")) for s in rows if s.get("caption")], "caption length", "words"))
    return figs


# -- sample cards ------------------------------------------------------------------------------


def _image_bytes(value: Any) -> bytes | None:
    if isinstance(value, dict):
        return value.get("bytes")
    return value if isinstance(value, (bytes, bytearray)) else None


def refs_card(s: dict[str, Any], thumbs: Thumbs) -> str:
    figs = []
    for k, (ref, img) in enumerate(zip(s.get("references") or [], s.get("reference_images") or [])):
        rel, why = thumbs.add(_image_bytes(img), "reference image missing")
        cos = ref.get("clip_cosine")
        cap = f"reference {k + 1}<br>CLIP {'?' if cos is None else f'{cos:.3f}'} · pHash {ref.get('phash_distance', '?')}"
        figs.append(_img(rel, why, cap))
    rel, why = thumbs.add(_image_bytes(s.get("target_image")), "target image missing")
    t = s.get("target") or {}
    figs.append(_img(rel, why, f"<b>target</b> {t.get('width', '?')}x{t.get('height', '?')}", cls="thumb target"))
    texts = "".join(f"<p><b>{name}</b>: {html.escape(s[name])}</p>" for name in ("instruction", "description", "dynamics") if s.get(name))
    return f'<div class="row">{"".join(figs)}</div>{texts}'


def proxy_card(s: dict[str, Any], thumbs: Thumbs, originals: dict[str, bytes]) -> str:
    tags = s.get("tags") or {"open": "<imagine>", "close": "</imagine>", "boi": "<BOI>"}
    images = s.get("images") or []
    inputs = [i for i in images if i.get("role") == "input"]
    input_bytes = {i.get("slot"): _image_bytes(b) for i, b in zip(inputs, s.get("input_images") or [])}
    outputs = sorted((i for i in images if i.get("role") == "output"), key=lambda i: i.get("slot", 0))
    span = re.compile(rf"{re.escape(tags['open'])}(.*?){re.escape(tags['close'])}(?:{re.escape(tags['boi'])})?|<image:(\d+)>", re.S)
    k = 0
    turns = []
    for m in s.get("messages") or []:
        content, pieces, pos = m.get("content") or "", [], 0
        for hit in span.finditer(content):
            pieces.append(f'<span class="text">{html.escape(content[pos:hit.start()])}</span>')
            if hit.group(2) is not None:  # an image shown to the model
                slot = int(hit.group(2))
                rel, why = thumbs.add(input_bytes.get(slot), "input image missing")
                pieces.append(_img(rel, why, f"input image {slot}", cls="thumb inline"))
            else:  # a textual proxy: the original image beside its description
                img = outputs[k] if k < len(outputs) else {}
                k += 1
                rel, why = thumbs.add(originals.get(img.get("sha256", "")), "original image not in the output's work/ folder nor the input")
                desc = html.escape(hit.group(1))
                pieces.append(
                    f'<span class="proxy">{_img(rel, why, html.escape(img.get("source", "")), cls="thumb inline")}'
                    f'<span class="tag">{html.escape(tags["open"])}</span>{desc}<span class="tag">{html.escape(tags["close"])}{html.escape(tags["boi"])}</span></span>'
                )
            pos = hit.end()
        pieces.append(f'<span class="text">{html.escape(content[pos:])}</span>')
        turns.append(f'<div class="turn {html.escape(m.get("role", ""))}"><b>{html.escape(m.get("role", ""))}</b> {"".join(pieces)}</div>')
    return "".join(turns)


def ingest_card(s: dict[str, Any], thumbs: Thumbs) -> str:
    rel, why = thumbs.add(_image_bytes(s.get("image")), "image missing")
    meta = f"{s.get('width', '?')}x{s.get('height', '?')} {html.escape(str(s.get('format', '')))}"
    caption = f"<p>{html.escape(s['caption'])}</p>" if s.get("caption") else ""
    return f'<div class="row">{_img(rel, why, meta)}</div>{caption}'


# -- the page ----------------------------------------------------------------------------------


CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d1d1f;max-width:1400px}
h1{font-size:22px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse} td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.plots{display:flex;flex-wrap:wrap;gap:16px} .plot{margin:0} .plot figcaption{font-weight:600}
.n{color:#777;font-weight:400} .bar{fill:#4a7bd0} .axis{stroke:#555} .tick,.label{font-size:10px;fill:#444}
.card{border:1px solid #ddd;border-radius:6px;padding:10px;margin:10px 0}
.card h3{font-size:13px;margin:0 0 6px;color:#555;font-weight:500}
.row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-end}
.thumb{margin:0;display:inline-block;vertical-align:top;text-align:center;font-size:11px;color:#555}
.thumb img{max-width:160px;max-height:160px;display:block;border:1px solid #ccc}
.thumb.target img{border:3px solid #2a9d5c} .thumb.inline img{max-width:120px;max-height:120px}
.noimg{width:120px;height:80px;border:1px dashed #bbb;font-size:11px;color:#888;display:flex;align-items:center;justify-content:center;padding:4px}
.turn{margin:6px 0;padding:6px;border-radius:4px} .turn.user{background:#f4f6fa} .turn.assistant{background:#f6faf4}
.proxy{display:inline-block;border:1px solid #9bc49b;border-radius:4px;padding:4px;margin:2px;background:#fff;max-width:520px;vertical-align:top}
.tag{color:#2a7a2a;font-family:monospace;font-size:12px}
"""


def _summary_table(s: dict[str, Any]) -> str:
    u, t = s["units"], s["timings"]
    rows = [
        ("status", s["status"]),
        ("command", f"<code>{html.escape(s.get('command', ''))}</code>"),
        ("inputs", f"{s['inputs']} = accepted {s['accepted']} + rejected {s['rejected']}"),
        ("samples", s.get("samples", s["accepted"])),
        ("units", f"{u['committed']}/{u['planned']} committed, {u['resumed']} resumed, {len(u['failed'])} failed"),
        ("wall time", f"{t['wall_seconds']:.1f} s (started {t['started_at']}, finished {t['finished_at']})"),
        ("throughput", f"{t['samples_per_second']:.2f} inputs/s"),
        ("ray", html.escape(", ".join(f"{k} {v}" for k, v in (s.get("ray") or {}).items()))),
    ]
    if s.get("memory"):
        rows.append(("memory", memory_text(s["memory"])))
    cap = (s.get("details") or {}).get("captioning")
    if cap:
        rows.append(("captioning", html.escape(", ".join(f"{k} {v}" for k, v in cap.items()))))
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{v if isinstance(v, str) else html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


@dataclass
class ReportResult:
    path: str
    samples_shown: int
    rejects_shown: int
    thumbnails: int
    missing_previews: dict[str, int]


def build_report(output_url: str, report_url: str, *, max_samples: int = 48, max_rejects: int = 48, max_stat_rows: int = 1_000_000) -> ReportResult:
    view = OutputView.open(output_url)
    s, recipe = view.summary, view.summary["recipe"]
    dest = Location.of(report_url)
    try:
        dest.makedirs(THUMBS)
    except OSError as exc:
        raise StorageError(f"cannot write the report to {report_url}: {exc}") from exc
    thumbs = Thumbs(dest)
    finder = ImageFinder(view.layout, ((view.manifest.get("config") or {}).get("input") or {}).get("path"))

    light = view.light_rows(max_stat_rows)
    plots = [bars_svg(s["samples_by_group"], "samples by group"), bars_svg(s["rejected_by_reason"], "rejects by reason"), *distributions(recipe, light)]

    samples = view.browse_rows(max_samples)
    originals: dict[str, bytes] = {}
    if recipe == "build-proxy":
        wanted = {i["sha256"] for r in samples for i in r.get("images") or [] if i.get("role") == "output" and i.get("sha256")}
        _, originals = finder.fetch(shas=wanted)
    cards = []
    for r in samples:
        if recipe == "build-refs":
            body = refs_card(r, thumbs)
        elif recipe == "build-proxy":
            body = proxy_card(r, thumbs, originals)
        else:
            body = ingest_card(r, thumbs)
        head = f"{html.escape(r['_group'])} · <code>{html.escape(r['id'])}</code>"
        cards.append(f'<div class="card"><h3>{head}</h3>{body}</div>')

    rejects = view.reject_rows(max_rejects)
    found, _ = finder.fetch(ids={r["id"] for r in rejects})
    reject_rows = []
    for r in rejects:
        data, why = found.get(r["id"]), "bytes not kept for this reject"
        if data is None:
            try:
                data = finder.from_input(r.get("source") or "")
            except NoPreview as exc:
                why = str(exc)
        rel, why = thumbs.add(data, why)
        reject_rows.append(
            f"<tr><td>{_img(rel, why)}</td><td><b>{html.escape(r['reason'])}</b><br>{html.escape(r.get('stage') or '')}</td>"
            f"<td><code>{html.escape(r.get('source') or '')}</code><br>{html.escape(r.get('detail') or '')}</td></tr>"
        )

    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>weaverdata {html.escape(recipe)}: {html.escape(output_url)}</title>
<style>{CSS}</style></head><body>
<h1>weaverdata {html.escape(recipe)} <span class="n">{html.escape(output_url)}</span></h1>
<h2>Run</h2>{_summary_table(s)}
<h2>Distributions</h2><p class="n">over {len(light)} samples{" (the first " + str(max_stat_rows) + ")" if len(light) >= max_stat_rows else ""}</p>
<div class="plots">{"".join(plots)}</div>
<h2>Samples</h2><p class="n">{len(samples)} of {s.get("samples", s["accepted"])}, spread over {len(s["samples_by_group"])} groups</p>
{"".join(cards) or "<p>no samples</p>"}
<h2>Rejects</h2><p class="n">{len(rejects)} of {s["rejected"]}, spread over the reasons</p>
<table><tr><th>image</th><th>reason</th><th>source and detail</th></tr>{"".join(reject_rows)}</table>
</body></html>
"""
    dest.fs.pipe_file(dest.path(REPORT_HTML), page.encode())
    return ReportResult(dest.url.rstrip("/") + "/" + REPORT_HTML, len(samples), len(rejects), len(thumbs.written), dict(thumbs.failed))
