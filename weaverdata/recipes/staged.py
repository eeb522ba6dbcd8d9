"""Plumbing shared by the recipes that run as staged jobs (build-refs, build-proxy).

A staged job keeps its resumable intermediate state under ``OUT/work/``: one *prep* Parquet file
per unit (written whole, atomically, by a Ray task; an existing one is kept on resume), one
*plan* JSON per pending unit (what its write task commits), and the recipe's ``details.json``.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from weaverdata.io.layout import WORK_DIR, OutputLayout
from weaverdata.io.shards import Media
from weaverdata.io.sources import WorkUnit
from weaverdata.io.storage import Location

DETAILS = posixpath.join(WORK_DIR, "details.json")


def prep_path(unit: str) -> str:
    return posixpath.join(WORK_DIR, "prep", f"part-{unit}.parquet")


def plan_path(unit: str) -> str:
    return posixpath.join(WORK_DIR, "plans", f"part-{unit}.json")


def write_prep(cfg: Any, unit: WorkUnit, make_rows: Callable[[], list[dict[str, Any]]], schema: pa.Schema, *, counts: Callable[[dict[str, Any]], bool] = lambda r: True) -> dict[str, Any]:
    """Run `make_rows` for a unit unless its prep file exists; keep the first row of each id;
    write the file atomically. Returns the unit's counts (of the rows `counts` selects)."""
    layout = OutputLayout(Location.of(cfg.output.path))
    rel = prep_path(unit.unit)
    if layout.loc.exists(rel):
        return {"unit": unit.unit, "accepted": 0, "rejected": 0, "cached": True}
    seen: set[str] = set()
    unique = []
    for r in make_rows():  # the same locator twice is one input
        if r["id"] not in seen:
            seen.add(r["id"])
            unique.append(r)
    sink = io.BytesIO()
    table = pa.Table.from_pylist(unique, schema=schema)
    pq.write_table(table, sink, compression="zstd", row_group_size=rows_per_group(table))
    layout.loc.write_bytes_atomic(rel, sink.getvalue())
    inputs = [r for r in unique if counts(r)]
    ok = sum(1 for r in inputs if not r["reason"])
    return {"unit": unit.unit, "accepted": ok, "rejected": len(inputs) - ok}


PREP_ROW_GROUP_BYTES = 8 * 2**20


def rows_per_group(table: pa.Table, target_bytes: int = PREP_ROW_GROUP_BYTES) -> int:
    """Rows per Parquet row group so that a group holds about `target_bytes` of images: the model
    stages read prep files through Ray Data one row group at a time, so a whole unit's images
    never travel as one object (it would fill a small object store and spill)."""
    if table.num_rows == 0:
        return 1
    return max(1, min(table.num_rows, int(target_bytes * table.num_rows / max(1, table.nbytes))))


def prepare_all(cfg: Any, units: list[WorkUnit], layout: OutputLayout, prepare_unit: Callable[[WorkUnit, Any], dict[str, Any]], name: str) -> None:
    """Stage 1 over every unit without a prep file (Ray tasks); fails the run with a clear
    message if any unit could not be prepared (a rerun retries only those)."""
    from weaverdata.runtime import RuntimeError_, run_units

    todo = [u for u in units if not layout.loc.exists(prep_path(u.unit))]
    if not todo:
        return
    outcomes = run_units(prepare_unit, todo, (cfg,), cfg=cfg.runtime, total=len(todo), name=name)
    failed = [o for o in outcomes if o.error]
    if failed:
        raise RuntimeError_(f"preparing {len(failed)} unit(s) failed, e.g. unit {failed[0].unit}: {failed[0].error}; rerun the same command to retry")


def read_prep(layout: OutputLayout, units: list[WorkUnit], schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    tables = []
    for u in units:
        with layout.loc.open(prep_path(u.unit), "rb") as f:
            tables.append(pq.read_table(f, columns=columns, use_threads=False, pre_buffer=False))
    if tables:
        return pa.concat_tables(tables)
    return (schema if columns is None else pa.schema([schema.field(c) for c in columns])).empty_table()


def read_prep_media(layout: OutputLayout, unit: str, wanted: set[str]) -> dict[str, Media]:
    """The stored bytes (and extension) of the `wanted` ids of one unit's prep file."""
    if not wanted:
        return {}
    with layout.loc.open(prep_path(unit), "rb") as f:
        t = pq.read_table(f, columns=["id", "data", "ext"], use_threads=False, pre_buffer=False)
    return {i: Media(e, d) for i, d, e in zip(t.column("id").to_pylist(), t.column("data").to_pylist(), t.column("ext").to_pylist()) if i in wanted}


def read_plan(layout: OutputLayout, unit: WorkUnit) -> dict[str, Any]:
    plan = layout.read_json(plan_path(unit.unit))
    if plan is None:
        raise RuntimeError(f"no plan for unit {unit.unit} ({plan_path(unit.unit)} missing): rerun the command")
    return plan


def reject_dict(row: dict[str, Any], reason: str, stage: str, detail: str) -> dict[str, Any]:
    return {"id": row["id"], "source": row["locator"], "reason": reason, "stage": stage, "detail": detail, "sha256": row["sha256"] or None}


def read_prep_meta(layout: OutputLayout, units: list[WorkUnit], columns: list[str]) -> list[dict[str, Any]]:
    """Small per-row fields of every unit's prep file (never the image bytes), for a driver step."""
    if "data" in columns:
        raise ValueError("the driver reads prep metadata only, not the image bytes")
    rows: list[dict[str, Any]] = []
    for u in units:
        with layout.loc.open(prep_path(u.unit), "rb") as f:
            rows += pq.read_table(f, columns=columns, use_threads=False, pre_buffer=False).to_pylist()
    return rows


def embed_prep(layout: OutputLayout, units: list[WorkUnit], clip: Any, *, kind: str | None = None) -> tuple[list[str], Any]:
    """CLIP embeddings of the accepted prep images (of one ``kind``, if the prep table has kinds):
    read, decoded and embedded by Ray Data on the workers; only ids and vectors reach the driver.
    Images the embedder could not read are left out."""
    import numpy as np
    import ray
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    from weaverdata.models.clip import embed_dataset

    if not units:
        return [], np.zeros((0, 1), np.float32)
    fs = PyFileSystem(FSSpecHandler(layout.loc.fs))
    columns = ["id", "data", "reason"] + (["kind"] if kind else [])
    ds = ray.data.read_parquet([layout.loc.path(prep_path(u.unit)) for u in units], filesystem=fs, columns=columns)
    ds = ds.filter(expr="reason == ''" + (f" and kind == '{kind}'" if kind else "")).drop_columns(["reason"] + (["kind"] if kind else []))
    ids: list[str] = []
    vectors: list[Any] = []
    for batch in embed_dataset(ds, clip, image_column="data").iter_batches(batch_size=1024, batch_format="numpy"):
        for i, e, err in zip(batch["id"], batch["embedding"], batch["clip_error"]):
            if not err:
                ids.append(str(i))
                vectors.append(np.asarray(e, dtype=np.float32))
    return ids, (np.stack(vectors) if vectors else np.zeros((0, 1), np.float32))


ITEMS_SCHEMA = pa.schema([("kind", pa.string()), ("id", pa.string()), ("members", pa.list_(pa.string())), ("member_units", pa.list_(pa.string()))])
"""What a driver step decided for a unit's text stage: groups (``kind`` group: id, members, the
members' units), links (``link``: an image and the earlier one it repeats), ``no_group``."""


def items_path(unit: str) -> str:
    return posixpath.join(WORK_DIR, "items", f"part-{unit}.parquet")


def write_items(layout: OutputLayout, unit: str, items: list[dict[str, Any]]) -> None:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(items, schema=ITEMS_SCHEMA), sink, compression="zstd")
    layout.loc.write_bytes_atomic(items_path(unit), sink.getvalue())


def read_items(layout: OutputLayout, unit: str) -> list[dict[str, Any]]:
    """The unit's items; none if the driver step wrote no file (the recipe has no such step)."""
    if not layout.loc.exists(items_path(unit)):
        return []
    with layout.loc.open(items_path(unit), "rb") as f:
        return pq.read_table(f, use_threads=False, pre_buffer=False).to_pylist()


def read_prep_rows(layout: OutputLayout, unit: str, ids: set[str], columns: list[str] | None = None) -> list[dict[str, Any]]:
    """The rows of one unit's prep file with the given ids (on a worker)."""
    if not ids:
        return []
    import pyarrow.compute as pc

    with layout.loc.open(prep_path(unit), "rb") as f:
        t = pq.read_table(f, columns=columns, use_threads=False, pre_buffer=False)
    return t.filter(pc.is_in(t.column("id"), pa.array(sorted(ids)))).to_pylist()


class StageClock:
    """Wall seconds of a job's stages, in order (for summary details and the scale benchmark)."""

    def __init__(self) -> None:
        import time

        self._time = time.monotonic
        self._last = self._time()
        self.laps: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = self._time()
        self.laps[stage] = round(self.laps.get(stage, 0.0) + now - self._last, 3)
        self._last = now
