"""build-proxy throughput per recipe: documents per second and the share of wall time in the engine.

For each recipe (documents, single image, image groups, text seeds) on the demo's real inputs
(`weaverdata.demo.proxy_inputs`: scikit-image photos, gensim's Wikipedia titles and text, HTML
pages and OBELICS rows) with the tiny RANDOM-WEIGHT models (vLLM through ray.data.llm, open_clip),
run the whole job in-process (`run_job`, local Ray started once, outside the timing) into a fresh
output folder, and report:

  documents/s     samples written / job wall time (plan + engine + write + summary)
  inputs/s        inputs (accepted + rejected) / job wall time
  engine share    wall time inside the Captioner runs (engine start included) / job wall time

    .venv/bin/python -m benchmarks.bench_proxy [--repeats 1] [--recipes documents,single-image]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

RECIPES = ("documents", "single-image", "image-group", "text-seed")
RESULTS = Path(__file__).parent / "results" / "proxy.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)

    from weaverdata.config import ProxyConfig, RuntimeConfig, load_config
    from weaverdata.demo import PIPELINES, _tiny_models, proxy_inputs, proxy_overrides
    from weaverdata.job import run_job
    from weaverdata.recipes import build_proxy
    from weaverdata.runtime import connect

    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    models = _tiny_models(Path(".cache"))
    inputs = proxy_inputs(work / "input")
    connect(RuntimeConfig(progress=False))
    load_before = os.getloadavg()
    runs = []
    for recipe in args.recipes.split(","):
        for rep in range(args.repeats):
            out = work / f"{recipe}-{rep}"
            cfg = load_config(ProxyConfig, PIPELINES / f"proxy-{recipe}.yaml", {"input.path": str(inputs[recipe]), "output.path": str(out), "runtime.progress": False, **proxy_overrides(models, recipe)})
            t0 = time.monotonic()
            summary = run_job(build_proxy.RECIPE, cfg, build_proxy.process_unit, command=f"bench_proxy {recipe}", plan=build_proxy.plan_job, details_file=build_proxy.DETAILS)
            wall = time.monotonic() - t0
            d = summary["details"]
            row = {
                "recipe": recipe, "repeat": rep, "wall_s": round(wall, 2), "samples": summary["samples"], "inputs": summary["inputs"],
                "documents_per_s": round(summary["samples"] / wall, 3), "inputs_per_s": round(summary["inputs"] / wall, 3),
                "engine_s": d["engine_seconds"], "engine_rounds": d["engine_rounds"], "engine_share": round(d["engine_seconds"] / wall, 3),
                "requests": d["captioning"].get("requests", 0), "generated": d["captioning"].get("generated", 0),
            }
            runs.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "benchmark": "build-proxy documents/s and engine share per recipe (tiny random-weight models)",
        "command": "python -m benchmarks.bench_proxy " + " ".join(argv or []),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_before": load_before, "load_after": os.getloadavg()},
        "runs": runs,
    }
    if not args.no_save:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| recipe | samples | inputs | wall s | documents/s | inputs/s | engine s (rounds) | engine share |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        print(f"| {r['recipe']} | {r['samples']} | {r['inputs']} | {r['wall_s']} | {r['documents_per_s']} | {r['inputs_per_s']} | {r['engine_s']} ({r['engine_rounds']}) | {r['engine_share']:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
