"""Shard writer throughput against a plain `tarfile` write of the same bytes, in the same run.

Acceptance point: the shard writer's MB/s divided by a plain `tarfile` write of the same bytes
in the same run is at least 0.8.

Workload (built in memory before anything is timed): N distinct real-photo JPEGs of ~50-200 KB
made from scikit-image's bundled photos by random crops, resizes and JPEG qualities (fixed seed),
and their `image_record` records (sha256 and phash computed for real, a short caption).

Timed variants, each writing into a fresh temporary folder on the same disk, with the order
alternated between repeats (forward, reversed, ...) and the median reported:

  tarfile            `tarfile.open(path, "w")` + `addfile(TarInfo, BytesIO)` for `<id>.json` and
                     `<id>.jpg` (the json bytes are the writer's own serialisation, precomputed)
  writer             `UnitWriter(...).add(record, {"image": Media("jpg", data)}, group="images")`
                     for every sample, then `commit()`: tar + Parquet + rejects + stats file,
                     with `validate_records` True and False
  writer tar path    what `_GroupShard` does for the tar only (json.dumps, `tar_header`, data
                     and padding gathered and written with `os.writev` every 8 MiB, end blocks),
                     without Parquet, validation or stats: isolates the tar part of the writer
                     cheaply (optional figure)

MB/s = payload bytes (sum of image + json bytes, 10**6 bytes per MB) / wall seconds from the
first call (opening/constructing the writer) to every file closed (no fsync of the shards; the
writer's own commit does fsync its small rejects/stats files, and that is counted).

    cd /work/main && .venv/bin/python -m benchmarks.bench_writer [--samples 2000] [--repeats 5]
    .venv/bin/python -m benchmarks.bench_writer --profile   # cProfile of one writer run
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from weaverdata import schemas
from weaverdata.io import shards
from weaverdata.io.layout import OutputLayout
from weaverdata.io.shards import Media, UnitWriter
from weaverdata.media.image import phash

RESULTS = Path(__file__).resolve().parent / "results" / "writer.json"
MIN_BYTES, MAX_BYTES = 50_000, 200_000
WORDS = (
    "a photo of the person cat cup coffee rocket launch galaxy stars tissue stain eye retina "
    "motorcycle street sky in on with red blue dark bright close-up wide shot detailed old new"
).split()


# -- workload --------------------------------------------------------------------------------


def _photos() -> list[tuple[str, Image.Image]]:
    import skimage.data as data

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in (
            "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
            "immunohistochemistry", "retina", "stereo_motorcycle",
        ):
            arr = getattr(data, name)()
            if isinstance(arr, tuple):  # stereo pair
                arr = arr[0]
            out.append((name, Image.fromarray(np.ascontiguousarray(arr[..., :3]))))
    return out


def _jpeg(photo: Image.Image, rng: np.random.Generator) -> tuple[bytes, Image.Image]:
    """A random crop of `photo`, resized and encoded, nudged until it is 50-200 KB."""
    w, h = photo.size
    cw, ch = int(w * rng.uniform(0.55, 1.0)), int(h * rng.uniform(0.55, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = photo.crop((x, y, x + cw, y + ch))
    side, quality = int(rng.integers(700, 1101)), int(rng.integers(85, 96))
    for _ in range(8):
        s = side / max(cw, ch)
        img = crop.resize((max(1, round(cw * s)), max(1, round(ch * s))), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        blob = buf.getvalue()
        if len(blob) < MIN_BYTES:
            side, quality = int(side * 1.25), min(quality + 3, 97)
        elif len(blob) > MAX_BYTES:
            side, quality = int(side * 0.8), max(quality - 5, 60)
        else:
            break
    return blob, img


def build_workload(n: int, seed: int = 0) -> list[tuple[dict, bytes]]:
    """N (record, jpeg bytes) pairs, every JPEG distinct."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    out, seen = [], set()
    for i in range(n):
        name, photo = photos[i % len(photos)]
        blob, img = _jpeg(photo, rng)
        digest = hashlib.sha256(blob).hexdigest()
        assert digest not in seen
        seen.add(digest)
        caption = " ".join(rng.choice(WORDS, size=int(rng.integers(6, 30))))
        record = {
            "id": f"img{i:06d}",
            "source": f"photos/{name}/{i:06d}.jpg",
            "sha256": digest,
            "phash": phash(img),
            "width": img.width,
            "height": img.height,
            "format": "jpeg",
            "mode": "RGB",
            "orientation": 1,
            "frames": 1,
            "num_bytes": len(blob),
            "caption": caption,
            "video": None,
        }
        out.append((record, blob))
    errors = schemas.record_errors("image_record", out[0][0])
    assert not errors, errors
    return out


def json_bytes(record: dict) -> bytes:
    """The writer's serialisation of a record's `<id>.json` member (see _GroupShard.add)."""
    return json.dumps(record, ensure_ascii=False, sort_keys=True).encode()


# -- timed variants --------------------------------------------------------------------------


def run_tarfile(folder: str, samples, members) -> float:
    path = os.path.join(folder, "plain.tar")
    t0 = time.perf_counter()
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return time.perf_counter() - t0


def _run_writer(folder: str, samples, validate: bool) -> float:
    t0 = time.perf_counter()
    writer = UnitWriter(
        OutputLayout.at(folder), "00000", "image_record", source="bench", validate_records=validate
    )
    for record, blob in samples:
        writer.add(record, {"image": Media("jpg", blob)}, group="images")
    writer.commit()
    return time.perf_counter() - t0


def run_writer_validate(folder, samples, members) -> float:
    return _run_writer(folder, samples, True)


def run_writer_novalidate(folder, samples, members) -> float:
    return _run_writer(folder, samples, False)


def run_writer_tar_path(folder: str, samples, members) -> float:
    """The tar half of `_GroupShard` alone: same serialisation, headers, gather writes and padding."""
    path = os.path.join(folder, "writer-path.tar")
    block, record_size, limit = shards._BLOCK, shards._RECORD, shards._BUFFER
    zeros = shards._ZEROS
    t0 = time.perf_counter()
    total = 0
    with open(path, "wb", buffering=0) as f:
        fd = f.fileno()
        chunks, pending = [], 0
        for record, blob in samples:
            for name, data in ((f"{record['id']}.json", json_bytes(record)), (f"{record['id']}.jpg", blob)):
                chunks.append(shards.tar_header(name, len(data)))
                chunks.append(data)
                pad = -len(data) % block
                if pad:
                    chunks.append(zeros[:pad])
                pending += block + len(data) + pad
            if pending >= limit or len(chunks) > 900:
                shards._writev_all(fd, chunks, pending)
                total += pending
                chunks, pending = [], 0
        end = 2 * block + (-(total + pending + 2 * block) % record_size)
        chunks.append(bytes(end))
        shards._writev_all(fd, chunks, pending + end)
    return time.perf_counter() - t0


VARIANTS = {
    "tarfile": run_tarfile,
    "writer_validate": run_writer_validate,
    "writer_novalidate": run_writer_novalidate,
    "writer_tar_path": run_writer_tar_path,
}


def timed(fn, samples, members, parent: str) -> tuple[float, float]:
    """(wall seconds as measured by `fn`, CPU seconds of this process over the same call)."""
    folder = tempfile.mkdtemp(prefix="bench-", dir=parent)
    try:
        gc.collect()
        cpu = time.process_time()
        wall = fn(folder, samples, members)
        return wall, time.process_time() - cpu
    finally:
        # untimed: delete the output and let the disk settle (dirty pages, journal, discards of
        # the deleted blocks) so that one run's writeback does not land in the next run's time
        shutil.rmtree(folder, ignore_errors=True)
        os.sync()


def check_outputs_match(samples, members, parent: str) -> None:
    """Sanity (untimed): the writer's tar holds exactly the baseline's member names and bytes."""
    folder = tempfile.mkdtemp(prefix="bench-check-", dir=parent)
    try:
        run_tarfile(folder, samples, members)
        _run_writer(folder, samples, True)
        with tarfile.open(os.path.join(folder, "plain.tar")) as a, tarfile.open(
            os.path.join(folder, "data/images-jpg/part-00000.tar")
        ) as b:
            ma, mb = a.getmembers(), b.getmembers()
            assert [m.name for m in ma] == [m.name for m in mb]
            for x, y in zip(ma[:50], mb[:50]):
                assert a.extractfile(x).read() == b.extractfile(y).read()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- main ------------------------------------------------------------------------------------


def profile_writer(samples, parent: str, validate: bool, top: int = 25) -> None:
    folder = tempfile.mkdtemp(prefix="bench-prof-", dir=parent)
    try:
        prof = cProfile.Profile()
        prof.enable()
        _run_writer(folder, samples, validate)
        prof.disable()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\n== cProfile: writer, validate_records={validate} ==")
    stats = pstats.Stats(prof).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=2000, help="number of JPEG samples (default 2000)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per variant (default 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="parent folder of the temporary outputs (default: system temp)")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of one writer run per mode")
    ap.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS.name}")
    args = ap.parse_args(argv)

    parent = args.tmp or tempfile.gettempdir()
    t = time.perf_counter()
    samples = build_workload(args.samples, args.seed)
    members = []
    for record, blob in samples:
        members.append((f"{record['id']}.json", json_bytes(record)))
        members.append((f"{record['id']}.jpg", blob))
    image_bytes = sum(len(b) for _, b in samples)
    payload = sum(len(d) for _, d in members)
    sizes = [len(b) for _, b in samples]
    print(
        f"workload: {len(samples)} JPEGs, {image_bytes / 1e6:.1f} MB images + "
        f"{(payload - image_bytes) / 1e6:.2f} MB json = {payload / 1e6:.1f} MB payload; "
        f"JPEG size min/median/max {min(sizes) / 1e3:.0f}/{statistics.median(sizes) / 1e3:.0f}/"
        f"{max(sizes) / 1e3:.0f} KB; built in {time.perf_counter() - t:.1f} s"
    )

    # warm-up (untimed): imports, schema/validator caches, HF feature metadata, first files
    few = samples[: min(20, len(samples))]
    few_members = members[: 2 * len(few)]
    for fn in VARIANTS.values():
        timed(fn, few, few_members, parent)
    check_outputs_match(few, few_members, parent)

    names = list(VARIANTS)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            wall, used = timed(VARIANTS[name], samples, members, parent)
            seconds[name].append(wall)
            cpu[name].append(used)
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{n} {seconds[n][-1]:.3f} s" for n in names))

    mbps = {n: [payload / 1e6 / s for s in seconds[n]] for n in names}
    median_mbps = {n: statistics.median(v) for n, v in mbps.items()}
    results = {}
    for n in names:
        paired = [w / b for w, b in zip(mbps[n], mbps["tarfile"])]
        results[n] = {
            "seconds": [round(s, 4) for s in seconds[n]],
            "cpu_seconds": [round(s, 4) for s in cpu[n]],
            "median_seconds": round(statistics.median(seconds[n]), 4),
            "best_seconds": round(min(seconds[n]), 4),
            "median_mb_per_s": round(median_mbps[n], 1),
            "ratio_of_medians": round(median_mbps[n] / median_mbps["tarfile"], 3),
            "median_paired_ratio": round(statistics.median(paired), 3),
            "best_ratio": round(min(seconds["tarfile"]) / min(seconds[n]), 3),
            "paired_ratios": [round(p, 3) for p in paired],
        }

    print(f"\n{'variant':<20} {'median s':>9} {'MB/s':>8} {'ratio':>7} {'paired':>7} {'best':>7}   (target ratio >= 0.8)")
    for n in names:
        r = results[n]
        print(
            f"{n:<20} {r['median_seconds']:>9.3f} {r['median_mb_per_s']:>8.1f} "
            f"{r['ratio_of_medians']:>7.3f} {r['median_paired_ratio']:>7.3f} {r['best_ratio']:>7.3f}"
        )
    print(
        "ratio = median MB/s / median tarfile MB/s (the headline); paired = median of per-repeat "
        "ratios; best = fastest tarfile run / fastest run (least disturbed by other load)"
    )

    if not args.no_save:
        out = {
            "benchmark": "shard writer vs plain tarfile (same bytes, same run)",
            "command": f"python -m benchmarks.bench_writer --samples {args.samples} --repeats {args.repeats}",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {
                "cpu_count": os.cpu_count(),
                "cpu": _cpu_model(),
                "platform": platform.platform(),
                "python": sys.version.split()[0],
                "pyarrow": pa.__version__,
                "tmp_dir": parent,
                "load_average_at_end": list(os.getloadavg()),
            },
            "workload": {
                "samples": len(samples),
                "seed": args.seed,
                "image_bytes": image_bytes,
                "json_bytes": payload - image_bytes,
                "payload_bytes": payload,
                "jpeg_kb_min_median_max": [min(sizes) // 1000, int(statistics.median(sizes)) // 1000, max(sizes) // 1000],
            },
            "mb": "10**6 bytes of payload (image + json member bytes)",
            "target": {"variant": "writer_validate", "ratio_at_least": 0.8},
            "results": results,
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {RESULTS}")

    if args.profile:
        for validate in (True, False):
            profile_writer(samples, parent, validate)
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
