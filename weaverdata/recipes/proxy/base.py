"""What the proxy sources share: the prep table, image checks, and the interface a source implements.

A source (``recipe:`` in the config) is one module in this package, registered in
:data:`weaverdata.recipes.proxy.SOURCES`. It says how a work unit becomes prep rows (stage 1, a
Ray task per unit), what the driver must decide across units before any text is asked for
(image groups, repeated subjects in documents: embeddings and small per-unit item files), and
how a unit's items become drafts through rounds of requests (the text stage, a Ray task per
unit on the job's engines). Everything else (checks, dedup, shards, accounting) is the job's.
"""

from __future__ import annotations

from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from weaverdata.config import ProxyConfig
from weaverdata.io.layout import OutputLayout
from weaverdata.io.sources import WorkUnit, read_unit
from weaverdata.media.image import ImageRejected, decode_image
from weaverdata.proxy.rounds import Draft, TextRound
from weaverdata.recipes.staged import prep_path
from weaverdata.refs.quality import quality_verdict

PREP_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("unit", pa.string()),
        ("locator", pa.string()),
        ("kind", pa.string()),  # image | document | doc_image | seed | asset (a page's file, not an input)
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


META_COLUMNS = ["id", "unit", "locator", "kind", "parent", "position", "ext", "width", "height", "sha256", "text", "reason", "stage", "detail"]
"""Prep columns without the image bytes."""


class ProxySource(Protocol):
    """One way to make proxy documents (single_image, image_group, text_seed, documents)."""

    name: str

    def prepare(self, unit: WorkUnit, cfg: ProxyConfig) -> list[dict[str, Any]]:
        """Stage 1 for one unit: its inputs as :data:`PREP_SCHEMA` rows (rejects keep their reason)."""

    def is_input(self, row: dict[str, Any]) -> bool:
        """Whether a prep row counts as an input (a document's images do not: the document does)."""

    def plan(self, cfg: ProxyConfig, units: list[WorkUnit], layout: OutputLayout) -> dict[str, Any]:
        """Driver step across units before the text stage (metadata only); returns details."""

    def drafts(self, unit: WorkUnit, cfg: ProxyConfig, rounds: TextRound, layout: OutputLayout) -> tuple[list[Draft], dict[str, tuple[str, str]]]:
        """Text stage for one unit (on a worker): its drafts, and its failed inputs with (reason, detail)."""


def prep_row(unit: str, rid: str, locator: str, kind: str, **kw: Any) -> dict[str, Any]:
    row = {"id": rid, "unit": unit, "locator": locator, "kind": kind, "parent": "", "position": -1, "data": b"", "ext": "", "width": 0,
           "height": 0, "sha256": "", "text": "", "reason": "", "stage": "", "detail": ""}
    row.update(kw)
    return row


def judge_image(data: bytes, cfg: ProxyConfig) -> tuple[dict[str, Any] | None, tuple[str, str, str] | None]:
    try:
        img = decode_image(data, max_pixels=cfg.image.max_pixels, with_phash=False)
    except ImageRejected as exc:
        return None, (exc.reason, "decode", exc.detail)
    q = cfg.quality
    v = quality_verdict(img.width, img.height, q.min_side, (q.aspect_min, q.aspect_max))
    if not v.ok:
        return None, (v.reason, "filter", v.detail)
    return {"ext": img.ext, "width": img.width, "height": img.height, "sha256": img.sha256}, None


def prepare_images(unit: WorkUnit, cfg: ProxyConfig) -> list[dict[str, Any]]:
    from weaverdata.io.sources import image_from_row

    rows = []
    for item in read_unit(unit, cfg.input):
        if not item.error and "row" in item.payload:
            item = image_from_row(item, cfg.input, unit.root)
        if item.error:
            rows.append(prep_row(unit.unit, item.id, item.locator, "image", reason=item.error[0], stage="read", detail=item.error[1]))
            continue
        fields, bad = judge_image(item.payload["image"], cfg)
        if bad:
            rows.append(prep_row(unit.unit, item.id, item.locator, "image", reason=bad[0], stage=bad[1], detail=bad[2]))
        else:
            rows.append(prep_row(unit.unit, item.id, item.locator, "image", data=item.payload["image"], **fields))
    return rows


def read_unit_prep(layout: OutputLayout, unit: str, kinds: tuple[str, ...], columns: list[str] | None = None) -> list[dict[str, Any]]:
    """The accepted prep rows of one unit of the given kinds (on a worker: bytes included unless
    ``columns`` leaves them out)."""
    import pyarrow.parquet as pq

    with layout.loc.open(prep_path(unit), "rb") as f:
        t = pq.read_table(f, columns=columns, use_threads=False, pre_buffer=False)
    keep = pc.and_(pc.equal(t.column("reason"), ""), pc.is_in(t.column("kind"), pa.array(list(kinds))))
    return t.filter(keep).to_pylist()
