"""build-proxy throughput per recipe: documents per second and the share of wall time in the engine.

For each recipe (documents, single image, image groups, text seeds) on the demo's real inputs
(`weaverdata.demo.proxy_inputs`: scikit-image photos, gensim's Wikipedia titles and text, HTML
pages and OBELICS rows) with the tiny RANDOM-WEIGHT models (vLLM through ray.data.llm, open_clip),
run the whole job in-process (`run_job`, local Ray started once, outside the timing) into a fresh
output folder, and report:

  documents/s     samples written / job wall time (plan + engine + write + summary)
  inputs/s        inputs (accepted + rejected) / job wall time
  engine share    wall time of the text stage (the job's engine start and every round of every
                  unit) / job wall time; the engines' own busy fraction is recorded beside it

    .venv/bin/python -m benchmarks.bench_proxy [--repeats 1] [--recipes documents,single-image]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from benchmarks.report import command_line, emit, now, value_row

RECIPES = ("documents", "single-image", "image-group", "text-seed")
RESULTS = Path(__file__).parent / "results" / "proxy.json"


def summary_rows(result: dict) -> list[dict]:
    """The summary block of a results file of this benchmark, from its per-run figures.

    Per recipe (informative, no target): documents/s (median of the repeats; mean = all samples /
    all wall seconds) and the engine share of the wall time (median; mean = all engine seconds /
    all wall seconds). Neither is a ratio against a bare engine.
    """
    rows = []
    common = {"date": result["date"], "command": result["command"]}
    recipes = list(dict.fromkeys(r["recipe"] for r in result["runs"]))
    for recipe in recipes:
        runs = [r for r in result["runs"] if r["recipe"] == recipe]
        wall = sum(r["wall_s"] for r in runs)
        rows.append(
            value_row(
                "proxy", f"build-proxy {recipe}, tiny models: documents written per second of job wall time", "documents/s",
                [r["samples"] / r["wall_s"] for r in runs], None, mean=sum(r["samples"] for r in runs) / wall, **common,
            )
        )
        rows.append(
            value_row(
                "proxy", f"build-proxy {recipe}, tiny models: share of the job's wall time " + ("in the text stage (engine start included)" if "stage_seconds" in runs[0] else "inside the engine (starts included)"),
                "engine share (0-1)", [r["engine_s"] / r["wall_s"] for r in runs], None, mean=sum(r["engine_s"] for r in runs) / wall, **common,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--results", type=Path, default=RESULTS, help=f"results file (default results/{RESULTS.name})")
    ap.add_argument("--no-save", action="store_true", help="do not write the results file")
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
            text_s = d["stage_seconds"]["text"]  # the text stage: engine start, every round of every unit, its checks
            row = {
                "recipe": recipe, "repeat": rep, "wall_s": round(wall, 2), "samples": summary["samples"], "inputs": summary["inputs"],
                "documents_per_s": round(summary["samples"] / wall, 3), "inputs_per_s": round(summary["inputs"] / wall, 3),
                "engine_s": text_s, "engine_rounds": d["engine_rounds"], "engine_share": round(text_s / wall, 3),
                "engine_starts": d.get("engine_starts"), "engine_busy_fraction": d.get("engine_busy_fraction"), "stage_seconds": d["stage_seconds"],
                "requests": d["captioning"].get("requests", 0), "generated": d["captioning"].get("generated", 0),
            }
            runs.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "benchmark": "build-proxy documents/s and engine share per recipe (tiny random-weight models)",
        "command": command_line("bench_proxy", argv),
        "date": now(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_before": load_before, "load_after": os.getloadavg()},
        "runs": runs,
    }
    result["summary"] = summary_rows(result)
    emit(result["summary"])
    if not args.no_save:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.results}")
    print("\n| recipe | samples | inputs | wall s | documents/s | inputs/s | engine s (rounds) | engine share |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        print(f"| {r['recipe']} | {r['samples']} | {r['inputs']} | {r['wall_s']} | {r['documents_per_s']} | {r['inputs_per_s']} | {r['engine_s']} ({r['engine_rounds']}) | {r['engine_share']:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
