"""How build-refs and build-proxy grow with their input: time per input, driver memory, engine starts.

Runs the real commands (`python cli.py build-refs|build-proxy ... --json`, each in its own
process with its own local Ray) with the tiny RANDOM-WEIGHT models (vLLM on CPU, open_clip) on
1k, 4k and 16k distinct 256 x 256 crops of scikit-image's real photos (random position, scale,
mirror and JPEG quality, seeded), and records for each run:

  wall s / input       the job's wall time per input (summary.json)
  driver peak          the driver's peak RSS (VmHWM, summary.json memory)
  tree peak            the peak of the summed RSS of the driver and all its descendants
                       (raylet, workers, engine actors), sampled every 0.2 s; an overcount:
                       an object-store page is in the RSS of every worker that maps it
  engine starts        vLLM engine constructions, restarts included (summary details)
  engine busy          the engines' busy share of their life (summary details)
  stage seconds        prepare / plan / text / settle from summary details; write = the rest

Recipes: build-refs collection with description and instruction on; build-proxy single_image
(two rounds: description + request, then the answer). The *naive* comparison runs build-proxy
single_image at 4k with the code of the commit before the engine pool (`--naive-commit`,
9731bfd, extracted with `git archive`, same virtualenv, same settings): one plain
`ray.data.llm` processor per round, each starting its own engine, the way it ran before.

Targets (issue 15): time per input at 16k at most 1.25 x that at 1k; driver peak at 16k at most
150 MB above the 1k run's, plus the embeddings added (2 KB per input); engine starts = engine replicas whatever the rounds
and retries; the pool at least 1.3 x faster than the naive way at 4k.

    python -m benchmarks.bench_scale                           # 1k, 4k, 16k for both recipes + naive at 4k (about 1.5-3 h on 2 cores)
    python -m benchmarks.bench_scale --sizes 500,2000 --no-save --skip-naive   # a smoke run
    python -m benchmarks.bench_scale --recipe-sizes proxy-single-image=1000,4000   # proxy up to 4k only
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.procmem import TreePeak
from benchmarks.report import command_line, emit, now, value_row

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "scale.json"
EMBEDDING_BYTES = 512 * 4  # tiny CLIP (open_clip, 512-d float32) kept per input by build-refs' driver

RECIPES = {
    "refs-collection": ("build-refs", "pipelines/refs-collection.yaml", {"text.description": True, "text.instruction": True, "band.mode": "quantile"}),
    "proxy-single-image": ("build-proxy", "pipelines/proxy-single-image.yaml", {"dedup": True}),
}


def crops(folder: Path, n: int, seed: int = 0) -> int:
    """n distinct 256 x 256 JPEG crops of scikit-image's real photos; returns the bytes written."""
    import numpy as np
    import skimage
    from PIL import Image, ImageOps

    data = Path(skimage.__file__).parent / "data"
    photos = [Image.open(p).convert("RGB") for p in sorted(data.iterdir()) if p.suffix in (".png", ".jpg")]
    photos = [p for p in photos if min(p.size) >= 300]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for k in range(n):
        im = photos[int(rng.integers(len(photos)))]
        side = int(rng.integers(256, min(im.size) + 1))
        x, y = int(rng.integers(0, im.width - side + 1)), int(rng.integers(0, im.height - side + 1))
        crop = im.crop((x, y, x + side, y + side)).resize((256, 256), resample=Image.BILINEAR)
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=int(rng.integers(80, 96)))
        (folder / f"crop-{k:06d}.jpg").write_bytes(buf.getvalue())
        total += len(buf.getvalue())
    return total


def tiny_sets(models: dict[str, Path], recipe: str) -> dict[str, object]:
    from weaverdata.demo import proxy_overrides, tiny_model_overrides

    if recipe.startswith("proxy"):
        return proxy_overrides(models, "single-image")
    return tiny_model_overrides(models)


def run_one(recipe: str, inp: Path, out: Path, models: dict[str, Path], extra: dict[str, object], timeout: float, code: Path = REPO) -> dict:
    """One job as a user runs it, with the weaverdata of `code` (this checkout, or an older commit's tree)."""
    command, config, recipe_sets = RECIPES[recipe]
    sets = {**tiny_sets(models, recipe), **recipe_sets, **extra, "runtime.progress": False}
    flags = [a for k, v in sets.items() for a in ("--set", f"{k}={v if isinstance(v, str) else json.dumps(v)}")]
    cmd = [sys.executable, str(code / "cli.py"), command, "-c", config, "-i", str(inp), "-o", str(out), "--json", *flags]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=code, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = TreePeak(proc.pid)
    peak.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        peak.stop.set()
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0:
        raise RuntimeError(f"{recipe} failed ({proc.returncode}): {stderr[-2000:]}")
    s = json.loads(stdout)
    d = s.get("details", {})
    wall = s["timings"]["wall_seconds"]
    stages = dict(d.get("stage_seconds", {}))
    stages["write"] = round(max(0.0, wall - sum(stages.values())), 3)
    starts = d.get("engine_starts")
    if starts is None and "engine_rounds" in d:  # code before the engine pool: a ray.data.llm processor (its own engines) per round
        starts = d["engine_rounds"] * s["config"]["engine"]["replicas"]
    return {
        "recipe": recipe, "inputs": s["inputs"], "samples": s.get("samples", s["accepted"]), "wall_s": wall, "process_s": round(time.monotonic() - started, 3),
        "s_per_input": wall / max(1, s["inputs"]), "driver_peak_bytes": s["memory"]["driver_peak_rss_bytes"], "tree_peak_bytes": peak.tree_peak,
        "spilled_bytes": s["memory"]["spilled_bytes"], "engine_starts": starts, "engine_busy_fraction": d.get("engine_busy_fraction"),
        "engine_replicas": s["config"]["engine"]["replicas"], "stage_seconds": stages, "captioning": d.get("captioning"), "overrides": extra,
    }


def summary_rows(result: dict) -> list[dict]:
    """Targets of issue 15 from the runs (one repeat each: median = mean = the run)."""
    from benchmarks.summary import met

    common = {"date": result["date"], "command": result["command"]}
    rows = []

    def at_most(row: dict) -> dict:
        row["met"] = met(row["median"], row["mean"], row["target"], higher_is_better=False)
        return row

    for recipe in RECIPES:
        runs = {r["size"]: r for r in result["runs"] if r["recipe"] == recipe and not r.get("naive")}
        if len(runs) < 2:
            continue
        small, big = runs[min(runs)], runs[max(runs)]
        rows.append(at_most(value_row("scale", f"{recipe}: wall time per input at {big['size']} / at {small['size']} inputs, tiny models", "time ratio",
                                      [big["s_per_input"] / small["s_per_input"]], 1.25, **common)))
        allowed = 150e6 + (big["size"] - small["size"]) * EMBEDDING_BYTES
        rows.append(at_most(value_row("scale", f"{recipe}: driver peak growth from {small['size']} to {big['size']} inputs, MB (target: 150 MB + the embeddings added)", "MB",
                                      [(big["driver_peak_bytes"] - small["driver_peak_bytes"]) / 1e6], round(allowed / 1e6, 1), **common)))
        starts = [r["engine_starts"] for r in runs.values()]
        rows.append(at_most(value_row("scale", f"{recipe}: engine starts per run over the sizes {sorted(runs)} (target: the replica count)", "engine starts",
                                      [float(x) for x in starts], float(small["engine_replicas"]), **common)))
    naive = [r for r in result["runs"] if r.get("naive")]
    pooled = [r for r in result["runs"] if not r.get("naive") and r["recipe"] == "proxy-single-image" and naive and r["size"] == naive[0]["size"]]
    if naive and pooled:
        rows.append(value_row("scale", f"proxy-single-image at {naive[0]['size']}: engines kept for the job vs one ray.data.llm processor per round (naive), speed-up", "time ratio (naive / pool)",
                              [naive[0]["wall_s"] / pooled[0]["wall_s"]], 1.3, **common))
    return rows


PROJECTED = (1_000_000, 10_000_000)
# the last commit before the engine pool (e003b8a): each round of a recipe was a ray.data.llm
# processor with its own engines, and the driver held the requests
NAIVE_COMMIT = "9731bfd"


def projection(result: dict) -> dict:
    """A paper projection per recipe from its two largest runs: what grows per added input.

    Linear in the input count from those two runs (the marginal growth, past the fixed costs
    the small runs are dominated by), so it says what the measured growth implies, no more:
    driver bytes per added input and the driver peak at 1M and 10M inputs; the wall time per
    input of the largest run stands for the node-hours (this machine's node: 2 cores, tiny
    models; a GPU node's rate is the engine's, not this one). The process tree's peak is not
    projected: it sums RSS, which counts an object-store page once in every worker that maps
    it, so it grows with the objects the workers have touched, not with what the node holds.
    """
    out = {}
    for recipe in RECIPES:
        runs = sorted((r for r in result["runs"] if r["recipe"] == recipe and not r.get("naive")), key=lambda r: r["size"])
        if len(runs) < 2:
            continue
        small, big = runs[-2], runs[-1]
        added = big["size"] - small["size"]
        driver_slope = (big["driver_peak_bytes"] - small["driver_peak_bytes"]) / added
        out[recipe] = {
            "from_sizes": [small["size"], big["size"]],
            "driver_bytes_per_input": round(driver_slope, 1),
            "s_per_input": round(big["s_per_input"], 5),
            "at": {
                str(n): {
                    "driver_peak_gb": round((small["driver_peak_bytes"] + max(0.0, driver_slope) * (n - small["size"])) / 1e9, 2),
                    "node_hours_here": round(big["s_per_input"] * n / 3600, 1),
                }
                for n in PROJECTED
            },
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,4000,16000")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--recipe-sizes", action="append", default=[], metavar="RECIPE=N,N",
                    help="sizes for one recipe instead of --sizes (e.g. proxy-single-image=1000,4000); repeatable")
    ap.add_argument("--naive-size", type=int, default=4000)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--naive-commit", default=NAIVE_COMMIT, help="the naive side runs this commit's code (git archive of this repository)")
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per run")
    ap.add_argument("--keep", action="store_true", help="keep the inputs and outputs (printed)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)

    from weaverdata.demo import _tiny_models

    models = _tiny_models(REPO / ".cache")
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    sizes = [int(x) for x in args.sizes.split(",")]
    recipes = args.recipes.split(",")
    per_recipe = {r: sizes for r in recipes}
    for spec in args.recipe_sizes:
        name, _, values = spec.partition("=")
        if name not in RECIPES:
            ap.error(f"--recipe-sizes: unknown recipe {name!r} (one of {', '.join(RECIPES)})")
        per_recipe[name] = [int(x) for x in values.split(",")]
        if name not in recipes:
            recipes.append(name)
    sizes = sorted({n for ns in per_recipe.values() for n in ns})
    load_before = os.getloadavg()
    runs = []
    started = now()

    def save(complete: bool) -> dict:
        """The results so far (written after every run, so a stopped benchmark keeps its finished runs)."""
        result = {
            "benchmark": "scale: build-refs collection and build-proxy single_image at growing input sizes (tiny models)",
            "command": command_line("bench_scale", argv),
            "date": started,
            "complete": complete,
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "load_average_start": list(load_before), "load_average_end": list(os.getloadavg())},
            "runs": runs,
        }
        result["summary"] = summary_rows(result)
        result["projection"] = projection(result)
        if not args.no_save:
            args.results.write_text(json.dumps(result, indent=1) + "\n")
        return result

    def naive(size: int) -> None:
        """build-proxy single_image with the code before the engine pool (`--naive-commit`): a
        ray.data.llm processor per round, each starting its own engine, as the recipes ran then."""
        if args.skip_naive or "proxy-single-image" not in recipes:
            return
        code = work / f"code-{args.naive_commit}"
        if not code.exists():
            code.mkdir(parents=True)
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.naive_commit], check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
        inp = work / f"in-{size}"
        input_bytes = crops(inp, size) if not inp.exists() else sum(p.stat().st_size for p in inp.iterdir())
        print(f"[scale] proxy-single-image on {size} crops, naive: the code of {args.naive_commit} (a ray.data.llm processor per round)", flush=True)
        r = run_one("proxy-single-image", inp, work / "out-naive", models, {}, args.timeout, code=code)
        runs.append({**r, "size": size, "input_bytes": input_bytes, "naive": True, "code": args.naive_commit})
        save(complete=False)
        print(f"[scale]   {r['wall_s']:.0f} s, engine starts {r['engine_starts']}", flush=True)
        shutil.rmtree(work / "out-naive", ignore_errors=True)
        if not any(x["recipe"] == "proxy-single-image" and x["size"] == size and not x.get("naive") for x in runs):
            r = run_one("proxy-single-image", inp, work / "out-pool", models, {}, args.timeout)
            runs.append({**r, "size": size, "input_bytes": input_bytes})
            save(complete=False)

    try:
        for size in sizes:
            inp = work / f"in-{size}"
            input_bytes = crops(inp, size)
            for recipe in [r for r in recipes if size in per_recipe[r]]:
                print(f"[scale] {recipe} on {size} crops ({input_bytes / 1e6:.0f} MB)", flush=True)
                r = run_one(recipe, inp, work / f"out-{recipe}-{size}", models, {}, args.timeout)
                runs.append({**r, "size": size, "input_bytes": input_bytes})
                save(complete=False)
                print(f"[scale]   {r['wall_s']:.0f} s, {1000 * r['s_per_input']:.1f} ms/input, driver peak {r['driver_peak_bytes'] / 2**20:.0f} MiB, "
                      f"tree peak {r['tree_peak_bytes'] / 2**20:.0f} MiB, engine starts {r['engine_starts']}, busy {r['engine_busy_fraction']}, stages {r['stage_seconds']}", flush=True)
                if not args.keep:
                    shutil.rmtree(work / f"out-{recipe}-{size}", ignore_errors=True)
            if size == args.naive_size:
                naive(size)
        if args.naive_size not in sizes:
            naive(args.naive_size)
    finally:
        if args.keep:
            print(f"[scale] inputs and outputs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result = save(complete=True)
    emit(result["summary"])
    if not args.no_save:
        print(f"saved {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
