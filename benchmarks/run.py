"""Run every benchmark with its default settings, then print one table of ratios.

Each benchmark runs as a subprocess (`python -m benchmarks.bench_<id>`), which saves its
results file under benchmarks/results/ with a "summary" block; their output is streamed here,
line by line, prefixed with the benchmark's id. Afterwards the summary rows of the files just
written are printed (benchmark, median and mean ratio, target, met or not) and the results
block of benchmarks/README.md is rewritten from all the results files.

    python -m benchmarks.run                      # every benchmark, default settings (make bench)
    python -m benchmarks.run --only writer,clip   # some of them
    python -m benchmarks.run --quick              # small settings, a smoke run; saves nothing
    python -m benchmarks.run --list               # the benchmarks and their commands
    python -m benchmarks.run --table              # rewrite the README block from the results files; runs nothing
    python -m benchmarks.run --resummarise        # re-derive every results file's summary block from its raw data

The exit code is 1 if a benchmark crashed (exited non-zero), else 0: a target that is not met
is printed as NOT MET but is not an error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import doccheck, table
from benchmarks.report import parse_row

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bench:
    id: str
    module: str
    results: str  # file name under benchmarks/results/ written by the default run
    quick: tuple[str, ...]  # arguments of a smoke run (always with --no-save)
    note: str  # what the default run does, for --list


BENCHES = (
    Bench("writer", "bench_writer", "writer.json", ("--samples", "200", "--repeats", "3"), "2000 samples, 5 repeats"),
    Bench("clip", "bench_clip", "clip.json", ("--images", "32", "--repeats", "1", "--warmup-images", "16", "--models", "tiny"), "tiny and ViT-B-32 fp32, 256 images, 2 repeats"),
    Bench("captioning", "bench_captioning", "captioning.json", ("--images", "16", "--repeats", "1", "--warmup-images", "8"), "tiny VLM, 256 images, 2 repeats, 3 engine processes"),
    Bench("proxy", "bench_proxy", "proxy.json", ("--recipes", "text-seed"), "the four recipes once each, tiny models"),
    Bench("train", "bench_train", "train.json", ("--steps", "5"), "builds build-proxy and build-refs shards, then 40 steps per trainer"),
    Bench("mining", "bench_mining", "mining.json", ("--sizes", "10000", "--recall-queries", "200"), "10k, 100k and 1M embeddings; see results/mining.json for the memory 1M takes"),
    Bench("scale", "bench_scale", "scale.json", ("--sizes", "500,2000", "--skip-naive"), "build-refs and build-proxy at 1k, 4k, 16k inputs + the naive engine layout at 4k; hours on 2 cores"),
)


def command(bench: Bench, quick: bool) -> list[str]:
    args = [*bench.quick, "--no-save"] if quick else []
    return [sys.executable, "-m", f"benchmarks.{bench.module}", *args]


def run_one(bench: Bench, quick: bool) -> tuple[int, list[dict], float]:
    """Run one benchmark, streaming its output; (exit code, summary rows it printed, seconds)."""
    cmd = command(bench, quick)
    print(f"\n=== {bench.id}: {' '.join(['python', *cmd[1:]])}", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    rows = []
    t = time.monotonic()
    with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            row = parse_row(line.rstrip("\n"))
            if row is not None:
                rows.append(row)
            else:
                print(f"[{bench.id}] {line}", end="", flush=True)
        code = proc.wait()
    return code, rows, time.monotonic() - t


def ratio_table(rows: list[dict]) -> str:
    """Plain-text table: benchmark, row, median, mean, target, met or not."""
    lines = [f"{'benchmark':<11} {'median':>8} {'mean':>8} {'target':>8}  {'status':<11} row"]
    for r in rows:
        if r["target"] is None:
            target, status = "-", "informative"
        else:
            target, status = f">={r['target']:g}", "met" if r["met"] else "NOT MET"
        lines.append(f"{r['benchmark']:<11} {r['median']:>8.3g} {r['mean']:>8.3g} {target:>8}  {status:<11} {r['name']} [{r['metric']}]")
    return "\n".join(lines)


def resummarise(results_dir: Path = table.RESULTS_DIR) -> list[Path]:
    """Rewrite the "summary" block of every results file from its raw data; the files changed."""
    changed = []
    for path in table.result_files(results_dir):
        bench = doccheck.benchmark_of(path)
        if bench is None:
            raise SystemExit(f"{path}: belongs to no benchmark of {table.ORDER}")
        text = path.read_text()
        data = json.loads(text)
        data["summary"] = doccheck.summariser(bench)(data)
        indent = 1 if text.startswith("{\n \"") else 2  # keep each file's own indentation
        new = json.dumps(data, indent=indent) + "\n"
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--only", default=None, help="comma list of benchmark ids (default: all): " + ",".join(b.id for b in BENCHES))
    ap.add_argument("--quick", action="store_true", help="small settings for a smoke run; results are NOT saved (each benchmark's --no-save)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and their commands; run nothing")
    ap.add_argument("--table", action="store_true", help="rewrite the README results block from the results files; run nothing")
    ap.add_argument("--resummarise", action="store_true", help="re-derive every results file's summary block from its raw data, then rewrite the README block; run nothing")
    args = ap.parse_args(argv)

    ids = [b.id for b in BENCHES]
    only = args.only.split(",") if args.only else ids
    unknown = [x for x in only if x not in ids]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {ids}")
    benches = [b for b in BENCHES if b.id in only]

    if args.list:
        for b in benches:
            print(f"{b.id:<11} python -m benchmarks.{b.module}   ({b.note}; writes results/{b.results})")
            print(f"{'':<11} --quick: python -m benchmarks.{b.module} {' '.join([*b.quick, '--no-save'])}")
        return 0
    if args.resummarise:
        for path in resummarise():
            print(f"re-summarised {path.relative_to(REPO)}")
    if args.table or args.resummarise:
        print(table.render(table.collect()))
        changed = table.write_readme()
        print(f"\nbenchmarks/README.md: results block {'rewritten' if changed else 'already up to date'}")
        return 0

    crashed, rows, missing = [], [], []
    for b in benches:
        code, printed, seconds = run_one(b, args.quick)
        print(f"=== {b.id}: exit code {code} after {seconds / 60:.1f} min", flush=True)
        if code != 0:
            crashed.append(b.id)
            continue
        if args.quick:
            got = printed
        else:  # what the file says is what the README will say
            got = json.loads((table.RESULTS_DIR / b.results).read_text()).get("summary", [])
        if not got:
            missing.append(b.id)
        rows += got

    print("\n" + ratio_table(rows))
    unmet = [r for r in rows if r["met"] is False]
    for r in unmet:
        print(f"NOT MET: {r['benchmark']} {r['name']}: median {r['median']:.3g}, mean {r['mean']:.3g}, target {r['target']:g}")
    if missing:
        print(f"no summary rows from: {', '.join(missing)}")
    if crashed:
        print(f"CRASHED: {', '.join(crashed)}")
    if args.quick:
        print("(--quick: small settings, nothing saved; the README block is left as it is)")
    else:
        changed = table.write_readme()
        print(f"benchmarks/README.md: results block {'rewritten' if changed else 'already up to date'} from the results files")
    return 1 if crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
