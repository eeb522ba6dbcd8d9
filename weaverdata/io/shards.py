"""The shard writer: one work unit's samples into WebDataset tars and Parquet files, then commit.

Per unit and per group (one field set), a tar and a Parquet file with the same samples in the
same order. On local disk both are written under temporary names and renamed when whole; on
object stores (no rename) they are written under their final names. Either way the unit's stats
file is written last: it is the commit marker, and a unit without it does not exist.

Tar members are written with precomputed headers (fixed mtime, owner and mode, so the same input
gives byte-identical shards) and gathered, without copies, into large batches, which keeps the
writer close to raw disk speed (see benchmarks/). Writes to local shard files stay below 2 MiB
each (tar: `WRITE_MAX`; Parquet: pages of at most 1.5 MiB of media, `PARQUET_MEDIA_CHUNK`), so
the page cache holds them in folios smaller than 2 MiB (see `WRITE_MAX` for why).
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import re
import tarfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from weaverdata import schemas
from weaverdata.io.layout import OutputLayout

if TYPE_CHECKING:
    from weaverdata.config import OutputConfig

SAMPLE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
GROUP_NAME = re.compile(r"^[a-z0-9_-]+$")
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_BUFFER = 8 * 2**20  # tar bytes gathered before they are written (in calls of at most WRITE_MAX)
_IOV_MAX = 1024  # buffers per os.writev call (the POSIX minimum of IOV_MAX)
WRITE_MAX = 2**20
"""Largest single writev(2) to a local tar shard. Linux sizes the page-cache folios of a buffered
write by the length of the call: a call of 2 MiB or more is stored in 2 MiB folios, which must
come from free blocks of 2 MiB. On a VM with free page reporting (virtio-balloon, as on the
benchmark VM) free blocks of 2 MiB and more are handed back to the host about 2 s after they are
freed, and the first write into such a block costs a host page fault per page, several times the
kernel time of the copy itself. Calls below 2 MiB get smaller folios, from smaller free blocks,
which stay with the guest; elsewhere the size of the calls makes no measurable difference
(benchmarks/README.md, the writer section)."""
PARQUET_PAGE_BYTES = 2**19
"""Parquet data page size: the Parquet writer ends a page once it holds this much, and writes
each page to the file with one call."""
PARQUET_MEDIA_CHUNK = 2**20
"""Media bytes per chunk in which a row group's media column is handed to the Parquet writer
(one image larger than this is a chunk of its own). The writer checks the page size after each
chunk (it cannot cut a binary_view array), so a page holds less than PARQUET_PAGE_BYTES +
PARQUET_MEDIA_CHUNK = 1.5 MiB of media, under 2 MiB (see WRITE_MAX), unless one image is larger.
Handed over whole, the image column of a row group was a single page, written with one call of
up to row_group_bytes."""
ROW_GROUP_BYTES = 16 * 2**20
"""A Parquet row group ends at `row_group_rows` rows or this many media bytes, whichever comes
first: it bounds the writer's (and a reader's) memory whatever the image size, and 28 MB groups
wrote markedly slower than 7-14 MB ones (benchmarks/README.md, the writer section)."""
log = logging.getLogger(__name__)


class RecordError(ValueError):
    """A record that breaks its schema: a bug in a recipe, never silently written."""


@dataclass(frozen=True)
class Media:
    """Bytes of one stored file (an image) and the extension it is stored under."""

    ext: str
    data: bytes


@dataclass
class RejectRow:
    id: str
    source: str
    reason: str
    stage: str
    detail: str | None = None
    sha256: str | None = None


def _tar_header_slow(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


# A ustar header with name, size and checksum blanked: per member only those three are filled
# in, which gives the bytes TarInfo.tobuf gives (tested) at a fraction of its cost.
_TEMPLATE = bytearray(_tar_header_slow("x", 0))
_TEMPLATE[0:100] = bytes(100)
_TEMPLATE[124:136] = bytes(12)
_TEMPLATE[148:156] = b" " * 8
_TEMPLATE_SUM = sum(_TEMPLATE)
_ZEROS = bytes(_BLOCK)


def tar_header(name: str, size: int) -> bytes:
    """The 512-byte header of a regular member (mtime 0, mode 644, owner 0); PAX for long names."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) >= 100 or not raw.isascii() or size >= 8**11:
        return _tar_header_slow(name, size)
    header = bytearray(_TEMPLATE)
    header[0 : len(raw)] = raw
    size_field = b"%011o\0" % size
    header[124:136] = size_field
    header[148:156] = b"%06o\0 " % (_TEMPLATE_SUM + sum(raw) + sum(size_field))
    return bytes(header)


def _tar_member(name: str, data: bytes) -> bytes:
    return tar_header(name, len(data)) + data + _ZEROS[: -len(data) % _BLOCK]


def member_names(sample_id: str, media: dict[str, Media | list[Media]], fields) -> list[tuple[str, Media]]:
    """Tar member names of a sample's media, in schema order: <id>.<ext>, <id>.target.<ext>, <id>.ref0.<ext>."""
    out = []
    for mf in fields:
        value = media.get(mf.name)
        if mf.kind == "image":
            if value is None:
                raise RecordError(f"{sample_id}: media field {mf.name!r} missing")
            stem = f"{mf.member}." if mf.member else ""
            out.append((f"{sample_id}.{stem}{value.ext}", value))
        else:
            for i, item in enumerate(value or []):
                out.append((f"{sample_id}.{mf.member}{i}.{item.ext}", item))
    return out


def null_pattern(value: Any, path: str = "") -> frozenset[str]:
    """Paths in a record that are null or an empty list.

    HF `datasets` infers a WebDataset's features from the first few samples of the first shard;
    a field null there and set later (or an empty list then a full one) makes loading fail. So
    every sample of a group must have the same pattern: the writer and `validate` check it.
    """
    found: set[str] = set()
    _collect_nulls(value, path, found)
    return frozenset(found)


def _collect_nulls(value: Any, path: str, found: set[str]) -> None:
    # paths are built only for nulls and containers: a record is mostly scalars
    if value is None:
        found.add(path)
    elif isinstance(value, dict):
        for k, v in value.items():
            if v is None:
                found.add(f"{path}/{k}")
            elif isinstance(v, (dict, list)):
                _collect_nulls(v, f"{path}/{k}", found)
    elif isinstance(value, list):
        inner = path + "[]"
        if not value:
            found.add(inner)
        for v in value:
            if v is None:
                found.add(inner)
            elif isinstance(v, (dict, list)):
                _collect_nulls(v, inner, found)


def field_signature(members: list[tuple[str, Media]]) -> str:
    """Short name for a sample's member set, so each (group, signature) shard has one field set."""
    exts = [m.ext for _, m in members]
    if not exts:
        return "none"
    if len(set(exts)) == 1:
        return exts[0] if len(exts) == 1 else f"{len(exts)}{exts[0]}"
    return "-".join(exts)


_VIEW_INLINE = 12  # Arrow's binary_view keeps values of up to 12 bytes inside the view itself


def binary_view_of(blobs: list[bytes]) -> pa.Array:
    """A binary_view array over the given bytes objects without copying them: each value of more
    than 12 bytes stays in its own (Python-owned) buffer and the view points at it.

    The Parquet writer encodes it like a binary column, so the image bytes are copied once (into
    the Parquet pages) instead of twice (first into one contiguous Arrow buffer).
    """
    n = len(blobs)
    views = np.zeros((n, 16), dtype=np.uint8)
    ints = views.view(np.int32)  # (n, 4): length, prefix, buffer index, offset
    buffers = []
    for i, b in enumerate(blobs):
        size = len(b)
        ints[i, 0] = size
        if size <= _VIEW_INLINE:
            views[i, 4 : 4 + size] = np.frombuffer(b, dtype=np.uint8)
        else:
            views[i, 4:8] = np.frombuffer(b[:4], dtype=np.uint8)
            ints[i, 2] = len(buffers)
            buffers.append(pa.py_buffer(b))
    return pa.Array.from_buffers(pa.binary_view(), n, [None, pa.py_buffer(views), *buffers])


def _with_views(typ: pa.DataType) -> pa.DataType:
    """The same type with binary leaves as binary_view (the in-memory form of media columns)."""
    if pa.types.is_binary(typ):
        return pa.binary_view()
    if pa.types.is_struct(typ):
        return pa.struct([f.with_type(_with_views(f.type)) for f in typ])
    return typ


def _media_struct(values: list[dict[str, Any]], typ: pa.StructType) -> pa.StructArray:
    """{"bytes", "path"} dicts -> the struct column (binary_view bytes: not copied)."""
    blobs = [v["bytes"] for v in values]
    data = binary_view_of(blobs) if pa.types.is_binary_view(typ.field("bytes").type) else pa.array(blobs, pa.binary())
    return pa.StructArray.from_arrays([data, pa.array([v["path"] for v in values], pa.string())], fields=list(typ))


def _leaf_paths(schema: pa.Schema) -> list[str]:
    """Parquet column paths of every leaf ("image.bytes", "messages.list.element.role", ...)."""

    def walk(prefix: str, typ: pa.DataType):
        if pa.types.is_struct(typ):
            for child in typ:
                yield from walk(f"{prefix}.{child.name}", child.type)
        elif pa.types.is_list(typ) or pa.types.is_large_list(typ):
            yield from walk(f"{prefix}.list.element", typ.value_type)
        elif pa.types.is_map(typ):
            yield from walk(f"{prefix}.key_value.key", typ.key_type)
            yield from walk(f"{prefix}.key_value.value", typ.item_type)
        else:
            yield prefix

    return [p for f in schema for p in walk(f.name, f.type)]


def _writev_all(fd: int, chunks: list[bytes], total: int) -> None:
    """Gather-write `chunks` (`total` bytes) with os.writev, at most WRITE_MAX bytes per call
    (a larger chunk goes in slices, without copies), until every byte is written (a gather
    write may be short)."""
    views = []
    for c in chunks:
        v = memoryview(c).cast("B")
        views.extend(v[i : i + WRITE_MAX] for i in range(0, len(v), WRITE_MAX))
    written, first = 0, 0
    while first < len(views):
        last, size = first, 0
        while last < len(views) and last - first < _IOV_MAX and size + len(views[last]) <= WRITE_MAX:
            size += len(views[last])
            last += 1
        n = os.writev(fd, views[first:last])
        if n <= 0:
            raise OSError(f"os.writev wrote {n} bytes")
        written += n
        while first < last and n >= len(views[first]):
            n -= len(views[first])
            first += 1
        if n:
            views[first] = views[first][n:]
    if written != total:
        raise OSError(f"wrote {written} of {total} tar bytes")


def _media_bytes(value: dict[str, Any] | list[dict[str, Any]] | None) -> int:
    """Bytes of one row's media value: an image {"bytes", "path"} or a list of them."""
    if isinstance(value, dict):
        return len(value["bytes"])
    return sum(len(v["bytes"]) for v in value or [])


def _media_array(kind: str, values: list[Any], typ: pa.DataType) -> pa.Array:
    """One media column's values (images, or lists of images) as an array of `typ`."""
    if kind == "image":
        return _media_struct(values, typ)
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum([len(x) for x in values], out=offsets[1:])
    items = _media_struct([v for x in values for v in x], typ.value_type)
    return pa.ListArray.from_arrays(pa.array(offsets), items, type=typ)


def _chunk_rows(values: list[Any], limit: int) -> list[list[Any]]:
    """Consecutive runs of `values` with at most `limit` media bytes each (a larger value alone)."""
    runs: list[list[Any]] = [[]]
    size = 0
    for value in values:
        n = _media_bytes(value)
        if runs[-1] and size + n > limit:
            runs.append([])
            size = 0
        runs[-1].append(value)
        size += n
    return runs


class _GroupShard:
    """Tar + Parquet of one group of one unit, open for appending."""

    def __init__(self, layout: OutputLayout, group: str, unit: str, schema_name: str, row_group_rows: int, row_group_bytes: int):
        self.layout = layout
        self.loc = layout.loc
        self.group = group
        self.schema = schemas.arrow_schema(schema_name)
        self.row_group_rows = row_group_rows
        self.row_group_bytes = row_group_bytes
        self.final_tar = layout.shard(group, unit, "tar")
        self.final_parquet = layout.shard(group, unit, "parquet")
        token = uuid.uuid4().hex[:8]
        if self.loc.atomic_rename:
            self.tar_path = f"{self.final_tar}.tmp-{token}"
            self.parquet_path = f"{self.final_parquet}.tmp-{token}"
        else:
            self.tar_path, self.parquet_path = self.final_tar, self.final_parquet
        self.loc.makedirs(posixpath.dirname(self.final_tar))
        if self.loc.is_local:  # plain file descriptors: gather writes, and no Python callbacks in pyarrow
            self._tar = open(self.loc.path(self.tar_path), "wb", buffering=0)
            self._parquet_file = pa.OSFile(self.loc.path(self.parquet_path), "wb")
        else:
            self._tar = self.loc.open(self.tar_path, "wb")
            self._parquet_file = self.loc.open(self.parquet_path, "wb")
        self.media = {m.name: m.kind for m in schemas.media_fields(schema_name)}
        plain = [n for n in self.schema.names if n not in self.media]
        self.plain_schema = pa.schema([self.schema.field(n) for n in plain])
        # media columns are handed over as binary_view (see binary_view_of); without a stored
        # Arrow schema every reader sees the Parquet types, i.e. plain binary, exactly the
        # declared schema (tests/test_writer.py checks), and the schema's metadata (HF features)
        # goes in as the file's key-value metadata
        # (single images only: pyarrow 26's Parquet writer cannot slice a binary_view inside a list)
        self.write_schema = pa.schema([f.with_type(_with_views(f.type)) if self.media.get(f.name) == "image" else f for f in self.schema])
        self._parquet = pq.ParquetWriter(
            self._parquet_file,
            self.write_schema,
            # image bytes are already compressed: store them as they are, zstd the rest
            compression={path: ("none" if path.split(".")[0] in self.media else "zstd") for path in _leaf_paths(self.schema)},
            use_dictionary=plain,
            write_statistics=plain,
            data_page_size=PARQUET_PAGE_BYTES,
            store_schema=False,
        )
        if self.schema.metadata:
            self._parquet.add_key_value_metadata(self.schema.metadata)
        self._chunks: list[bytes] = []  # tar bytes not yet written, written with one gather call
        self._pending = 0
        self.null_pattern: frozenset[str] | None = None
        self._rows: list[dict[str, Any]] = []
        self._row_bytes = 0  # media bytes in self._rows
        self.samples = 0
        self.tar_bytes = 0

    def add(self, record: dict[str, Any], members: list[tuple[str, Media]], row: dict[str, Any]) -> None:
        pattern = null_pattern(record)
        if self.null_pattern is None:
            self.null_pattern = pattern
        elif pattern != self.null_pattern:
            raise RecordError(
                f"{record['id']}: null/empty fields {sorted(pattern)} differ from the rest of group "
                f"{self.group} ({sorted(self.null_pattern)}); route such samples to their own group"
            )
        self._member(f"{record['id']}.json", json.dumps(record, ensure_ascii=False, sort_keys=True).encode())
        for name, media in members:
            self._member(name, media.data)
            self._row_bytes += len(media.data)
        if self._pending >= _BUFFER or len(self._chunks) > 900:
            self._flush_tar()
        self._rows.append(row)
        if len(self._rows) >= self.row_group_rows or self._row_bytes >= self.row_group_bytes:
            self._flush_rows()
        self.samples += 1

    def _member(self, name: str, data: bytes) -> None:
        """Queue one member: header, the data itself (never copied), padding."""
        self._chunks.append(tar_header(name, len(data)))
        self._chunks.append(data)
        pad = -len(data) % _BLOCK
        if pad:
            self._chunks.append(_ZEROS[:pad])
        self._pending += _BLOCK + len(data) + pad

    def _flush_tar(self) -> None:
        if not self._chunks:
            return
        if self.loc.is_local:
            _writev_all(self._tar.fileno(), self._chunks, self._pending)
        else:
            self._tar.write(b"".join(self._chunks))
        self.tar_bytes += self._pending
        self._chunks, self._pending = [], 0

    def _flush_rows(self) -> None:
        if self._rows:
            self._parquet.write_table(self._table(self._rows))
            self._rows, self._row_bytes = [], 0

    def _table(self, rows: list[dict[str, Any]]) -> pa.Table:
        """Rows -> a table of `write_schema`: plain fields converted by Arrow, media built from
        the bytes objects without copying them."""
        plain = pa.Table.from_pylist(rows, schema=self.plain_schema)  # takes only the schema's keys
        columns = {name: plain.column(name) for name in plain.column_names}
        for name, kind in self.media.items():
            typ = self.write_schema.field(name).type
            # in chunks, after each of which the Parquet writer may end a page (PARQUET_MEDIA_CHUNK)
            runs = _chunk_rows([r[name] for r in rows], PARQUET_MEDIA_CHUNK)
            columns[name] = pa.chunked_array([_media_array(kind, run, typ) for run in runs], typ)
        return pa.Table.from_arrays([columns[f.name] for f in self.write_schema], schema=self.write_schema)

    def close(self) -> dict[str, Any]:
        """Finish both files and give them their final names; return the stats entry."""
        total = self.tar_bytes + self._pending + 2 * _BLOCK
        self._chunks.append(bytes(2 * _BLOCK + (-total % _RECORD)))
        self._pending += 2 * _BLOCK + (-total % _RECORD)
        self._flush_tar()
        self._tar.close()
        self._flush_rows()
        self._parquet.close()
        self._parquet_file.close()
        if self.loc.atomic_rename:
            self.loc.replace(self.tar_path, self.final_tar)
            self.loc.replace(self.parquet_path, self.final_parquet)
        return {
            "group": self.group,
            "samples": self.samples,
            "tar": self.final_tar,
            "tar_bytes": self.loc.fs.size(self.loc.path(self.final_tar)),
            "parquet": self.final_parquet,
            "parquet_bytes": self.loc.fs.size(self.loc.path(self.final_parquet)),
        }

    def abort(self) -> None:
        """Close and delete the unfinished files (a failed unit leaves nothing visible)."""
        try:
            self._parquet.close()
        except OSError as exc:  # e.g. the disk is full: the file is deleted below anyway
            log.warning("closing %s after a failure: %s", self.parquet_path, exc)
        for f in (self._tar, self._parquet_file):
            f.close()
        for p in (self.tar_path, self.parquet_path):
            self.loc.remove(p)


@dataclass
class UnitWriter:
    """Collects one unit's samples and rejects, then commits them (stats file last).

    `add` routes each sample to the shard of its group plus field signature, so every shard has
    one field set; `reject` records an input that became no sample. `commit` enforces
    inputs = accepted + rejected before writing the marker.
    """

    layout: OutputLayout
    unit: str
    schema_name: str
    source: str
    row_group_rows: int = 256
    row_group_bytes: int = ROW_GROUP_BYTES
    validate_records: bool = True
    composite: bool = False
    """False: one input makes one sample (inputs = samples + rejects). True: a sample is made of
    several inputs (a target and its references) and an input may serve several samples; `add`
    names the inputs each sample used, and the stats count inputs (used + rejected) apart from
    samples (`samples`)."""
    _shards: dict[str, _GroupShard] = field(default_factory=dict)
    _used: set[str] = field(default_factory=set)
    _rejects: list[RejectRow] = field(default_factory=list)
    _ids: set[str] = field(default_factory=set)
    _started: float = field(default_factory=time.monotonic)

    @classmethod
    def for_output(cls, layout: OutputLayout, unit: str, schema_name: str, source: str, output: OutputConfig, composite: bool = False) -> UnitWriter:
        """A writer with the row-group and validation settings of the recipe's `output` config."""
        return cls(
            layout,
            unit,
            schema_name,
            source=source,
            row_group_rows=output.row_group_rows,
            row_group_bytes=output.row_group_bytes,
            validate_records=output.validate_records,
            composite=composite,
        )

    def __post_init__(self) -> None:
        self._media_fields = schemas.media_fields(self.schema_name)
        self.layout.clear_unit(self.unit)

    def _claim(self, sample_id: str) -> None:
        if not SAMPLE_ID.match(sample_id):
            raise RecordError(f"sample id {sample_id!r} is not a valid key (letters, digits, _ and - only)")
        if sample_id in self._ids:
            raise RecordError(f"sample id {sample_id!r} written twice in unit {self.unit}")
        self._ids.add(sample_id)

    def add(self, record: dict[str, Any], media: dict[str, Media | list[Media]], group: str, inputs: tuple[str, ...] = ()) -> str:
        """Write one sample; returns the shard group it went to. `inputs`: composite writers only,
        the ids of this unit's inputs the sample is made of."""
        sample_id = record["id"]
        if self.composite:
            self._used.update(inputs)
        elif inputs:
            raise RecordError("inputs= is for composite writers")
        if self.validate_records:
            errors = schemas.record_errors(self.schema_name, record)
            if errors:
                raise RecordError(f"{sample_id}: record breaks {self.schema_name}: " + "; ".join(errors[:5]))
        self._claim(sample_id)
        members = member_names(sample_id, media, self._media_fields)
        full_group = f"{group}-{field_signature(members)}"
        if not GROUP_NAME.match(full_group):
            raise RecordError(f"group name {full_group!r} is not [a-z0-9_-]+")
        shard = self._shards.get(full_group)
        if shard is None:
            shard = self._shards[full_group] = _GroupShard(
                self.layout, full_group, self.unit, self.schema_name, self.row_group_rows, self.row_group_bytes
            )
        row = dict(record)
        for mf in self._media_fields:
            value = media.get(mf.name)
            if mf.kind == "image":
                row[mf.name] = {"bytes": value.data, "path": f"{sample_id}.{value.ext}"}
            else:
                row[mf.name] = [
                    {"bytes": m.data, "path": f"{sample_id}.{mf.member}{i}.{m.ext}"} for i, m in enumerate(value or [])
                ]
        shard.add(record, members, row)
        return full_group

    def mark_used(self, input_ids) -> None:
        """Composite writers: these inputs of the unit are in at least one sample (of any unit)."""
        if not self.composite:
            raise RecordError("mark_used is for composite writers")
        self._used.update(input_ids)

    def reject(self, row: RejectRow) -> None:
        self._claim(row.id)
        self._rejects.append(row)

    @property
    def accepted(self) -> int:
        return sum(s.samples for s in self._shards.values())

    def commit(self) -> dict[str, Any]:
        """Close every shard, write the rejects, then the stats file (the commit marker)."""
        outputs = []
        for name in sorted(self._shards):
            entry = self._shards[name].close()
            entry["schema"] = self.schema_name
            outputs.append(entry)
        self._shards.clear()
        rejects_rel = self.layout.rejects(self.unit)
        self._write_rejects(rejects_rel)
        samples = sum(o["samples"] for o in outputs)
        rejected = len(self._rejects)
        by_reason = Counter(r.reason for r in self._rejects)
        if self.composite:
            both = self._used & {r.id for r in self._rejects}
            if both:
                raise RecordError(f"unit {self.unit}: inputs both used and rejected, e.g. {sorted(both)[:3]}")
            accepted = len(self._used)
        else:
            accepted = samples
        stats = {
            "unit": self.unit,
            "source": self.source,
            "inputs": accepted + rejected,
            "accepted": accepted,
            "rejected": rejected,
            "rejected_by_reason": dict(sorted(by_reason.items())),
            "outputs": outputs,
            "rejects_file": rejects_rel,
            "seconds": round(time.monotonic() - self._started, 4),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if self.composite:
            stats["samples"] = samples
        elif len(self._ids) != stats["inputs"]:
            raise RecordError(f"unit {self.unit}: {len(self._ids)} ids but {stats['inputs']} inputs")
        errors = schemas.record_errors("shard_stats", stats)
        if errors:
            raise RecordError(f"unit {self.unit}: stats break shard_stats: {errors}")
        self.layout.write_json(self.layout.stats(self.unit), stats)
        return stats

    def abort(self) -> None:
        for shard in self._shards.values():
            shard.abort()
        self._shards.clear()

    def _write_rejects(self, rel: str) -> None:
        rows = [
            {
                "id": r.id,
                "unit": self.unit,
                "source": r.source,
                "reason": r.reason,
                "stage": r.stage,
                "detail": r.detail,
                "sha256": r.sha256,
            }
            for r in self._rejects
        ]
        if self.validate_records:
            for row in rows:
                errors = schemas.record_errors("reject", row)
                if errors:
                    raise RecordError(f"reject row {row['id']}: {errors}")
        table = pa.Table.from_pylist(rows, schema=schemas.arrow_schema("reject"))
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        self.layout.loc.write_bytes_atomic(rel, sink.getvalue())
