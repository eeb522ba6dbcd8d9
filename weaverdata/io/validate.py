"""`weaverdata validate OUT`: check an output folder against the schemas and the accounting.

Checks, for every unit the run planned: the commit marker exists and fits its schema; each
shard's tar and Parquet exist with the recorded sizes, read to the end, hold the same ids in the
same order, and every record fits its schema; within a group every record has the same
null/empty fields (so HF `datasets` can infer one feature set); reference samples, in the tar
JSON and in the Parquet, name the model, revision and prompt of each non-empty generated text
and of no empty one (`generated_by_errors`); the rejects table has the recorded rows;
inputs = accepted + rejected per unit and for the run; no id appears twice; where image scorers
are configured, ``embeddings/scores.parquet`` holds a finite score per scorer and its threshold
accounts for the ``score_<name>`` rejects.
"""

from __future__ import annotations

import json
import posixpath
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from weaverdata import schemas
from weaverdata.io.layout import RUN_MANIFEST, SUMMARY_JSON, OutputLayout
from weaverdata.io.shards import null_pattern
from weaverdata.io.storage import Location

GENERATED_FIELDS = ("description", "instruction", "dynamics")  # reference samples: the model-written texts
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    samples: int = 0
    rejects: int = 0
    units: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, msg: str) -> None:
        self.errors.append(msg)


def _read_tar(layout: OutputLayout, rel: str, report: Report) -> list[tuple[str, dict[str, bytes]]] | None:
    samples: list[tuple[str, dict[str, bytes]]] = []
    try:
        with layout.loc.open(rel, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                data = tar.extractfile(info)
                samples[-1][1][ext] = data.read() if data else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        report.error(f"{rel}: unreadable tar ({type(exc).__name__}: {exc})")
        return None
    return samples


def generated_by_errors(record: dict, engine: tuple[str, str] | None = None) -> list[str]:
    """A reference sample's text provenance, as readable problems (empty when sound).

    build-refs writes no template text, so each non-empty description, instruction and dynamics
    must name the model (non-empty) and prompt (a sha256) that wrote it in `generated_by`, and
    each empty one must have a null entry. With `engine` (the run's engine.model and
    engine.revision, from run.json), the model and revision must be those.
    """
    by = record.get("generated_by")
    if not isinstance(by, dict):
        what = "missing" if by is None else f"not an object ({type(by).__name__})"
        return [f"generated_by is {what}: no model or prompt named for its texts"]
    errors = []
    for name in GENERATED_FIELDS:
        text, who = record.get(name), by.get(name)
        if not text:
            if who is not None:
                errors.append(f"{name} is empty but generated_by.{name} is {who!r} (null expected: no model wrote it)")
            continue
        if not isinstance(who, dict):
            errors.append(f"{name} is not empty but generated_by.{name} is {'null' if who is None else repr(who)}: which model and prompt wrote it is unknown")
            continue
        model, revision, sha = who.get("model"), who.get("revision"), who.get("prompt_sha256")
        if not model:
            errors.append(f"generated_by.{name}.model is empty")
        if not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
            errors.append(f"generated_by.{name}.prompt_sha256 is not a sha256: {sha!r}")
        if engine is not None and model and (model, revision or "") != engine:
            errors.append(f"generated_by.{name} names {model!r} revision {revision!r}, but the run's engine is {engine[0]!r} revision {engine[1]!r}")
    return errors


def _check_output(layout: OutputLayout, unit: str, out: dict, report: Report, patterns: dict[str, frozenset], ids: Counter, engine: tuple[str, str] | None = None) -> None:
    loc = layout.loc
    schema_name = out["schema"]
    for kind in ("tar", "parquet"):
        rel = out[kind]
        if not loc.exists(rel):
            report.error(f"unit {unit}: shard {rel} is missing")
            return
        size = loc.fs.size(loc.path(rel))
        if size != out[f"{kind}_bytes"]:
            report.error(f"unit {unit}: {rel} has {size} bytes, its stats say {out[f'{kind}_bytes']} (truncated or replaced)")
            return
    samples = _read_tar(layout, out["tar"], report)
    if samples is None:
        return
    if len(samples) != out["samples"]:
        report.error(f"unit {unit}: {out['tar']} holds {len(samples)} samples, its stats say {out['samples']}")
    tar_ids = []
    needs_media = any(mf.kind == "image" for mf in schemas.media_fields(schema_name))  # a list of images may be empty
    texts_generated = schema_name == "reference_sample"
    for key, members in samples:
        tar_ids.append(key)
        if "json" not in members:
            report.error(f"{out['tar']}: sample {key} has no json member")
            continue
        try:
            record = json.loads(members["json"])
        except json.JSONDecodeError as exc:
            report.error(f"{out['tar']}: sample {key} json is not JSON: {exc}")
            continue
        errs = schemas.record_errors(schema_name, record)
        if errs:
            report.error(f"{out['tar']}: sample {key} breaks {schema_name}: {errs[0]}")
        if record.get("id") != key:
            report.error(f"{out['tar']}: member key {key} but record id {record.get('id')}")
        if texts_generated:
            for err in generated_by_errors(record, engine):
                report.error(f"{out['tar']}: sample {key}: {err}")
        pattern = null_pattern(record)
        first = patterns.setdefault(out["group"], pattern)
        if pattern != first:
            report.error(f"group {out['group']}: sample {key} has null/empty fields {sorted(pattern)}, others {sorted(first)}")
        if needs_media and len(members) < 2:
            report.error(f"{out['tar']}: sample {key} has no media member")
    columns = ["id", *GENERATED_FIELDS, "generated_by"] if texts_generated else ["id"]
    try:
        with loc.open(out["parquet"], "rb") as f:
            pf = pq.ParquetFile(f, pre_buffer=False)
            absent = [c for c in columns if c not in pf.schema_arrow.names]
            if absent:
                report.error(f"{out['parquet']}: no column {', '.join(absent)}")
                if "id" in absent:
                    return
            table = pf.read(columns=[c for c in columns if c not in absent], use_threads=False)
    except (OSError, ValueError) as exc:
        report.error(f"{out['parquet']}: unreadable Parquet ({exc})")
        return
    pq_ids = table.column("id").to_pylist()
    if texts_generated and not absent:
        for row in table.to_pylist():
            for err in generated_by_errors(row, engine):
                report.error(f"{out['parquet']}: sample {row['id']}: {err}")
    if pq_ids != tar_ids:
        report.error(f"unit {unit}: {out['parquet']} ids differ from {out['tar']} ({len(pq_ids)} vs {len(tar_ids)})")
    ids.update(tar_ids)
    report.samples += len(tar_ids)


def validate_output(url: str) -> Report:
    report = Report()
    layout = OutputLayout(Location.of(url))
    if not layout.loc.exists():
        report.error(f"{url} does not exist")
        return report
    manifest = layout.read_json(RUN_MANIFEST)
    if manifest is None:
        report.error(f"{url} has no {RUN_MANIFEST}: not a weaverdata output folder")
        return report
    summary = layout.read_json(SUMMARY_JSON)
    if summary is None:
        report.error(f"no {SUMMARY_JSON}: the run never finished (rerun the same command to resume)")
    else:
        for err in schemas.record_errors("run_summary", summary):
            report.error(f"{SUMMARY_JSON}: {err}")
    totals = Counter()
    reasons: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    patterns: dict[str, frozenset] = {}
    ids: Counter[str] = Counter()
    planned = [u["unit"] for u in manifest.get("units", [])]
    engine = None
    if manifest.get("recipe") == "build-refs":
        cfg_engine = (manifest.get("config") or {}).get("engine") or {}
        engine = (cfg_engine.get("model") or "", cfg_engine.get("revision") or "")
    for unit in planned:
        stats = layout.read_json(layout.stats(unit))
        if stats is None:
            report.error(f"unit {unit} is not committed (no {layout.stats(unit)})")
            continue
        report.units += 1
        errs = schemas.record_errors("shard_stats", stats)
        if errs:
            report.error(f"{layout.stats(unit)}: {errs[0]}")
            continue
        if stats["inputs"] != stats["accepted"] + stats["rejected"]:
            report.error(f"unit {unit}: inputs {stats['inputs']} != accepted {stats['accepted']} + rejected {stats['rejected']}")
        expected = stats.get("samples", stats["accepted"])
        if sum(o["samples"] for o in stats["outputs"]) != expected:
            what = "samples" if "samples" in stats else "accepted"
            report.error(f"unit {unit}: shards hold {sum(o['samples'] for o in stats['outputs'])} samples, {what} is {expected}")
        totals["samples"] += expected
        for out in stats["outputs"]:
            _check_output(layout, unit, out, report, patterns, ids, engine)
            groups[out["group"]] += out["samples"]
        _check_rejects(layout, unit, stats, report, ids)
        totals.update({k: stats[k] for k in ("inputs", "accepted", "rejected")})
        reasons.update(stats["rejected_by_reason"])
    _check_scores(layout, manifest, reasons, report)
    dup = [i for i, n in ids.items() if n > 1]
    if dup:
        report.error(f"{len(dup)} ids appear more than once, e.g. {dup[:3]}")
    if summary is not None:
        for key in ("inputs", "accepted", "rejected"):
            if summary.get(key) != totals[key]:
                report.error(f"{SUMMARY_JSON}: {key} = {summary.get(key)} but the committed units add up to {totals[key]}")
        if "samples" in summary and summary["samples"] != totals["samples"]:
            report.error(f"{SUMMARY_JSON}: samples = {summary['samples']} but the committed units add up to {totals['samples']}")
        if summary.get("inputs") != summary.get("accepted", 0) + summary.get("rejected", 0):
            report.error(f"{SUMMARY_JSON}: inputs {summary.get('inputs')} != accepted + rejected")
        if summary.get("rejected_by_reason") != dict(reasons):
            report.error(f"{SUMMARY_JSON}: rejected_by_reason does not match the units' stats")
        if summary.get("samples_by_group") != dict(groups):
            report.error(f"{SUMMARY_JSON}: samples_by_group does not match the units' stats")
        if summary.get("status") != "complete":
            report.error(f"{SUMMARY_JSON}: status is {summary.get('status')!r} (rerun the same command to finish)")
    leftovers = [p for p in layout.loc.fs.find(layout.loc.root) if ".tmp-" in posixpath.basename(p)]
    if leftovers:
        report.warnings.append(f"{len(leftovers)} temporary files from killed attempts (ignored; removed when their unit reruns)")
    return report


def _check_scores(layout: OutputLayout, manifest: dict, reasons: Counter, report: Report) -> None:
    """Configured image scorers: ``embeddings/scores.parquet`` holds a finite score per scorer for
    every scored image, and each scorer's score_<name> rejects are no more than the images its
    threshold puts on the wrong side."""
    import numpy as np

    scorers = (manifest.get("config") or {}).get("scorers") or []
    if not scorers:
        return
    rel = "embeddings/scores.parquet"
    if not layout.loc.exists(rel):
        report.error(f"scorers are configured ({', '.join(s['name'] for s in scorers)}) but {rel} is missing")
        return
    with layout.loc.open(rel, "rb") as f:
        table = pq.read_table(f, use_threads=False, pre_buffer=False)
    if table.column("id").null_count or len(set(table.column("id").to_pylist())) != table.num_rows:
        report.error(f"{rel}: ids are missing or repeated")
    for s in scorers:
        if s["name"] not in table.column_names:
            report.error(f"{rel}: no column for scorer {s['name']}")
            continue
        v = np.asarray(table.column(s["name"]).to_numpy(zero_copy_only=False), dtype=np.float64)
        if table.column(s["name"]).null_count or not np.isfinite(v).all():
            report.error(f"{rel}: scorer {s['name']} has missing or non-finite scores")
            continue
        if s.get("threshold") is not None:
            wrong = int(((v < s["threshold"]) if s.get("keep", "above") == "above" else (v > s["threshold"])).sum())
            if reasons.get(f"score_{s['name']}", 0) > wrong:
                report.error(f"{rel}: {reasons['score_' + s['name']]} rejects score_{s['name']}, but only {wrong} scores fail its threshold")


def _check_rejects(layout: OutputLayout, unit: str, stats: dict, report: Report, ids: Counter) -> None:
    rel = stats["rejects_file"]
    if not layout.loc.exists(rel):
        report.error(f"unit {unit}: rejects file {rel} is missing")
        return
    try:
        with layout.loc.open(rel, "rb") as f:
            rows = pq.read_table(f, use_threads=False, pre_buffer=False).to_pylist()
    except (OSError, ValueError) as exc:
        report.error(f"unit {unit}: unreadable rejects {rel} ({exc})")
        return
    if len(rows) != stats["rejected"]:
        report.error(f"unit {unit}: {rel} has {len(rows)} rows, its stats say {stats['rejected']}")
    counted = Counter(r["reason"] for r in rows)
    if dict(counted) != stats["rejected_by_reason"]:
        report.error(f"unit {unit}: reasons in {rel} do not match its stats")
    for row in rows[:1000]:
        errs = schemas.record_errors("reject", row)
        if errs:
            report.error(f"{rel}: row {row.get('id')}: {errs[0]}")
            break
    ids.update(r["id"] for r in rows)
    report.rejects += len(rows)
