"""The result cache: final caption results keyed by request key, kept beside the output.

Results are appended as Parquet files (`<dir>/part-<time>-<rand>.parquet`), each written whole
(temp name + rename locally, one PUT on object stores) as soon as a chunk of results is final,
so a killed run keeps everything finished before the kill. Only final results are stored (kept
captions and captions rejected by the checks after their retries); transient failures
(timeouts, a dead server) are not, so a rerun tries them again.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from weaverdata.engines.requests import CaptionResult
from weaverdata.io.storage import Location

log = logging.getLogger(__name__)

CACHE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("key", pa.string()),
        ("text", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("image_tokens", pa.int64()),
        ("ok", pa.bool_()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("attempts", pa.int64()),
        ("model", pa.string()),
        ("prompt_sha256", pa.string()),
        ("seed", pa.int64()),
    ]
)


class ResultCache:
    def __init__(self, url: str | None):
        self.loc = Location.of(url) if url else None
        self._results: dict[str, CaptionResult] = {}
        self.loaded_files = 0
        self.skipped_files = 0
        if self.loc is not None:
            self._load()

    def _load(self) -> None:
        fs = self.loc.fs
        if not fs.exists(self.loc.root):
            return
        for path in sorted(fs.glob(self.loc.path("part-*.parquet"))):
            try:
                with fs.open(path, "rb") as f:
                    rows = pq.read_table(f).to_pylist()
            except (OSError, ValueError) as exc:  # a file cut by a crash elsewhere: ignore it
                log.warning("result cache: skipping unreadable %s (%s)", path, exc)
                self.skipped_files += 1
                continue
            self.loaded_files += 1
            for row in rows:
                self._results[row["key"]] = CaptionResult(**row)

    def __contains__(self, key: str) -> bool:
        return key in self._results

    def __len__(self) -> int:
        return len(self._results)

    def get(self, key: str) -> CaptionResult | None:
        return self._results.get(key)

    def add(self, results: list[CaptionResult]) -> None:
        """Keep `results` in memory and, if the cache has a location, on storage at once."""
        if not results:
            return
        for r in results:
            self._results[r.key] = r
        if self.loc is None:
            return
        table = pa.Table.from_pylist([r.to_row() for r in results], schema=CACHE_SCHEMA)
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        self.loc.write_bytes_atomic(name, sink.getvalue())

    def rows(self) -> list[dict[str, Any]]:
        return [r.to_row() for r in self._results.values()]
