"""Feeding trainers from weaverdata output folders: which samples, in which order, on which rank.

Pure logic first, so it unit-tests without Ray or torch:

- `list_shards` reads the committed shards of an output folder from its stats files (a shard
  without a commit marker does not exist), with their sample counts and schema.
- `SampleIndex` holds every sample as (shard, row) plus the columns a trainer splits on (id, and
  the task kind for reference samples); `split_eval` holds out a stable, hash-chosen share.
- `epoch_order` and `rank_slice` give each rank a contiguous, equal-sized (within one sample)
  block of a per-epoch permutation of the shards, shuffled in windows: over an epoch every
  sample is on exactly one rank, once, and reads stay sequential within shards. That is what
  webdataset's node and worker splitting gets wrong when shards do not divide evenly: ranks
  with more shards run longer and the others hang in the collective.
- `SampleStream` turns a rank's order into records, starting at any position: the data position
  saved in a checkpoint is (epoch, samples consumed), and a resumed stream reads on from it.

Records are read from the Parquet files or from the WebDataset tars of the same shards, local
or remote (fsspec); either way a sample is (record dict, media dict of bytes).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import posixpath
import tarfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weaverdata import schemas
from weaverdata.io.layout import STATS_DIR, OutputLayout
from weaverdata.io.storage import Location


class DataError(ValueError):
    """Training data that cannot be used (empty, wrong kind), with the reason."""


@dataclass(frozen=True)
class ShardFile:
    group: str
    parquet: str  # relative to the output root
    tar: str
    samples: int
    schema: str


@dataclass
class Sample:
    id: str
    record: dict[str, Any]
    media: dict[str, Any]  # media field name -> bytes, or list of bytes


MIX_SCHEMA = "mix"  # `weaverdata mix` output: one mix.parquet of (position, kind, dataset, id, row JSON)


def list_shards(url: str, groups: list[str] | None = None, schema: str | tuple[str, ...] | None = None) -> list[ShardFile]:
    """The committed shards of the output at `url`, in a stable order (unit, then group); a
    `weaverdata mix` folder is one shard (its mix.parquet)."""
    layout = OutputLayout.at(url)
    if not layout.loc.exists():
        raise DataError(f"training data folder not found: {url}")
    accepted = (schema,) if isinstance(schema, str) else schema
    if layout.loc.exists("mix.parquet") and not layout.committed_units():
        if accepted and MIX_SCHEMA not in accepted:
            raise DataError(f"{url} is a weaverdata mix; this trainer reads {accepted}")
        import pyarrow.parquet as pq

        with layout.loc.open("mix.parquet", "rb") as f:
            rows = pq.ParquetFile(f).metadata.num_rows
        return [ShardFile("mix", "mix.parquet", "", rows, MIX_SCHEMA)]
    units = sorted(layout.committed_units())
    if not units:
        raise DataError(f"{url}: no committed shards (stats/part-*.json); is it a weaverdata output folder?")
    shards = []
    for unit in units:
        stats = layout.read_json(posixpath.join(STATS_DIR, f"part-{unit}.json")) or {}
        for out in stats.get("outputs", []):
            if groups and not any(fnmatch.fnmatchcase(out["group"], g) for g in groups):
                continue
            if accepted and out["schema"] not in accepted:
                raise DataError(f"{url}: shard {out['parquet']} holds {out['schema']} records, this trainer reads {' or '.join(accepted)}")
            if out["samples"]:
                shards.append(ShardFile(out["group"], out["parquet"], out["tar"], int(out["samples"]), out["schema"]))
    if not shards:
        raise DataError(f"{url}: no samples" + (f" in groups matching {groups}" if groups else ""))
    return shards


@dataclass
class SampleIndex:
    """Every sample of the data: shard number, row in the shard, id, and kind (task, or '')."""

    shards: list[ShardFile]
    shard: np.ndarray
    row: np.ndarray
    ids: list[str]
    kinds: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, mask: np.ndarray) -> SampleIndex:
        keep = np.flatnonzero(mask)
        return SampleIndex(self.shards, self.shard[keep], self.row[keep], [self.ids[i] for i in keep], [self.kinds[i] for i in keep])

    def of_kinds(self, kinds: list[str]) -> SampleIndex:
        wanted = set(kinds)
        return self.subset(np.array([k in wanted for k in self.kinds], dtype=bool))


def build_index(url: str, shards: list[ShardFile], kind_column: str | None = None) -> SampleIndex:
    """Read the id (and kind) column of every shard; the only whole-data read before training."""
    import pyarrow.parquet as pq

    loc = Location.of(url)
    shard_no, rows, ids, kinds = [], [], [], []
    for n, s in enumerate(shards):
        is_mix = s.schema == MIX_SCHEMA
        columns = ["position", "id"] if is_mix else ["id"] + ([kind_column] if kind_column else [])
        with loc.open(s.parquet, "rb") as f:
            table = pq.read_table(f, columns=columns, use_threads=False)
        if table.num_rows != s.samples:
            raise DataError(f"{s.parquet}: {table.num_rows} rows, its stats say {s.samples}")
        if is_mix:
            ids += [mix_id(p, i) for p, i in zip(table.column("position").to_pylist(), table.column("id").to_pylist())]
        else:
            ids += table.column("id").to_pylist()
        kinds += table.column(kind_column).to_pylist() if kind_column and not is_mix else [""] * table.num_rows
        shard_no.append(np.full(table.num_rows, n, dtype=np.int32))
        rows.append(np.arange(table.num_rows, dtype=np.int32))
    if len(set(ids)) != len(ids):
        raise DataError(f"{url}: duplicate sample ids across shards")
    return SampleIndex(shards, np.concatenate(shard_no), np.concatenate(rows), ids, kinds)


def mix_id(position: int, sample_id: str) -> str:
    """A mix row's id: its position (ids of different source datasets may collide) and source id."""
    return f"{int(position):08d}-{sample_id}"


def eval_score(sample_id: str) -> float:
    """A stable number in [0, 1) from the id: the same sample is held out in every run."""
    return int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big") / 2**64


def split_eval(index: SampleIndex, fraction: float, max_samples: int) -> tuple[SampleIndex, SampleIndex]:
    """(train, eval): eval is the samples whose id hashes below `fraction`, at most `max_samples`
    of them (lowest hashes first), and at least one when fraction > 0 and there are 2+ samples."""
    if fraction <= 0 or max_samples == 0 or len(index) < 2:
        return index, index.subset(np.zeros(len(index), dtype=bool))
    scores = np.array([eval_score(i) for i in index.ids])
    order = np.argsort(scores, kind="stable")
    n = int(min(max_samples, max(1, (scores < fraction).sum()), len(index) - 1))
    mask = np.zeros(len(index), dtype=bool)
    mask[order[:n]] = True
    return index.subset(~mask), index.subset(mask)


def epoch_order(index: SampleIndex, seed: int, epoch: int) -> np.ndarray:
    """Positions into `index` for one epoch: shards in a seeded order, rows in file order."""
    rng = np.random.default_rng([seed, epoch, 0])
    shard_order = rng.permutation(len(index.shards))
    rank_of_shard = np.empty_like(shard_order)
    rank_of_shard[shard_order] = np.arange(len(shard_order))
    return np.lexsort((index.row, rank_of_shard[index.shard]))


def rank_slice(order: np.ndarray, rank: int, world: int, seed: int, epoch: int, window: int) -> np.ndarray:
    """This rank's contiguous block of the epoch (sizes differ by at most one), shuffled within
    windows of `window` consecutive samples."""
    n = len(order)
    lo, hi = rank * n // world, (rank + 1) * n // world
    mine = order[lo:hi].copy()
    rng = np.random.default_rng([seed, epoch, rank + 1])
    for start in range(0, len(mine), window):
        rng.shuffle(mine[start : start + window])
    return mine


# -- reading records ---------------------------------------------------------------------------


class ShardReader:
    """Reads whole shards (Parquet or WebDataset tar) into samples, keeping the last few."""

    def __init__(self, url: str, fmt: str, columns: list[str] | None = None, cache: int = 2):
        self.loc = Location.of(url)
        self.fmt = fmt
        self.columns = columns
        self.cache: OrderedDict[str, list[Sample]] = OrderedDict()
        self.cache_size = cache

    def shard(self, s: ShardFile) -> list[Sample]:
        key = s.parquet
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        samples = self._read_parquet(s) if self.fmt == "parquet" else self._read_tar(s)
        if len(samples) != s.samples:
            raise DataError(f"{s.tar if self.fmt == 'webdataset' else s.parquet}: {len(samples)} samples, its stats say {s.samples}")
        self.cache[key] = samples
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return samples

    def _read_parquet(self, s: ShardFile) -> list[Sample]:
        import pyarrow.parquet as pq

        if s.schema == MIX_SCHEMA:
            with self.loc.open(s.parquet, "rb") as f:
                rows = pq.read_table(f, use_threads=False).to_pylist()
            return [Sample(mix_id(r["position"], r["id"]), {**json.loads(r["row"]), "mix_kind": r["kind"]}, {}) for r in rows]

        media_names = [m.name for m in schemas.media_fields(s.schema)]
        with self.loc.open(s.parquet, "rb") as f:
            table = pq.read_table(f, columns=self.columns, use_threads=False)
        out = []
        for row in table.to_pylist():
            media = {}
            for name in media_names:
                if name in row:
                    value = row.pop(name)
                    media[name] = [v["bytes"] for v in value] if isinstance(value, list) else (value or {}).get("bytes")
            out.append(Sample(row["id"], row, media))
        return out

    def _read_tar(self, s: ShardFile) -> list[Sample]:
        """A WebDataset shard: members <key>.json, <key>.<member>[N].<ext>, in key order."""
        if not s.tar:
            raise DataError(f"{s.parquet} has no WebDataset copy: read it with data.format=parquet")
        fields = schemas.media_fields(s.schema)
        by_key: dict[str, dict[str, bytes]] = {}
        with self.loc.open(s.tar, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, suffix = member.name.partition(".")
                by_key.setdefault(key, {})[suffix] = tar.extractfile(member).read()
        out = []
        for key, parts in by_key.items():
            record = json.loads(parts.pop("json"))
            if self.columns:
                record = {k: v for k, v in record.items() if k in self.columns}
            media: dict[str, Any] = {}
            for mf in fields:
                if mf.kind == "image":
                    stem = f"{mf.member}." if mf.member else ""
                    media[mf.name] = next((v for k, v in parts.items() if k.startswith(stem) and k.count(".") == stem.count(".")), None)
                else:
                    items = sorted((int(k.split(".")[0][len(mf.member):]), v) for k, v in parts.items() if k.split(".")[0][len(mf.member):].isdigit() and k.startswith(mf.member))
                    media[mf.name] = [v for _, v in items]
            out.append(Sample(key, record, media))
        return out

    def get(self, index: SampleIndex, position: int) -> Sample:
        s = index.shards[int(index.shard[position])]
        sample = self.shard(s)[int(index.row[position])]
        if sample.id != index.ids[position]:
            raise DataError(f"{s.parquet}: row {int(index.row[position])} is {sample.id}, the index says {index.ids[position]}")
        return sample


@dataclass
class DataPosition:
    """Where a rank's stream is: the epoch, and how many of its samples that epoch it has consumed."""

    epoch: int = 0
    consumed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}


@dataclass
class SampleStream:
    """One rank's endless stream of samples, epoch after epoch, resumable at a `DataPosition`.

    `take()` returns the next sample of the current epoch, or None when this rank's share of the
    epoch is used up; the trainer then moves every rank to the next epoch together (`next_epoch`),
    so ranks never drift apart by an epoch and no sample is skipped or seen twice.
    """

    index: SampleIndex
    reader: ShardReader
    rank: int
    world: int
    seed: int
    window: int
    position: DataPosition = field(default_factory=DataPosition)

    def __post_init__(self) -> None:
        if len(self.index) == 0:
            raise DataError("no training samples")
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    @classmethod
    def in_index_order(cls, index: SampleIndex, reader: ShardReader) -> SampleStream:
        """One pass over `index` as it is (no shuffle, one rank): fixed batches such as the probe."""
        stream = cls(index, reader, 0, 1, 0, 1)
        stream._order, stream._order_epoch = np.arange(len(index)), 0
        return stream

    def order(self) -> np.ndarray:
        if self._order_epoch != self.position.epoch:
            whole = epoch_order(self.index, self.seed, self.position.epoch)
            self._order = rank_slice(whole, self.rank, self.world, self.seed, self.position.epoch, self.window)
            self._order_epoch = self.position.epoch
        return self._order

    def peek(self) -> Sample | None:
        order = self.order()
        if self.position.consumed >= len(order):
            return None
        return self.reader.get(self.index, int(order[self.position.consumed]))

    def take(self) -> Sample | None:
        sample = self.peek()
        if sample is not None:
            self.position.consumed += 1
        return sample

    def next_epoch(self) -> None:
        self.position = DataPosition(self.position.epoch + 1, 0)

    def __iter__(self) -> Iterator[Sample]:
        while (s := self.take()) is not None:
            yield s


def decode_rgb(data: bytes, size: int) -> np.ndarray:
    """Image bytes -> size x size x 3 uint8 (shorter side resized to `size`, centre crop)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale that still covers `size`
        im = im.convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
