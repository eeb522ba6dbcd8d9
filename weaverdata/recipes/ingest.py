"""`weaverdata ingest`: any image source into validated, hashed, sharded image records.

Reads folders of images (with .txt/.json sidecars), WebDataset tars, JSON Lines and Parquet
rows that hold or point at images, HF datasets and videos (sampled frames); decodes every image
safely (pixel limit, EXIF orientation, every mode to RGB) only to check and hash it; stores the
source bytes unchanged (unless resizing is configured); rejects the rest with a reason.
"""

from __future__ import annotations

import hashlib
from typing import Any

from weaverdata.config import IngestConfig
from weaverdata.io.layout import OutputLayout
from weaverdata.io.shards import Media, RejectRow, UnitWriter
from weaverdata.io.sources import SourceItem, WorkUnit, image_from_row, read_unit
from weaverdata.io.storage import Location
from weaverdata.media.image import ImageRejected, decode_image, encode, resize_max_side

RECIPE = "ingest"
SCHEMA = "image_record"


def image_record(item: SourceItem, cfg: IngestConfig) -> tuple[dict[str, Any], Media] | RejectRow:
    """Pure step: one read item -> (record, stored media) or a reject row with its reason."""
    sid = item.id
    if item.error:
        return RejectRow(sid, item.locator, item.error[0], "read", item.error[1])
    data: bytes = item.payload["image"]
    try:
        img = decode_image(data, max_pixels=cfg.image.max_pixels)
    except ImageRejected as exc:
        return RejectRow(sid, item.locator, exc.reason, "decode", exc.detail, hashlib.sha256(data).hexdigest() if data else None)
    stored, ext, fmt, width, height = data, img.ext, img.format, img.width, img.height
    if cfg.image.resize_max_side and max(img.width, img.height) > cfg.image.resize_max_side:
        small = resize_max_side(img.rgb, cfg.image.resize_max_side)
        stored, ext = encode(small, cfg.image.resize_format, cfg.image.resize_quality)
        fmt, (width, height) = cfg.image.resize_format, small.size
    record = {
        "id": sid,
        "source": item.locator,
        "sha256": img.sha256,
        "phash": img.phash,
        "width": width,
        "height": height,
        "format": fmt,
        "mode": img.mode,
        "orientation": img.orientation,
        "frames": img.frames,
        "num_bytes": len(stored),
        "caption": item.payload.get("caption") or "",
        "video": item.payload.get("video"),
    }
    return record, Media(ext, stored)


def process_unit(unit: WorkUnit, cfg: IngestConfig) -> dict[str, Any]:
    """Read, check and write one unit, then commit it (stats file last)."""
    layout = OutputLayout(Location.of(cfg.output.path))
    writer = UnitWriter.for_output(layout, unit.unit, SCHEMA, unit.describe(), cfg.output)
    try:
        for item in read_unit(unit, cfg.input, cfg.video):
            if not item.error and "row" in item.payload:
                item = image_from_row(item, cfg.input, unit.root)
            result = image_record(item, cfg)
            if isinstance(result, RejectRow):
                writer.reject(result)
            else:
                record, media = result
                writer.add(record, {"image": media}, group="frames" if record["video"] else "images")
        return writer.commit()
    except BaseException:
        writer.abort()
        raise
