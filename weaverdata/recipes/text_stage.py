"""The text stage of a staged recipe: model rounds per work unit, on the workers, storage to storage.

The driver starts the job's engines once (:class:`JobEngines`) and runs one Ray task per unit
without a drafts file (:func:`run_text_stage`). A task reads its unit's inputs from the prep
files, asks the engines every round its recipe needs (and the retries), and writes what came of
them to ``work/drafts/part-<unit>.parquet`` in one atomic write; that file is the task's commit
marker. Results are cached per unit (``work/captions/unit=<unit>/``) as they finish, so a task
killed half-way pays only for what it had not finished, and no process ever loads the cache of
the whole job.

What the driver holds: unit ids, and what a recipe's global step needs (embeddings, a grouping,
dedup fingerprints). Image bytes, prompts and generated texts stay on the workers.
"""

from __future__ import annotations

import io
import logging
import posixpath
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from weaverdata.config import EngineConfig
from weaverdata.engines.pool_backend import EngineHandle
from weaverdata.io.layout import WORK_DIR, OutputLayout
from weaverdata.io.sources import WorkUnit

log = logging.getLogger(__name__)


def drafts_path(unit: str) -> str:
    return posixpath.join(WORK_DIR, "drafts", f"part-{unit}.parquet")


def captions_url(layout: OutputLayout, unit: str) -> str:
    """The unit's own result cache (a task never reads another unit's)."""
    return layout.loc.url.rstrip("/") + "/" + posixpath.join(WORK_DIR, "captions", f"unit={unit}")


def write_drafts(layout: OutputLayout, unit: str, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    """The unit's drafts, in one atomic write (its commit marker in the text stage)."""
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink, compression="zstd")
    layout.loc.write_bytes_atomic(drafts_path(unit), sink.getvalue())


def read_drafts(layout: OutputLayout, unit: str, columns: list[str] | None = None) -> pa.Table:
    with layout.loc.open(drafts_path(unit), "rb") as f:
        return pq.read_table(f, columns=columns, use_threads=False, pre_buffer=False)


class JobEngines:
    """The job's engines, on the driver: started when the first text stage needs them, closed
    once at the end of the job; every round and retry of every unit goes through them."""

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.backend: Any = None
        self._handle: EngineHandle | None = None

    def handle(self) -> EngineHandle:
        if self._handle is None:
            from weaverdata.engines.captioner import make_backend

            self.backend = make_backend(self.cfg)
            actors = self.backend.pool().start() if self.cfg.backend == "vllm" else []
            self._handle = EngineHandle(self.cfg, actors)
        return self._handle

    def report(self) -> dict[str, Any]:
        """engine_starts (restarts included) and the busy fraction, for summary.json."""
        if self.backend is None:
            return {"engine_starts": 0, "engine_busy_fraction": None}
        report = getattr(self.backend, "report", None)
        return report() if report is not None else {}

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None
            self._handle = None

    def __enter__(self) -> JobEngines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def unit_captioner(handle: EngineHandle, layout: OutputLayout, unit: str, format_checks: dict | None = None):
    """A Captioner for one unit's task: the job's engines, the unit's own cache."""
    from weaverdata.engines.captioner import Captioner
    from weaverdata.engines.pool_backend import worker_backend

    return Captioner(handle.cfg, cache_url=captions_url(layout, unit), backend=worker_backend(handle), format_checks=format_checks, owns_backend=True)


def run_text_stage(cfg: Any, units: list[WorkUnit], layout: OutputLayout, task: Callable[..., dict[str, Any]], engines: JobEngines, name: str, extra: tuple = ()) -> list[dict[str, Any]]:
    """``task(unit, cfg, handle, *extra)`` for every unit without a drafts file (Ray tasks, at
    most ``engine.replicas x engine.max_concurrent_batches`` units at once, so the engines stay
    fed and a worker holds a few units' images at most). Fails the run with a clear message if a
    unit failed (a rerun retries only those). Returns the tasks' stats."""
    from weaverdata.runtime import RuntimeError_, run_units

    todo = [u for u in units if not layout.loc.exists(drafts_path(u.unit))]
    if not todo:
        return []
    handle = engines.handle()
    in_flight = max(2, cfg.engine.replicas * cfg.engine.max_concurrent_batches)
    outcomes = run_units(task, todo, (cfg, handle, *extra), cfg=cfg.runtime, total=len(todo), name=name, max_in_flight=in_flight)
    failed = [o for o in outcomes if o.error]
    if failed:
        raise RuntimeError_(f"the text stage failed for {len(failed)} unit(s), e.g. unit {failed[0].unit}: {failed[0].error}; rerun the same command to resume")
    return [o.stats or {} for o in outcomes]
