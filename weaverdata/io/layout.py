"""Where everything lives in an output folder.

    OUT/run.json                         what the run is (config, its hash, the planned units); written first
    OUT/data/<group>/part-<unit>.tar     WebDataset shard of one group (one field set) of one unit
    OUT/data/<group>/part-<unit>.parquet the same samples as Parquet
    OUT/rejects/part-<unit>.parquet      inputs of the unit that became no sample, with reasons
    OUT/stats/part-<unit>.json           the unit's commit marker, written last
    OUT/summary.json, OUT/summary.md     the run summary, written when the run ends
    OUT/logs/                            Ray's, Ray Data's and the engines' own logs of the last run (this machine's)

A unit exists only if its stats file exists; files of a unit without one are leftovers of a
killed attempt and are deleted before the unit is redone.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from weaverdata.io.storage import Location

RUN_MANIFEST = "run.json"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
DATA_DIR = "data"
REJECTS_DIR = "rejects"
STATS_DIR = "stats"
WORK_DIR = "work"  # recipes' intermediate, resumable state (build-refs: prep, plans, caption cache)
EMBEDDINGS_DIR = "embeddings"
LOGS_DIR = "logs"


class OutputLayout:
    def __init__(self, location: Location):
        self.loc = location

    @classmethod
    def at(cls, url: str) -> OutputLayout:
        return cls(Location.of(url))

    # paths (relative to the output root)
    @staticmethod
    def shard(group: str, unit: str, ext: str) -> str:
        return posixpath.join(DATA_DIR, group, f"part-{unit}.{ext}")

    @staticmethod
    def rejects(unit: str) -> str:
        return posixpath.join(REJECTS_DIR, f"part-{unit}.parquet")

    @staticmethod
    def stats(unit: str) -> str:
        return posixpath.join(STATS_DIR, f"part-{unit}.json")

    # reading state
    def read_json(self, rel: str) -> dict[str, Any] | None:
        if not self.loc.exists(rel):
            return None
        with self.loc.open(rel, "rb") as f:
            return json.loads(f.read())

    def committed_units(self) -> set[str]:
        pattern = self.loc.path(STATS_DIR, "part-*.json")
        names = [posixpath.basename(p) for p in self.loc.fs.glob(pattern)]
        return {n[len("part-") : -len(".json")] for n in names if ".tmp-" not in n}

    def unit_files(self, unit: str) -> list[str]:
        """Every data and rejects file of `unit`, committed or not (temp files included)."""
        fs = self.loc.fs
        patterns = [
            self.loc.path(DATA_DIR, "*", f"part-{unit}.*"),
            self.loc.path(REJECTS_DIR, f"part-{unit}.*"),
            self.loc.path(STATS_DIR, f"part-{unit}.json.tmp-*"),
        ]
        return sorted(p for pat in patterns for p in fs.glob(pat))

    def clear_unit(self, unit: str) -> None:
        """Delete what a killed attempt at `unit` left behind (never called on a committed unit)."""
        for path in self.unit_files(unit):
            self.loc.fs.rm(path)

    def clear_all(self) -> None:
        for rel in (DATA_DIR, REJECTS_DIR, STATS_DIR, WORK_DIR, EMBEDDINGS_DIR):
            if self.loc.exists(rel):
                self.loc.fs.rm(self.loc.path(rel), recursive=True)
        for rel in (RUN_MANIFEST, SUMMARY_JSON, SUMMARY_MD):
            self.loc.remove(rel)

    def write_json(self, rel: str, data: dict[str, Any]) -> None:
        blob = json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False).encode()
        self.loc.write_bytes_atomic(rel, blob + b"\n")
