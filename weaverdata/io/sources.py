"""Readers: turn an input location into work units, and a work unit into source items.

Planning (`plan_units`) runs on the driver and only lists files and reads metadata (Parquet row
groups, HF dataset lengths, file sizes), so it is quick and fails fast on a wrong path or an
empty input. Reading (`read_unit`) runs inside a worker and yields one `SourceItem` per input
sample: either a payload or an error (reason + detail) that the recipe turns into a reject row.

Every item carries a *locator*, the sample's place in the input relative to the input root:

    photos/a.jpg              a file in a folder of images
    shards/000.tar#key        a sample (key) in a WebDataset tar
    docs.jsonl@1234           the JSON Lines record starting at byte 1234
    table.parquet#row=12      a Parquet row (index within the file)
    hf:train#row=12           a row of an HF dataset split
    clip.mp4#frame=120        a video frame
    crawl.warc.gz@5678        the WARC record starting at byte 5678

and the stable sample id is a hash of it (`sample_id`), so reruns and other machines agree.
"""

from __future__ import annotations

import json
import posixpath
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from weaverdata.config import InputConfig
from weaverdata.io.policy import InputPolicy, ReferenceRejected, check_inside, resolve_reference
from weaverdata.io.storage import Location
from weaverdata.items import SourceItem, sample_id  # noqa: F401  (re-exported: readers and recipes import them from here)

IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff", "jfif", "pjpeg", "ppm", "pgm", "pbm", "ico", "avif", "heic"})
VIDEO_EXTS = frozenset({"mp4", "mov", "mkv", "webm", "avi", "m4v", "mpg", "mpeg", "ogv", "flv", "wmv", "3gp"})
TAR_EXTS = frozenset({"tar"})
JSONL_EXTS = frozenset({"jsonl", "ndjson"})
PARQUET_EXTS = frozenset({"parquet"})
SIDECAR_EXTS = frozenset({"txt", "json"})
WARC_SUFFIXES = (".warc", ".warc.gz")
IMAGE_FIELDS = ("image", "images", "img", "jpg", "jpeg", "png", "webp", "image_path", "path", "file", "file_name", "url", "image_url")
CAPTION_FIELDS = ("caption", "text", "txt", "alt", "alt_text", "description", "title")


class InputError(ValueError):
    """An input that cannot be planned at all (missing, empty, unknown kind)."""


@dataclass(frozen=True)
class WorkUnit:
    """One shard of work: a slice of the input that one task reads and commits as a whole."""

    unit: str  # zero-padded id, the order of the plan
    kind: str  # images | webdataset | jsonl | parquet | hf | video | warc
    root: str  # input root URL
    items: tuple[tuple[str, ...], ...] = ()  # images: (file, caption sidecar or "", json sidecar or "")
    path: str = ""  # tar / jsonl / parquet / video file relative to root; hf: "" or the hub name
    start: int = 0  # jsonl: byte offset; parquet: first row group; hf: first row
    stop: int = 0  # exclusive end of the same

    def describe(self) -> str:
        if self.kind == "images":
            first, last = self.items[0][0], self.items[-1][0]
            return f"{len(self.items)} files {first} .. {last}"
        if self.kind in ("jsonl",):
            return f"{self.path} bytes [{self.start}, {self.stop})"
        if self.kind == "parquet":
            return f"{self.path} row groups [{self.start}, {self.stop})"
        if self.kind == "hf":
            return f"hf dataset {self.path or self.root} rows [{self.start}, {self.stop})"
        return self.path

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkUnit:
        data = dict(data)
        data["items"] = tuple(tuple(x) for x in data.get("items", ()))
        return cls(**data)


def _ext(path: str) -> str:
    base = posixpath.basename(path)
    return base.rsplit(".", 1)[-1].lower() if "." in base else ""


def _is_hf_saved(loc: Location, path: str) -> bool:
    fs = loc.fs
    return fs.exists(posixpath.join(path, "dataset_dict.json")) or (
        fs.exists(posixpath.join(path, "state.json")) and fs.exists(posixpath.join(path, "dataset_info.json"))
    )


def plan_units(cfg: InputConfig) -> list[WorkUnit]:
    """List the input and cut it into work units. Raises InputError at once on a bad input."""
    if not cfg.path:
        raise InputError("no input given (--input PATH)")
    if cfg.format == "hf" and not _looks_local_or_url(cfg.path) and "://" not in cfg.path:
        return _plan_hf(None, cfg)
    loc = Location.of(cfg.path)
    try:
        exists = loc.fs.exists(loc.root)
    except OSError as exc:
        raise InputError(f"cannot reach input {cfg.path}: {exc}") from exc
    if not exists:
        raise InputError(f"input path does not exist: {cfg.path}")
    if loc.fs.isdir(loc.root):
        if cfg.format in ("auto", "hf") and _is_hf_saved(loc, loc.root):
            return _plan_hf(loc, cfg)
        files = sorted(p for p in loc.fs.find(loc.root, withdirs=False) if not _hidden(loc.rel(p)))
        if not files:
            raise InputError(f"no input files found under {cfg.path}")
        units = _plan_files(loc, [loc.rel(p) for p in files], cfg)
    else:
        parent = Location(loc.fs, posixpath.dirname(loc.root), posixpath.dirname(cfg.path.rstrip("/")) or ".")
        units = _plan_files(parent, [posixpath.basename(loc.root)], cfg)
    if not units:
        raise InputError(f"nothing to read in {cfg.path}")
    return [WorkUnit(**{**u.to_json(), "unit": f"{i:05d}"}) for i, u in enumerate(units)]


def _looks_local_or_url(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or "://" in path or posixpath.exists(path)


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def _kind_of(ext: str, forced: str) -> str:
    kinds = {
        "images": IMAGE_EXTS,
        "video": VIDEO_EXTS,
        "webdataset": TAR_EXTS,
        "jsonl": JSONL_EXTS,
        "parquet": PARQUET_EXTS,
    }
    for kind, exts in kinds.items():
        if ext in exts and forced in ("auto", kind):
            return kind
    return "other"


def _file_kind(rel: str, forced: str) -> str:
    """A file's kind by its name: ``_kind_of`` its extension, and WARC files (``.warc``, ``.warc.gz``)."""
    if rel.lower().endswith(WARC_SUFFIXES) and forced in ("auto", "warc"):
        return "warc"
    return _kind_of(_ext(rel), forced)


def _plan_files(loc: Location, rels: list[str], cfg: InputConfig) -> list[WorkUnit]:
    by_stem: dict[str, list[str]] = {}
    for rel in rels:
        by_stem.setdefault(rel.rsplit(".", 1)[0] if "." in posixpath.basename(rel) else rel, []).append(rel)
    loose: list[tuple[str, ...]] = []  # images and files nobody reads (rejected as unsupported)
    units: list[WorkUnit] = []
    sidecars_used: set[str] = set()
    for rel in rels:
        kind = _file_kind(rel, cfg.format)
        if kind == "images":
            stem = rel.rsplit(".", 1)[0]
            siblings = by_stem.get(stem, [])
            txt = next((s for s in siblings if _ext(s) == "txt"), "")
            meta = next((s for s in siblings if _ext(s) == "json"), "")
            sidecars_used.update(x for x in (txt, meta) if x)
            loose.append((rel, txt, meta))
        elif kind == "webdataset":
            units.append(WorkUnit("", "webdataset", loc.url, path=rel))
        elif kind in ("video", "warc"):
            units.append(WorkUnit("", kind, loc.url, path=rel))
        elif kind == "jsonl":
            size = loc.fs.size(loc.path(rel))
            step = cfg.jsonl_bytes_per_shard
            for start in range(0, max(size, 1), step):
                units.append(WorkUnit("", "jsonl", loc.url, path=rel, start=start, stop=min(start + step, size)))
        elif kind == "parquet":
            units.extend(_plan_parquet(loc, rel, cfg))
    for rel in rels:
        if _file_kind(rel, cfg.format) == "other" and rel not in sidecars_used:
            loose.append((rel, "", ""))
    loose.sort()
    n = cfg.samples_per_shard
    image_units = [
        WorkUnit("", "images", loc.url, items=tuple(loose[i : i + n])) for i in range(0, len(loose), n)
    ]
    return image_units + units


def _plan_parquet(loc: Location, rel: str, cfg: InputConfig) -> list[WorkUnit]:
    import pyarrow.parquet as pq

    try:
        with loc.open(rel) as f:
            meta = pq.ParquetFile(f).metadata
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) on a bad file
        # one unit whose read reports the error as a reject row
        return [WorkUnit("", "parquet", loc.url, path=rel, start=0, stop=-1, items=((f"unreadable:{exc}",),))]
    units, start, rows = [], 0, 0
    for g in range(meta.num_row_groups):
        rows += meta.row_group(g).num_rows
        if rows >= cfg.samples_per_shard:
            units.append(WorkUnit("", "parquet", loc.url, path=rel, start=start, stop=g + 1))
            start, rows = g + 1, 0
    if start < meta.num_row_groups or not units:
        units.append(WorkUnit("", "parquet", loc.url, path=rel, start=start, stop=meta.num_row_groups))
    return units


def _load_hf(root: str, name: str, split: str):
    import datasets

    if name:
        return datasets.load_dataset(name, split=split)
    ds = datasets.load_from_disk(root)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise InputError(f"HF dataset at {root} has no split {split!r} (has {', '.join(ds)})")
        ds = ds[split]
    return ds


def _plan_hf(loc: Location | None, cfg: InputConfig) -> list[WorkUnit]:
    name = "" if loc else cfg.path
    root = loc.url if loc else ""
    try:
        ds = _load_hf(loc.root if loc else "", name, cfg.hf_split)
    except (OSError, ValueError, ConnectionError) as exc:
        raise InputError(f"cannot open HF dataset {cfg.path}: {exc}") from exc
    n, step = len(ds), cfg.samples_per_shard
    if n == 0:
        raise InputError(f"HF dataset {cfg.path} split {cfg.hf_split!r} is empty")
    return [WorkUnit("", "hf", root, path=name, start=i, stop=min(i + step, n)) for i in range(0, n, step)]


# -- reading ------------------------------------------------------------------------------------

def read_unit(unit: WorkUnit, cfg: InputConfig, video_cfg=None) -> Iterator[SourceItem]:
    """Yield every input sample of `unit`, in a fixed order."""
    loc = Location.of(unit.root) if unit.root else None
    policy = InputPolicy.of(cfg)
    if unit.kind == "images":
        yield from _read_image_files(loc, unit, policy)
        return
    if loc is not None and unit.path and unit.kind != "hf":
        try:
            check_inside(loc, unit.path, policy)
        except ReferenceRejected as exc:
            yield SourceItem(unit.path, error=(exc.reason, exc.detail))
            return
    if unit.kind == "webdataset":
        yield from _read_tar(loc, unit.path)
    elif unit.kind == "jsonl":
        yield from _read_jsonl(loc, unit)
    elif unit.kind == "parquet":
        yield from _read_parquet(loc, unit)
    elif unit.kind == "hf":
        yield from _read_hf(loc, unit, cfg)
    elif unit.kind == "video":
        from weaverdata.media.video import read_video_frames

        yield from read_video_frames(loc, unit.path, video_cfg)
    elif unit.kind == "warc":
        yield from _read_warc(loc, unit.path)
    else:
        raise InputError(f"unit {unit.unit}: unknown kind {unit.kind!r}")


def _read_bytes(loc: Location, rel: str) -> bytes:
    return loc.fs.cat_file(loc.path(rel))


def _read_image_files(loc: Location, unit: WorkUnit, policy: InputPolicy) -> Iterator[SourceItem]:
    for rel, txt, meta in unit.items:
        if _kind_of(_ext(rel), "auto") != "images":
            yield SourceItem(rel, error=("unsupported_file", f"not an image, video, tar, jsonl or parquet file (.{_ext(rel)})"))
            continue
        try:
            for f in (rel, txt, meta):
                if f:
                    check_inside(loc, f, policy)
        except ReferenceRejected as exc:
            yield SourceItem(rel, error=(exc.reason, exc.detail))
            continue
        try:
            data = _read_bytes(loc, rel)
            caption = _read_bytes(loc, txt).decode("utf-8", "replace").strip() if txt else ""
            extra = json.loads(_read_bytes(loc, meta)) if meta else {}
        except OSError as exc:
            yield SourceItem(rel, error=("read_error", str(exc)))
            continue
        except json.JSONDecodeError as exc:
            yield SourceItem(rel, error=("invalid_json", f"{meta}: {exc}"))
            continue
        yield SourceItem(rel, payload={"image": data, "caption": caption, "meta": extra})


_WDS_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


def _unsafe_name(name: str) -> bool:
    return name.startswith("/") or ".." in name.split("/") or "\\" in name or "\0" in name


def _read_tar(loc: Location, rel: str) -> Iterator[SourceItem]:
    """WebDataset / img2dataset tars: members key.ext grouped by key, in order.

    Nothing is ever extracted to disk. Unsafe member names (absolute, '..'), members that are not
    regular files, a (key, ext) seen twice, keys without an image: each becomes an error item.
    """
    seen: set[tuple[str, str]] = set()
    current_key: str | None = None
    members: dict[str, bytes] = {}
    index = 0

    def flush() -> Iterator[SourceItem]:
        if current_key is None:
            return
        locator = f"{rel}#{current_key}"
        image_ext = next((e for e in members if e.rsplit(".", 1)[-1] in IMAGE_EXTS), None)
        if image_ext is None:
            yield SourceItem(locator, error=("no_image_member", f"members: {sorted(members)}"))
            return
        caption = members.get("txt", b"").decode("utf-8", "replace").strip()
        extra: dict[str, Any] = {}
        if "json" in members:
            try:
                extra = json.loads(members["json"])
            except json.JSONDecodeError as exc:
                yield SourceItem(locator, error=("invalid_json", f"{current_key}.json: {exc}"))
                return
        yield SourceItem(locator, payload={"image": members[image_ext], "caption": caption, "meta": extra if isinstance(extra, dict) else {}})

    try:
        with loc.open(rel, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for info in tar:
                index += 1
                name = info.name
                if info.isdir():
                    continue
                if _unsafe_name(name):
                    yield SourceItem(f"{rel}#{name}@{index}", error=("unsafe_member_name", f"tar member {name!r} points outside the archive"))
                    continue
                if not info.isfile():
                    yield SourceItem(f"{rel}#{name}@{index}", error=("unsupported_member", f"member {name!r} is not a regular file"))
                    continue
                m = _WDS_KEY.match(name)
                if not m:
                    yield SourceItem(f"{rel}#{name}@{index}", error=("no_extension", f"member {name!r} has no key.ext form"))
                    continue
                key, ext = m.group(1), m.group(2).lower()
                if (key, ext) in seen:
                    yield SourceItem(f"{rel}#{key}@{index}", error=("duplicate_key", f"{name!r} appears again at member {index}"))
                    continue
                if key != current_key:
                    yield from flush()
                    if any(k == key for k, _ in seen):
                        # the key came back after other keys: a second sample with the same key
                        yield SourceItem(f"{rel}#{key}@{index}", error=("duplicate_key", f"key {key!r} appears again at member {index}"))
                        seen.add((key, ext))
                        current_key, members = None, {}
                        continue
                    current_key, members = key, {}
                seen.add((key, ext))
                data = tar.extractfile(info)
                members[ext] = data.read() if data else b""
            yield from flush()
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield SourceItem(f"{rel}#@{index}", error=("tar_error", f"{type(exc).__name__}: {exc}"))


HTML_TYPES = ("text/html", "application/xhtml+xml")


def _read_warc(loc: Location, rel: str) -> Iterator[SourceItem]:
    """A WARC file's HTTP responses (Common Crawl, ``wget --warc-file``): an HTML page is a row
    ``{html, url}`` (the documents recipe reads it; image recipes reject it ``missing_field``),
    an image is an image (its caption empty, its URL in ``meta``). Other records (requests,
    metadata, scripts, styles) are skipped: they are not samples. Locator: ``file.warc.gz@offset``."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    offset = 0
    try:
        with loc.open(rel, "rb") as f:
            records = ArchiveIterator(f)
            for rec in records:
                if rec.format != "warc":  # warcio reads anything as an (old) ARC record: this file is named a WARC
                    yield SourceItem(f"{rel}@{offset}#error", error=("warc_error", f"not a WARC record at byte {offset} (read as {rec.format})"))
                    return
                ctype, uri = _response_of(rec)
                if ctype not in HTML_TYPES and not ctype.startswith("image/"):
                    continue
                body = rec.content_stream().read()  # before the offset: warcio reads nothing after asking for it
                offset = records.get_record_offset()
                locator = f"{rel}@{offset}"
                if ctype.startswith("image/"):
                    yield SourceItem(locator, payload={"image": body, "caption": "", "meta": {"url": uri}})
                else:
                    yield SourceItem(locator, payload={"row": {"html": body, "url": uri}, "base": ""})
    except (ArchiveLoadFailed, OSError, EOFError, ValueError, zlib.error) as exc:
        yield SourceItem(f"{rel}@{offset}#error", error=("warc_error", f"{type(exc).__name__}: {exc}"[:500]))


def warc_index(loc: Location, rel: str) -> dict[str, int]:
    """Target URI -> record offset of every image response of a WARC file (a page's images are
    looked up here: they belong to the page's input, the archive)."""
    from warcio.archiveiterator import ArchiveIterator

    index: dict[str, int] = {}
    with loc.open(rel, "rb") as f:
        records = ArchiveIterator(f)
        for rec in records:
            if rec.format != "warc":
                continue
            ctype, uri = _response_of(rec)
            if ctype.startswith("image/") and uri:
                index.setdefault(uri, records.get_record_offset())
    return index


def _response_of(rec) -> tuple[str, str]:
    """(media type, target URI) of a WARC HTTP response record; ("", "") for any other record."""
    if rec.rec_type != "response" or rec.http_headers is None:
        return "", ""
    ctype = (rec.http_headers.get_header("Content-Type") or "").split(";")[0].strip().lower()
    return ctype, rec.rec_headers.get_header("WARC-Target-URI") or ""


def warc_record_body(f, offset: int) -> bytes:
    """The payload of the WARC record at ``offset`` of an open, seekable WARC file."""
    from warcio.archiveiterator import ArchiveIterator

    f.seek(offset)
    rec = next(iter(ArchiveIterator(f)))
    return rec.content_stream().read()


def _read_jsonl(loc: Location, unit: WorkUnit) -> Iterator[SourceItem]:
    """Records whose first byte lies in [start, stop): the usual split rule, so no line is read twice."""
    with loc.open(unit.path, "rb") as f:
        pos = unit.start
        f.seek(pos)
        if pos > 0:
            f.seek(pos - 1)
            prev = f.read(1)
            if prev != b"\n":
                pos += len(f.readline())
        while pos < unit.stop or (unit.stop == 0 and pos == 0):
            line = f.readline()
            if not line:
                break
            offset, pos = pos, pos + len(line)
            if not line.strip():
                continue
            locator = f"{unit.path}@{offset}"
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                yield SourceItem(locator, error=("invalid_json", str(exc)[:200]))
                continue
            if not isinstance(row, dict):
                yield SourceItem(locator, error=("invalid_record", f"a JSON {type(row).__name__}, not an object"))
                continue
            yield SourceItem(locator, payload={"row": row, "base": posixpath.dirname(unit.path)})


def _read_parquet(loc: Location, unit: WorkUnit) -> Iterator[SourceItem]:
    import pyarrow.parquet as pq

    if unit.stop == -1:
        yield SourceItem(f"{unit.path}#file", error=("unreadable_file", unit.items[0][0]))
        return
    with loc.open(unit.path) as f:
        pf = pq.ParquetFile(f)
        row = sum(pf.metadata.row_group(g).num_rows for g in range(unit.start))
        for batch in pf.iter_batches(row_groups=list(range(unit.start, unit.stop)), batch_size=256):
            for rec in batch.to_pylist():
                yield SourceItem(f"{unit.path}#row={row}", payload={"row": rec, "base": posixpath.dirname(unit.path)})
                row += 1


def _read_hf(loc: Location | None, unit: WorkUnit, cfg: InputConfig) -> Iterator[SourceItem]:
    import datasets

    ds = _load_hf(loc.root if loc else "", unit.path, cfg.hf_split)
    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    prefix = f"hf:{unit.path}:{cfg.hf_split}" if unit.path else f"hf:{cfg.hf_split}"
    for i in range(unit.start, unit.stop):
        yield SourceItem(f"{prefix}#row={i}", payload={"row": ds[i], "base": ""})


# -- tabular rows that point at images ---------------------------------------------------------

def image_from_row(item: SourceItem, input_cfg: InputConfig, root: str) -> SourceItem:
    """Resolve a row's image (bytes, {bytes, path}, relative path or URL) to bytes, or an error."""
    row = item.payload["row"]
    field_name = input_cfg.image_field or next((k for k in IMAGE_FIELDS if k in row), None)
    if field_name is None or row.get(field_name) in (None, ""):
        return SourceItem(item.locator, error=("missing_field", f"no image field (tried {input_cfg.image_field or ', '.join(IMAGE_FIELDS)})"))
    value = row[field_name]
    cap_name = input_cfg.caption_field or next((k for k in CAPTION_FIELDS if isinstance(row.get(k), str)), None)
    caption = row.get(cap_name) if cap_name else ""
    meta = {k: v for k, v in row.items() if k not in (field_name, cap_name) and _jsonable(v)}
    try:
        data = resolve_reference(value, root, item.payload.get("base", ""), InputPolicy.of(input_cfg))
    except ReferenceRejected as exc:
        return SourceItem(item.locator, error=(exc.reason, f"{field_name}: {exc.detail}"))
    except OSError as exc:
        return SourceItem(item.locator, error=("read_error", f"{field_name}: {exc}"))
    except (TypeError, ValueError) as exc:
        return SourceItem(item.locator, error=("invalid_field", f"{field_name}: {exc}"))
    return SourceItem(item.locator, payload={"image": data, "caption": caption if isinstance(caption, str) else "", "meta": meta})


def _jsonable(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool)) or v is None
