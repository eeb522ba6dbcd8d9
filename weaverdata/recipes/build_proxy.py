"""`weaverdata build-proxy`: textual-proxy interleaved documents for planner training.

Four sources (``recipe:`` in the config), one module each in :mod:`weaverdata.recipes.proxy`,
one shape of job; the driver holds unit ids and small per-item fields, never image bytes,
prompts or generated texts:

1. **prepare** (a Ray task per unit, ``work/prep/part-<unit>.parquet``): the source's inputs
   read and checked (documents parsed and filtered, their images resolved and decoded; images
   decoded and filtered; seeds read). Rejected inputs keep a row with their reason.
2. **plan** (driver, metadata only; image groups and documents): CLIP embeddings come back as
   vectors, and the driver decides what spans units (groups, repeated subjects) into small
   per-unit item files (``work/items``).
3. **text** (a Ray task per unit on the job's engines, :mod:`weaverdata.recipes.text_stage`):
   the source's rounds of requests, built from the prep files on the worker; every assistant
   turn then passes :func:`weaverdata.proxy.format.check_or_repair` (repaired when certain, else
   rejected with its ``proxy_*`` reason) and is fingerprinted for the duplicate check. Written
   to ``work/drafts/part-<unit>.parquet``; results are cached per unit as they finish.
4. **settle** (driver, fingerprints and ids only): exact and near duplicates (MinHash) across
   the whole job; the outcome of every input whose sample lives in another unit. Written to
   ``work/settled.parquet``, sorted by unit.
5. **write** (a Ray task per pending unit): the unit's kept samples into shards split by recipe,
   shape and input-image count; every input of the unit in no sample is a reject row with its
   reason.

With ``text.constrain`` a generation that must contain proxies is held by a regular expression
(vLLM structured outputs): the given descriptions, in order, between free text.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from weaverdata.config import ProxyConfig
from weaverdata.engines.pool_backend import EngineHandle
from weaverdata.io.layout import WORK_DIR, OutputLayout
from weaverdata.io.shards import RejectRow, UnitWriter
from weaverdata.io.sources import WorkUnit
from weaverdata.io.storage import Location
from weaverdata.proxy.dedup import MinHasher, duplicates_of
from weaverdata.proxy.rounds import TextRound, check_drafts
from weaverdata.recipes.proxy import source_for
from weaverdata.recipes.proxy.base import META_COLUMNS, PREP_SCHEMA
from weaverdata.recipes.staged import DETAILS, StageClock, prep_path, prepare_all, read_items, read_prep_media, reject_dict, write_prep
from weaverdata.recipes.text_stage import JobEngines, drafts_path, read_drafts, run_text_stage, unit_captioner, write_drafts

log = logging.getLogger(__name__)

RECIPE = "build-proxy"
SCHEMA = "proxy_document"
SETTLED = posixpath.join(WORK_DIR, "settled.parquet")

DRAFTS_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),  # sample | failed (an input with no sample, and why)
        ("id", pa.string()),  # sample id, or the failed input's id
        ("unit", pa.string()),  # the unit it is written in (sample), or the input's unit (failed)
        ("record", pa.string()),  # sample: the proxy_document record, JSON
        ("shape", pa.string()),
        ("inputs", pa.list_(pa.string())),  # sample: its input ids
        ("input_units", pa.list_(pa.string())),  # their units (a group's members may be elsewhere)
        ("input_images", pa.list_(pa.string())),  # sample: prep ids of images shown in the user turn (this unit's)
        ("exact_key", pa.string()),
        ("signature", pa.list_(pa.uint32())),  # MinHash, for the job-wide near-duplicate check
        ("reason", pa.string()),  # failed: reason and detail
        ("detail", pa.string()),
    ]
)

SETTLED_SCHEMA = pa.schema(
    [
        ("unit", pa.string()),
        ("kind", pa.string()),  # dropped (a sample: a duplicate) | used | failed (an input whose sample lives in another unit)
        ("id", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)


# -- stage 1: prepare ----------------------------------------------------------------------------


def prepare_unit(unit: WorkUnit, cfg: ProxyConfig) -> dict[str, Any]:
    """Stage 1 for one unit; idempotent. A document's images are not inputs (the document is)."""
    source = source_for(cfg.recipe)
    return write_prep(cfg, unit, lambda: source.prepare(unit, cfg), PREP_SCHEMA, counts=source.is_input)


# -- stage 3: text (a Ray task per unit) -----------------------------------------------------------


def text_unit(unit: WorkUnit, cfg: ProxyConfig, handle: EngineHandle) -> dict[str, Any]:
    """The source's rounds for one unit, on the job's engines; the unit's drafts in one write."""
    layout = OutputLayout(Location.of(cfg.output.path))
    source = source_for(cfg.recipe)
    captioner = unit_captioner(handle, layout, unit.unit)
    rounds = TextRound(cfg, captioner)
    try:
        drafts, failed = source.drafts(unit, cfg, rounds, layout)
    finally:
        captioner.close()
    records, failed_checks, repairs = check_drafts(drafts, cfg, rounds.tags)
    for k, v in failed_checks.items():
        failed.setdefault(k, v)
    unit_of = {m: u for it in read_items(layout, unit.unit) for m, u in zip(it["members"], it["member_units"])}
    rows: list[dict[str, Any]] = []
    for r in records:
        rows.append({"kind": "sample", "id": r["record"]["id"], "unit": r["unit"], "record": json.dumps(r["record"], ensure_ascii=False), "shape": r["record"]["shape"],
                     "inputs": r["inputs"], "input_units": [unit_of.get(i, unit.unit) for i in r["inputs"]], "input_images": r["input_images"],
                     "exact_key": r["exact_key"], "signature": np.asarray(r["signature"], dtype=np.uint32).tolist(), "reason": "", "detail": ""})
    for i, (reason, detail) in failed.items():
        rows.append({"kind": "failed", "id": i, "unit": unit_of.get(i, unit.unit), "record": None, "shape": "", "inputs": [], "input_units": [], "input_images": [],
                     "exact_key": "", "signature": [], "reason": reason, "detail": detail})
    write_drafts(layout, unit.unit, rows, DRAFTS_SCHEMA)
    return {"unit": unit.unit, "samples": len(records), "rejected": len(failed), "captioning": dict(captioner.stats), "repairs": dict(repairs),
            "rounds": len(rounds.log), "round_seconds": round(rounds.seconds, 3)}


# -- stage 4: settle (driver: fingerprints and ids) ----------------------------------------------


def settle(cfg: ProxyConfig, units: list[WorkUnit], layout: OutputLayout) -> dict[str, Any]:
    """Duplicates across the job, and the outcome of inputs whose sample lives in another unit,
    into ``work/settled.parquet`` (sorted by unit). Reads ids, shapes, reasons and fingerprints of
    every unit's drafts, never a record."""
    columns = ["kind", "id", "unit", "shape", "inputs", "input_units", "exact_key", "signature", "reason"]
    sample_ids: list[str] = []
    sample_units: list[str] = []
    sample_shapes: list[str] = []
    keys: list[str] = []
    sigs: list[np.ndarray] = []
    inputs: list[tuple[list[str], list[str]]] = []
    failed_reasons: Counter = Counter()
    for u in units:  # unit order, then each unit's own (input) order: the first of a duplicate cluster is kept
        t = read_drafts(layout, u.unit, columns)
        kinds = t.column("kind").to_pylist()
        for k, (i, unit, shape, ins, ins_units, key, sig, reason) in enumerate(zip(*(t.column(c).to_pylist() for c in columns[1:]))):
            if kinds[k] == "failed":
                failed_reasons[reason] += 1
                continue
            sample_ids.append(i)
            sample_units.append(unit)
            sample_shapes.append(shape)
            keys.append(key)
            sigs.append(np.asarray(sig, dtype=np.uint32))
            inputs.append((ins, ins_units))
    dropped = duplicates_of(keys, sigs, threshold=cfg.dedup_threshold, hasher=MinHasher()) if cfg.dedup else {}
    rows: list[dict[str, Any]] = []
    for k, (reason, first) in dropped.items():
        rows.append({"unit": sample_units[k], "kind": "dropped", "id": sample_ids[k], "reason": reason, "detail": f"same text as sample {sample_ids[first]}"})
    for k, (ins, ins_units) in enumerate(inputs):  # inputs kept in another unit's sample (image groups)
        for i, iu in zip(ins, ins_units):
            if iu != sample_units[k]:
                if k in dropped:
                    reason, first = dropped[k]
                    rows.append({"unit": iu, "kind": "failed", "id": i, "reason": reason, "detail": f"same text as sample {sample_ids[first]}"})
                else:
                    rows.append({"unit": iu, "kind": "used", "id": i, "reason": "", "detail": ""})
    rows.sort(key=lambda r: (r["unit"], r["kind"], r["id"]))
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SETTLED_SCHEMA), sink, compression="zstd", row_group_size=4096)
    layout.loc.write_bytes_atomic(SETTLED, sink.getvalue())
    for reason, _ in dropped.values():
        failed_reasons[reason] += 1
    kept = len(sample_ids) - len(dropped)
    by_shape = Counter(s for k, s in enumerate(sample_shapes) if k not in dropped)
    return {"samples": kept, "samples_by_shape": dict(sorted(by_shape.items())), "samples_failed_by_reason": dict(sorted(failed_reasons.items()))}


def read_settled(layout: OutputLayout, unit: str) -> list[dict[str, Any]]:
    """The settled rows of one unit (row groups of other units are skipped by their statistics)."""
    with layout.loc.open(SETTLED, "rb") as f:
        return pq.read_table(f, filters=[("unit", "=", unit)], use_threads=False, pre_buffer=False).to_pylist()


# -- the driver stage ------------------------------------------------------------------------------


def plan_job(cfg: ProxyConfig, units: list[WorkUnit], pending: list[WorkUnit], layout: OutputLayout) -> dict[str, Any]:
    """Stages 1-4 over the whole input (deterministic, so committed units stay consistent with
    the rest). Returns the run's details for the summary."""
    source = source_for(cfg.recipe)
    clock = StageClock()
    prepare_all(cfg, units, layout, prepare_unit, "build-proxy prepare")
    clock.lap("prepare")
    details: dict[str, Any] = {"recipe": cfg.recipe, "constrained": cfg.text.constrain}
    text_todo = [u for u in units if not layout.loc.exists(drafts_path(u.unit))]
    with JobEngines(cfg.engine) as engines:
        if text_todo:
            details.update(source.plan(cfg, units, layout))
        clock.lap("plan")
        stats = run_text_stage(cfg, units, layout, text_unit, engines, "build-proxy text")
        details.update(engines.report())
    clock.lap("text")
    captioning: Counter = Counter()
    repairs: Counter = Counter()
    for s in stats:
        captioning.update(s.get("captioning", {}))
        repairs.update(s.get("repairs", {}))
    details.update(settle(cfg, units, layout))
    clock.lap("settle")
    details.update({
        "captioning": dict(captioning),  # this run's requests (a resumed run counts only the units it redid)
        "repairs": dict(sorted(repairs.items())),
        "engine_rounds": max((s.get("rounds", 0) for s in stats), default=0),
        "text_units": len(stats),
        "stage_seconds": clock.laps,  # the write stage follows (summary timings: wall_seconds)
    })
    layout.write_json(DETAILS, details)
    return details


# -- stage 5: write --------------------------------------------------------------------------------


def process_unit(unit: WorkUnit, cfg: ProxyConfig) -> dict[str, Any]:
    """Write the unit's kept samples and every input of the unit that is in none, then commit."""
    layout = OutputLayout(Location.of(cfg.output.path))
    source = source_for(cfg.recipe)
    drafts = read_drafts(layout, unit.unit).to_pylist()
    settled = read_settled(layout, unit.unit)
    dropped = {r["id"]: r for r in settled if r["kind"] == "dropped"}
    used: set[str] = {r["id"] for r in settled if r["kind"] == "used"}
    failed: dict[str, tuple[str, str]] = {r["id"]: (r["reason"], r["detail"]) for r in settled if r["kind"] == "failed"}
    samples = []
    for d in drafts:
        if d["kind"] == "failed":
            failed.setdefault(d["id"], (d["reason"], d["detail"]))
        elif d["id"] in dropped:
            for i in d["inputs"]:
                failed.setdefault(i, (dropped[d["id"]]["reason"], dropped[d["id"]]["detail"]))
        else:
            samples.append(d)
            used.update(i for i, iu in zip(d["inputs"], d["input_units"]) if iu == unit.unit)
    with layout.loc.open(prep_path(unit.unit), "rb") as f:
        prep = pq.read_table(f, columns=META_COLUMNS, use_threads=False, pre_buffer=False)
    inputs = [r for r in prep.to_pylist() if source.is_input(r)]
    media_of = read_prep_media(layout, unit.unit, {i for s in samples for i in s["input_images"]})
    writer = UnitWriter.for_output(layout, unit.unit, SCHEMA, unit.describe(), cfg.output, composite=True)
    try:
        for s in sorted(samples, key=lambda s: s["id"]):
            rec = json.loads(s["record"])
            group = f"{rec['recipe'].replace('_', '-')}-{rec['shape'].replace('_', '-')}"
            writer.add(rec, {"input_images": [media_of[i] for i in s["input_images"]]}, group=group)
        used_here = []
        for row in inputs:
            if row["reason"]:
                r = reject_dict(row, row["reason"], row["stage"], row["detail"])
            elif row["id"] in used:
                used_here.append(row["id"])
                continue
            else:
                reason, detail = failed.get(row["id"], ("no_output", "not in any sample"))
                r = reject_dict(row, reason, _stage_of(reason), detail)
            writer.reject(RejectRow(r["id"], r["source"], r["reason"], r["stage"], r["detail"] or None, r["sha256"]))
        writer.mark_used(used_here)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def _stage_of(reason: str) -> str:
    if reason.startswith("caption_"):
        return "caption"
    if reason.startswith("duplicate"):
        return "dedup"
    return "group" if reason == "no_group" else "validate"
