"""CLIP image-embedding images/s through weaverdata's Ray Data stage against a bare batched open_clip loop.

Acceptance point: the CLIP embedding stage's images/s divided by a bare batched open_clip forward
on the same images, target at least 0.9.

Workload (built before anything is timed): N distinct real-photo JPEGs (random crops, resizes
and qualities of scikit-image's bundled photos, 50-200 KB, 700-1100 px; `bench_writer`'s
generator) held as bytes in memory. Models: the tiny random-weight open_clip model
(`.cache/tiny-models/clip`, built if missing) and open_clip `ViT-B-32` with random weights
(`pretrained=None`, a realistic size: 88M parameters, 224 px input). Precision fp32 and bf16.

Timed variants, alternated (bare first on even repeats, weaverdata first on odd ones), medians
reported, all in this one process (the weaverdata stage runs in a local Ray started by
`weaverdata.runtime.connect`; the bare loop runs in the driver process itself):

  bare        `ClipEmbedder(cfg)` built before the loop (its model load is timed on its own,
              for the start-included figure); timed: for every batch of `cfg.batch_size` JPEGs,
              the decode and transform the stage does, with the stage's own `PrepareClipBatch`
              object (`decode_image(b, with_phash=False, enough_side=S)`: the same function at
              the same reduced DCT scale, S the model's input side; then its transform), then
              `embedder.embed_pixels` (forward + L2 norm). Both sides do the same work. Torch
              uses its default thread count in this process (all cores).
  weaverdata  `embed_dataset(ray.data.from_items([{id, image}]), cfg)` consumed fully
              (`iter_batches`), from `from_items` to the last batch: `PrepareClipBatch` (safe
              decode with EXIF orientation and sha256, no phash; transform; `prep_replicas`
              actors) and `ClipImageStage` (forward) actors. A warm-up run on other images comes first. Ray Data starts
              new actors (and loads the model) for every execution, and its output reaches the
              driver in a few large blocks, so the stream rate is measured from inside: thin
              subclasses of the two stages (swapped into `weaverdata.models.clip` for the
              call) stamp each row with the wall time their batch's call started. Figures:
                total    N / (from_items ... last batch received): actor start included
                steady   N / (last batch received - first PrepareClipBatch call): actor start
                         excluded, all decode and forward work inside the window; conservative
                         (if the forward actor comes up later than the decode actor, that wait
                         is counted)
                steady from forward   N / (last batch received - first ClipImageStage call):
                         optimistic (rows decoded before the forward actor was up are free;
                         their number is reported)

Headline: ratio = weaverdata steady images/s / bare images/s, per model and precision (fp32 with
the ClipConfig defaults is the target figure; bf16 and other settings informative), beside the
ratio with actor start included (weaverdata total against the bare model load + loop). The
summary rows (`summary_rows`) give the median (ratio of the median throughputs), the mean (ratio
of the mean throughputs: total work / total time) and the spread of the per-repeat ratios.

    cd /work/main && .venv/bin/python -m benchmarks.bench_clip [--images 512] [--repeats 3]
    .venv/bin/python -m benchmarks.bench_clip --models vit-b-32 --variants '[{}, {"cpus_per_replica": 2}, {"prep_replicas": 2}]'
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from benchmarks.report import command_line, emit, now

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "clip.json"
TINY = REPO / ".cache" / "tiny-models" / "clip"


def build_images(n: int, seed: int) -> list[bytes]:
    import hashlib

    import numpy as np

    from benchmarks.bench_writer import _jpeg, _photos

    rng = np.random.default_rng(seed)
    photos = _photos()
    out, seen, i = [], set(), 0
    while len(out) < n:
        blob, _ = _jpeg(photos[i % len(photos)][1], rng)
        i += 1
        d = hashlib.sha256(blob).hexdigest()
        if d not in seen:
            seen.add(d)
            out.append(blob)
    return out


def model_cfg(name: str, precision: str, batch_size: int, overrides: dict | None = None):
    from weaverdata.config import ClipConfig

    if name == "tiny":
        if not (TINY / "open_clip_model.safetensors").exists():
            from weaverdata.models.clip import build_tiny_clip

            build_tiny_clip(TINY, seed=0)
        kw = {"model": str(TINY)}
    else:
        kw = {"model": "ViT-B-32", "pretrained": None}
    return ClipConfig(**kw, precision=precision, batch_size=batch_size, device="cpu", **(overrides or {}))


def run_bare(embedder, prep, blobs: list[bytes]) -> float:
    """Seconds of the bare loop over `blobs`: per image the decode and transform the stage does
    (`prep` is a `PrepareClipBatch`: its transform and its input side for the reduced decode),
    then the forward per batch."""
    import numpy as np

    from weaverdata.media.image import decode_image

    bs = embedder.cfg.batch_size
    side = prep.shape[1]
    t = time.perf_counter()
    n = 0
    for start in range(0, len(blobs), bs):
        pixels = np.stack(
            [prep.transform(decode_image(b, with_phash=False, enough_side=side).rgb).numpy() for b in blobs[start : start + bs]]
        )
        n += len(embedder.embed_pixels(pixels))
    wall = time.perf_counter() - t
    assert n == len(blobs)
    return wall


def instrumented_stages():
    """Subclasses of weaverdata's two stages that add their call-start wall time to every row."""
    import numpy as np

    from weaverdata.models import clip

    class TimedPrepare(clip.PrepareClipBatch):
        def __call__(self, batch):
            t = time.time()
            out = super().__call__(batch)
            out["bench_prep_t0"] = np.full(len(out["clip_error"]), t)
            return out

    class TimedImageStage(clip.ClipImageStage):
        def __call__(self, batch):
            t = time.time()
            out = super().__call__(batch)
            out["bench_fwd_t0"] = np.full(len(out["clip_error"]), t)
            return out

    return TimedPrepare, TimedImageStage


# Former prototypes of this benchmark, now real code: the decode actors' count is
# `ClipConfig.prep_replicas`, and the decode stage never computes the perceptual hash.
LEGACY_KEYS = {"_prep_concurrency": "prep_replicas", "_no_phash": None}


def config_overrides(overrides: dict) -> dict:
    """A variant's ClipConfig fields, the former prototype keys mapped onto them."""
    fields = {}
    for k, v in overrides.items():
        if k in LEGACY_KEYS:
            if LEGACY_KEYS[k]:
                fields.setdefault(LEGACY_KEYS[k], v)
        elif k.startswith("_"):
            raise SystemExit(f"unknown variant key {k!r}")
        else:
            fields[k] = v
    return fields


def run_weaverdata(cfg, blobs: list[bytes], tag: str) -> dict:
    import ray

    from weaverdata.models import clip

    embed = clip.embed_dataset
    prep_cls, fwd_cls = instrumented_stages()
    originals = clip.PrepareClipBatch, clip.ClipImageStage
    clip.PrepareClipBatch, clip.ClipImageStage = prep_cls, fwd_cls  # embed_dataset looks them up at call time
    try:
        t0_wall, t = time.time(), time.perf_counter()
        ds = ray.data.from_items([{"id": f"{tag}-{i:05d}", "image": b} for i, b in enumerate(blobs)])
        rows, errors, prep_t0, fwd_t0 = 0, 0, [], []
        for batch in embed(ds, cfg).iter_batches(batch_size=None, batch_format="numpy"):
            rows += len(batch["id"])
            errors += sum(1 for e in batch["clip_error"] if e)
            prep_t0.extend(batch["bench_prep_t0"].tolist())
            fwd_t0.extend(batch["bench_fwd_t0"].tolist())
        wall = time.perf_counter() - t
    finally:
        clip.PrepareClipBatch, clip.ClipImageStage = originals
    assert rows == len(blobs), (rows, len(blobs))
    end = t0_wall + wall
    first_prep, first_fwd = min(prep_t0), min(fwd_t0)
    return {
        "seconds": wall,
        "first_prep_call_seconds": first_prep - t0_wall,
        "first_forward_call_seconds": first_fwd - t0_wall,
        "rows_prepared_before_first_forward": sum(1 for x in prep_t0 if x < first_fwd),
        # conservative: from the first decode call (both stages' work inside the window)
        "steady_images_per_s": rows / (end - first_prep),
        # optimistic: from the first forward call (decode work done earlier is not counted)
        "steady_from_forward_images_per_s": rows / (end - first_fwd),
        "errors": errors,
    }


TARGET = 0.9  # steady-state ratio, fp32, ClipConfig defaults
BARE_DECODE = "PrepareClipBatch's decode_image(with_phash=False, enough_side=<model input side>) and transform: the stage's"
METRIC = "images/s ratio, weaverdata / bare"


def summary_rows(result: dict) -> list[dict]:
    """The summary block of a results file of this benchmark, from its raw per-repeat figures.

    Per model, precision and setting: the steady-state ratio (actor start excluded; target 0.9
    for fp32 with the ClipConfig defaults) and the ratio with actor start included
    (informative). Files written before the bare loop used the stage's decode (no
    `workload.bare_decode`) say so in the row's name, and their rows carry no target: their
    bare loop decoded JPEGs in full with plain PIL while the stage ran its own decode (with a
    perceptual hash on 2026-11-23, at a reduced DCT scale from 2026-12-01), so the two sides did
    not do the same work.
    """
    from benchmarks.summary import summary_row

    n = result["workload"]["images"]
    full_decode = "bare_decode" not in result["workload"]
    rows = []
    for r in result["results"]:
        setting = "defaults" if not r["overrides"] else json.dumps(r["overrides"], sort_keys=True)
        base = f"{r['model']} {r['precision']}, {setting}"
        note = " (bare loop decoded in full: not like for like)" if full_decode else ""
        runs = r["weaverdata_runs"]
        steady_s = [n / w["steady_images_per_s"] for w in runs]
        target = TARGET if r["precision"] == "fp32" and not r["overrides"] and not full_decode else None
        common = {"date": result["date"], "command": result["command"]}
        rows.append(summary_row("clip", f"{base}: steady state (actor start excluded){note}", METRIC, r["bare_seconds"], steady_s, target, **common))
        if "bare_load_seconds" in r:
            bare_total = [r["bare_load_seconds"] + b for b in r["bare_seconds"]]
            name = f"{base}: actor start included (bare: model load + loop){note}"
        else:
            bare_total = r["bare_seconds"]
            name = f"{base}: actor start included, weaverdata side only (bare model load not recorded){note}"
        rows.append(summary_row("clip", name, METRIC, bare_total, [w["seconds"] for w in runs], None, **common))
    return rows


def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=256, help="images per timed run (default 256)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per side (default 2)")
    ap.add_argument("--warmup-images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64, help="ClipConfig.batch_size, both sides (default 64)")
    ap.add_argument("--models", default="tiny,vit-b-32", help="comma list of tiny, vit-b-32")
    ap.add_argument("--precisions", default="fp32", help="comma list of fp32, bf16 (default fp32)")
    ap.add_argument("--variants", default="[{}]", help="JSON list of ClipConfig overrides for the weaverdata side (cpus_per_replica, prep_replicas, prep_cpus, replicas, ...); "
                    'the former prototype keys "_prep_concurrency": N (now prep_replicas) and "_no_phash" (now always) are still accepted')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default=str(RESULTS), help=f"results file (default results/{RESULTS.name})")
    ap.add_argument("--no-save", action="store_true", help="do not write the results file")
    args = ap.parse_args(argv)

    import open_clip  # imported before any timing: the bare model load below is the load alone
    import torch

    from weaverdata.config import RuntimeConfig
    from weaverdata.models.clip import ClipEmbedder, PrepareClipBatch
    from weaverdata.runtime import connect

    load_start = os.getloadavg()
    t = time.perf_counter()
    warm = build_images(args.warmup_images, args.seed + 1000)
    blobs = build_images(args.images, args.seed)
    print(f"workload: {len(blobs)} JPEGs ({sum(map(len, blobs)) / 1e6:.1f} MB) + {len(warm)} warm-up, built in {time.perf_counter() - t:.1f} s")
    info = connect(RuntimeConfig(progress=False))
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    print(f"local Ray: {info['cpus']} logical CPUs; driver torch threads {torch.get_num_threads()}")
    variants = json.loads(args.variants)

    results = []
    for model in args.models.split(","):
        for precision in args.precisions.split(","):
            cfg = model_cfg(model, precision, args.batch_size)
            gc.collect()
            t = time.perf_counter()
            embedder = ClipEmbedder(cfg)
            bare_load_s = time.perf_counter() - t
            prep = PrepareClipBatch(cfg)  # its decode and transform, in the driver: the stage's work
            run_bare(embedder, prep, warm)
            for overrides in variants:
                wcfg = model_cfg(model, precision, args.batch_size, config_overrides(overrides))
                run_weaverdata(wcfg, warm, "warm")
                bare_s, wd = [], []
                for r in range(args.repeats):
                    order = ("bare", "wd") if r % 2 == 0 else ("wd", "bare")
                    for side in order:
                        gc.collect()
                        if side == "bare":
                            bare_s.append(run_bare(embedder, prep, blobs))
                        else:
                            wd.append(run_weaverdata(wcfg, blobs, f"r{r}"))
                    print(
                        f"{model} {precision} {json.dumps(overrides)} repeat {r + 1}: bare {len(blobs) / bare_s[-1]:.1f}/s, "
                        f"weaverdata steady {wd[-1]['steady_images_per_s']:.1f}/s, total {len(blobs) / wd[-1]['seconds']:.1f}/s "
                        f"(decode from {wd[-1]['first_prep_call_seconds']:.1f} s, forward from {wd[-1]['first_forward_call_seconds']:.1f} s, "
                        f"{wd[-1]['rows_prepared_before_first_forward']} rows decoded before; from-forward {wd[-1]['steady_from_forward_images_per_s']:.1f}/s)",
                        flush=True,
                    )
                bare_ips = len(blobs) / med(bare_s)
                steady = med([w["steady_images_per_s"] for w in wd])
                total = len(blobs) / med([w["seconds"] for w in wd])
                steady_fwd = med([w["steady_from_forward_images_per_s"] for w in wd])
                results.append(
                    {
                        "model": model,
                        "precision": precision,
                        "overrides": overrides,
                        "bare_images_per_s": round(bare_ips, 2),
                        "weaverdata_steady_images_per_s": round(steady, 2),
                        "weaverdata_total_images_per_s": round(total, 2),
                        "ratio_steady": round(steady / bare_ips, 3),
                        "ratio_total": round(total / bare_ips, 3),
                        "weaverdata_steady_from_forward_images_per_s": round(steady_fwd, 2),
                        "ratio_steady_from_forward": round(steady_fwd / bare_ips, 3),
                        "paired_steady_ratios": [round(w["steady_images_per_s"] * b / len(blobs), 3) for w, b in zip(wd, bare_s)],
                        "bare_seconds": [round(s, 3) for s in bare_s],
                        "bare_load_seconds": round(bare_load_s, 3),
                        "bare_decode_side": int(prep.shape[1]),
                        "weaverdata_runs": [{k: round(v, 3) if isinstance(v, float) else v for k, v in w.items()} for w in wd],
                    }
                )
            del embedder
    load_end = os.getloadavg()
    ray.shutdown()

    print(f"\n{'model':<9} {'prec':<5} {'variant':<28} {'bare/s':>8} {'steady/s':>9} {'ratio':>6} {'total/s':>8} {'ratio(total)':>12}")
    for r in results:
        print(
            f"{r['model']:<9} {r['precision']:<5} {json.dumps(r['overrides']):<28} {r['bare_images_per_s']:>8.1f} "
            f"{r['weaverdata_steady_images_per_s']:>9.1f} {r['ratio_steady']:>6.3f} {r['weaverdata_total_images_per_s']:>8.1f} {r['ratio_total']:>12.3f}"
        )
    print(f"(target ratio >= 0.9; load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end)")

    out = {
        "benchmark": "CLIP image embedding images/s: weaverdata embed_dataset (Ray Data) vs bare batched open_clip loop",
        "command": command_line("bench_clip", argv),
        "date": now(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "versions": _versions(("ray", "torch", "open_clip_torch", "pillow")),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "ray_logical_cpus": info["cpus"],
            "load_average_start": list(load_start),
            "load_average_end": list(load_end),
        },
        "workload": {
            "images": len(blobs),
            "jpeg_bytes": sum(map(len, blobs)),
            "repeats": args.repeats,
            "batch_size": args.batch_size,
            "bare_decode": BARE_DECODE,
        },
        "target": {"ratio_steady_at_least": TARGET},
        "results": results,
    }
    out["summary"] = summary_rows(out)
    emit(out["summary"])
    if not args.no_save:
        path = Path(args.results)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


def _versions(packages) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    raise SystemExit(main())
