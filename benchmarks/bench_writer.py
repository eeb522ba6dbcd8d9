"""Shard writer throughput against a plain `tarfile` write of the same bytes, in the same run.

Acceptance point: the shard writer's MB/s divided by a plain `tarfile` write of the same bytes
in the same run is at least 0.8.

Workload (built in memory before anything is timed): N distinct real-photo JPEGs of ~50-200 KB
made from scikit-image's bundled photos by random crops, resizes and JPEG qualities (fixed seed),
and their `image_record` records (sha256 and phash computed for real, a short caption).

Timed variants, each writing into a fresh temporary folder on the same disk (deleted, and the
disk synced, after each run), with the order alternated between repeats (forward, reversed, ...):

  tarfile            `tarfile.open(path, "w")` + `addfile(TarInfo, BytesIO)` for `<id>.json` and
                     `<id>.jpg` (the json bytes are the writer's own serialisation, precomputed)
  writer             `UnitWriter(...).add(record, {"image": Media("jpg", data)}, group="images")`
                     for every sample, then `commit()`: tar + Parquet + rejects + stats file,
                     with `validate_records` True and False
  writer tar path    what `_GroupShard` does for the tar only (json.dumps, `tar_header`, data
                     and padding gathered every 8 MiB and written with `os.writev` in calls of
                     at most `shards.WRITE_MAX` = 1 MiB, end blocks),
                     without Parquet, validation or stats: isolates the tar part of the writer
                     cheaply (optional figure)

MB/s = payload bytes (sum of image + json bytes, 10**6 bytes per MB) / wall seconds from the
first call (opening/constructing the writer) to every file closed (no fsync of the shards; the
writer's own commit does fsync its small rejects/stats files, and that is counted). Per repeat
the user and system CPU seconds and minor page faults of the call are recorded too (getrusage).

Memory state (`--memory`). Every run writes its output into the page cache: 218 MB for `tarfile`,
about twice that for the writer (tar + Parquet), and deleting the output frees it again. On a VM
with free page reporting (virtio-balloon, as on the 2-vCPU Firecracker VM of benchmarks/README.md)
free blocks of 2 MiB and more are handed back to the host about 2 s after they are freed, and the
first write into a handed-back page costs a host page fault. Linux takes 2 MiB blocks for the
page cache of writes of 2 MiB and more, which the writer made until 2026-12-03 (8 MiB tar
batches, 16 MiB Parquet pages) and `tarfile` never makes (16 KiB writes); its runs were slow
whenever they found fewer 2 MiB blocks freed within the last 2 s than they needed, which
depended on the order of the variants. The writer now writes below 2 MiB per call
(`shards.WRITE_MAX`, `shards.PARQUET_MEDIA_CHUNK`). To check that a result does not depend on
the memory state:

  none    (default) the runs simply follow each other
  twin    an untimed run of the same variant right before each timed run: the timed run writes
          into memory its twin has just freed
  settle  before each timed run, wait until free page reporting has handed everything freed so
          far back to the host (its counter still for 2.5 s; at most --settle-max s): every run
          writes into fresh memory, the worst case on such a VM

Per run, the MiB handed back to the host during the timed call are recorded where the kernel
exposes the counter (/sys/module/page_reporting/parameters/reported_kib).

Reported per variant against `tarfile` (the "summary" block, `summary_rows`): the median (ratio
of the median MB/s), the mean (ratio of the mean MB/s: mean tarfile seconds / mean variant
seconds) and the spread (min-max) of the per-repeat ratios. The target, writer_validate >= 0.8
(and writer_novalidate >= 0.8), is met only if the median and the mean both reach it.

    cd /work/main && .venv/bin/python -m benchmarks.bench_writer [--samples 2000] [--repeats 5]
    .venv/bin/python -m benchmarks.bench_writer --no-save            # print only
    .venv/bin/python -m benchmarks.bench_writer --results /tmp/w.json
    .venv/bin/python -m benchmarks.bench_writer --memory settle --results /tmp/w-fresh.json
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
import resource
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from benchmarks.report import command_line, emit, now
from weaverdata import schemas
from weaverdata.io import shards
from weaverdata.io.layout import OutputLayout
from weaverdata.io.shards import Media, UnitWriter
from weaverdata.media.image import phash

RESULTS = Path(__file__).resolve().parent / "results" / "writer.json"
REPORTED_KIB = Path("/sys/module/page_reporting/parameters/reported_kib")
MEMORY_MODES = ("none", "twin", "settle")
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


def reported_mib() -> float | None:
    """MiB of free memory the kernel has handed back to the hypervisor since boot (free page
    reporting), or None where the kernel has no such counter."""
    try:
        return int(REPORTED_KIB.read_text()) / 1024
    except (OSError, ValueError):
        return None


def settle(max_seconds: float, still: float = 2.5) -> float:
    """Wait until free page reporting has handed back what was freed so far: its counter has not
    moved for `still` seconds (it reports every ~2 s while freed memory is pending), or
    `max_seconds` have passed. Without the counter, wait `still` seconds. Returns the wait."""
    t0 = time.monotonic()
    last, since = reported_mib(), time.monotonic()
    if last is None:
        time.sleep(still)
        return time.monotonic() - t0
    while time.monotonic() - since < still and time.monotonic() - t0 < max_seconds:
        time.sleep(0.05)
        now_mib = reported_mib()
        if now_mib != last:
            last, since = now_mib, time.monotonic()
    return time.monotonic() - t0


def timed(fn, samples, members, parent: str) -> dict:
    """Wall seconds as measured by `fn`; this process's CPU seconds (all, user, system) and minor
    page faults over the same call; MiB handed back to the host meanwhile (None: no counter)."""
    folder = tempfile.mkdtemp(prefix="bench-", dir=parent)
    try:
        gc.collect()
        cpu = time.process_time()
        r0, rep0 = resource.getrusage(resource.RUSAGE_SELF), reported_mib()
        wall = fn(folder, samples, members)
        r1, rep1 = resource.getrusage(resource.RUSAGE_SELF), reported_mib()
        return {
            "wall": wall,
            "cpu": time.process_time() - cpu,
            "user": r1.ru_utime - r0.ru_utime,
            "system": r1.ru_stime - r0.ru_stime,
            "minflt": r1.ru_minflt - r0.ru_minflt,
            "reported_mib": None if rep0 is None or rep1 is None else rep1 - rep0,
        }
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


TARGET = 0.8  # writer MB/s / tarfile MB/s, median and mean (validate_records True and False)
METRIC = "MB/s ratio"
ROWS = (  # variant, row name, target
    ("writer_validate", "shard writer (tar + Parquet + stats), validate_records=True, vs plain tarfile", TARGET),
    ("writer_novalidate", "shard writer (tar + Parquet + stats), validate_records=False, vs plain tarfile", TARGET),
    ("writer_tar_path", "writer's tar path alone (no Parquet, no validation, no stats) vs plain tarfile", None),
)


MEMORY_NOTE = {  # row name suffix per memory state (`--memory`)
    "none": "",
    "twin": "; each run right after an untimed run of the same variant",
    "settle": "; every run into fresh memory (free page reporting settled before each run)",
}
LEGACY_NOTE = "; runs simply following each other (memory state not controlled)"  # files without "procedure" (before 2026-12-03)


def summary_rows(result: dict) -> list[dict]:
    """The summary block of a results file of this benchmark, from its per-repeat seconds: per
    variant, the MB/s ratio against `tarfile` of the same repeats (median, mean, spread; target
    0.8 for the two writer rows, none for the tar path alone). The row names say the memory
    state of the runs unless it is the default (`--memory none`); files from before the writer
    wrote below 2 MiB per call (no "procedure") say that the state was not controlled."""
    from benchmarks.summary import summary_row

    note = MEMORY_NOTE[result["procedure"]["memory"]] if "procedure" in result else LEGACY_NOTE
    base = result["results"]["tarfile"]["seconds"]
    return [
        summary_row("writer", name + note, METRIC, base, result["results"][variant]["seconds"], target, date=result["date"], command=result["command"])
        for variant, name, target in ROWS
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=2000, help="number of JPEG samples (default 2000)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per variant (default 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="parent folder of the temporary outputs (default: system temp)")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of one writer run per mode")
    ap.add_argument(
        "--memory", choices=MEMORY_MODES, default="none",
        help="memory state each timed run meets: none (default; runs simply follow each other), twin (an untimed run "
        "of the same variant just before), settle (wait until freed memory is handed back to the host: fresh memory)",
    )
    ap.add_argument("--settle-max", type=float, default=30.0, help="--memory settle: longest wait before a run, s (default 30)")
    ap.add_argument("--results", default=str(RESULTS), help=f"results file to write (default {RESULTS})")
    ap.add_argument("--no-save", action="store_true", help="do not write the results file")
    args = ap.parse_args(argv)
    command = command_line("bench_writer", argv)
    load_before = os.getloadavg()

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

    date = now()
    print(f"memory state: {args.memory}; load average {' '.join(f'{x:.2f}' for x in load_before)}")
    names = list(VARIANTS)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            if args.memory == "twin":
                timed(VARIANTS[name], samples, members, parent)
            elif args.memory == "settle":
                settle(args.settle_max)
            runs[name].append(timed(VARIANTS[name], samples, members, parent))
        print(
            f"repeat {r + 1}/{args.repeats}: "
            + ", ".join(f"{n} {runs[n][-1]['wall']:.3f} s (sys {runs[n][-1]['system']:.3f})" for n in names)
        )
    load_after = os.getloadavg()

    seconds = {n: [round(x["wall"], 4) for x in runs[n]] for n in names}
    results = {}
    for n in names:
        mbps = [payload / 1e6 / s for s in seconds[n]]
        paired = [b / s for b, s in zip(seconds["tarfile"], seconds[n])]
        results[n] = {
            "seconds": seconds[n],
            "cpu_seconds": [round(x["cpu"], 4) for x in runs[n]],
            "user_seconds": [round(x["user"], 4) for x in runs[n]],
            "system_seconds": [round(x["system"], 4) for x in runs[n]],
            "minor_faults": [x["minflt"] for x in runs[n]],
            "reported_to_host_mib": [None if x["reported_mib"] is None else round(x["reported_mib"]) for x in runs[n]],
            "median_seconds": round(statistics.median(seconds[n]), 4),
            "mean_seconds": round(statistics.fmean(seconds[n]), 4),
            "best_seconds": round(min(seconds[n]), 4),
            "median_mb_per_s": round(statistics.median(mbps), 1),
            "mean_mb_per_s": round(payload / 1e6 / statistics.fmean(seconds[n]), 1),
            "ratio_of_medians": round(statistics.median(mbps) / statistics.median([payload / 1e6 / s for s in seconds["tarfile"]]), 3),
            "ratio_of_means": round(statistics.fmean(seconds["tarfile"]) / statistics.fmean(seconds[n]), 3),
            "median_paired_ratio": round(statistics.median(paired), 3),
            "min_paired_ratio": round(min(paired), 3),
            "max_paired_ratio": round(max(paired), 3),
            "best_ratio": round(min(seconds["tarfile"]) / min(seconds[n]), 3),
            "paired_ratios": [round(p, 3) for p in paired],
        }

    out = {
        "benchmark": "shard writer vs plain tarfile (same bytes, same run)",
        "command": command,
        "date": date,
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu": _cpu_model(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "pyarrow": pa.__version__,
            "arrow_memory_pool": pa.default_memory_pool().backend_name,
            "tmp_dir": parent,
            "load_average_at_start": list(load_before),
            "load_average_at_end": list(load_after),
        },
        "workload": {
            "samples": len(samples),
            "seed": args.seed,
            "image_bytes": image_bytes,
            "json_bytes": payload - image_bytes,
            "payload_bytes": payload,
            "jpeg_kb_min_median_max": [min(sizes) // 1000, int(statistics.median(sizes)) // 1000, max(sizes) // 1000],
        },
        "procedure": {
            "memory": args.memory,
            "settle_max_seconds": args.settle_max if args.memory == "settle" else None,
            "order": "alternating: forward on even repeats, reversed on odd ones",
        },
        "mb": "10**6 bytes of payload (image + json member bytes)",
        "target": {"variant": "writer_validate", "ratio_at_least": TARGET, "on": "median and mean"},
        "results": results,
    }
    out["summary"] = summary_rows(out)

    print(
        f"\n{'variant':<18} {'median s':>9} {'mean s':>8} {'min-max s':>13} {'sys s (med)':>11} "
        f"{'median':>7} {'mean':>7} {'spread':>13}   (ratios: MB/s / tarfile MB/s; target >= {TARGET} on median and mean)"
    )
    by_variant = {variant: row for (variant, _, _), row in zip(ROWS, out["summary"])}
    for n in names:
        r = results[n]
        row = by_variant.get(n)
        ratios = f"{row['median']:>7.3f} {row['mean']:>7.3f} {row['min']:>6.3f}-{row['max']:<6.3f}" if row else f"{1:>7.3f} {1:>7.3f} {'':>13}"
        print(
            f"{n:<18} {r['median_seconds']:>9.3f} {r['mean_seconds']:>8.3f} "
            f"{min(r['seconds']):>6.3f}-{max(r['seconds']):<6.3f} {statistics.median(r['system_seconds']):>11.3f} {ratios}"
        )
    print(f"load average: {' '.join(f'{x:.2f}' for x in load_before)} at the start, {' '.join(f'{x:.2f}' for x in load_after)} at the end")
    emit(out["summary"])

    if not args.no_save:
        path = Path(args.results)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {path}")

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
