"""Finding the bytes of an image a report shows, and turning them into small thumbnails.

Samples carry some of their images in their shards (build-refs: target and references;
build-proxy: the images shown to the user; ingest: the image). The others (a proxy's *output*
images, the rejects) are found in the staged recipes' prep files (``OUT/work/prep``, by id or by
sha256), else in the input folder named by run.json (by the record's source locator).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from weaverdata.io.layout import OutputLayout
from weaverdata.io.storage import Location

log = logging.getLogger(__name__)

THUMB_SIDE = 256


class NoPreview(Exception):
    """This image cannot be shown (the reason is the message)."""


def thumbnail(data: bytes, side: int = THUMB_SIDE) -> bytes:
    """A JPEG of at most `side` pixels on its longer side (raises NoPreview if undecodable)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (side, side))  # JPEG: decode at a reduced scale
            im = im.convert("RGB")
            im.thumbnail((side, side))
            out = io.BytesIO()
            im.save(out, "JPEG", quality=85)
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise NoPreview(f"not decodable ({type(exc).__name__})") from exc


@dataclass
class ImageFinder:
    layout: OutputLayout
    input_url: str | None = None
    _by_id: dict[str, str] = field(default_factory=dict)  # prep id -> prep file
    _by_sha: dict[str, tuple[str, str]] = field(default_factory=dict)  # sha256 -> (prep file, id)
    _indexed: bool = False

    def _index(self) -> None:
        if self._indexed:
            return
        self._indexed = True
        fs = self.layout.loc.fs
        for path in sorted(fs.glob(self.layout.loc.path("work", "prep", "part-*.parquet"))):
            try:
                with fs.open(path, "rb") as f:
                    t = pq.read_table(f, columns=["id", "sha256", "data"]).select(["id", "sha256"])
            except (OSError, KeyError, ValueError) as exc:  # a prep file of another layout: skip it
                log.warning("cannot index %s: %s", path, exc)
                continue
            for i, s in zip(t.column("id").to_pylist(), t.column("sha256").to_pylist()):
                self._by_id.setdefault(i, path)
                if s:
                    self._by_sha.setdefault(s, (path, i))

    def fetch(self, *, ids: set[str] = frozenset(), shas: set[str] = frozenset()) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """Bytes by prep id and by sha256, for those the prep files hold (one read per file)."""
        self._index()
        files: dict[str, set[str]] = {}
        for i in ids:
            if i in self._by_id:
                files.setdefault(self._by_id[i], set()).add(i)
        for s in shas:
            if s in self._by_sha:
                path, i = self._by_sha[s]
                files.setdefault(path, set()).add(i)
        by_id: dict[str, bytes] = {}
        for path, wanted in files.items():
            with self.layout.loc.fs.open(path, "rb") as f:
                t = pq.read_table(f, columns=["id", "data"])
            for i, d in zip(t.column("id").to_pylist(), t.column("data").to_pylist()):
                if i in wanted and d:
                    by_id[i] = d
        by_sha = {s: by_id[self._by_sha[s][1]] for s in shas if s in self._by_sha and self._by_sha[s][1] in by_id}
        return {i: by_id[i] for i in ids if i in by_id}, by_sha

    def from_input(self, locator: str) -> bytes:
        """The bytes of `locator` under the run's input folder (plain files only)."""
        if not self.input_url or not locator or "#" in locator or "::" in locator:
            raise NoPreview("not in the output, and not a plain file of the input")
        loc = Location.of(self.input_url)
        path = loc.path(locator) if loc.fs.isdir(loc.root) else loc.root
        if loc.is_local and not Path(path).is_file():
            raise NoPreview("source file not found")
        try:
            with loc.fs.open(path, "rb") as f:
                return f.read(64 * 2**20)
        except (OSError, FileNotFoundError) as exc:
            raise NoPreview(f"source not readable ({type(exc).__name__})") from exc
