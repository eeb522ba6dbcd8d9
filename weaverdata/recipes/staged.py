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
