"""Trainer data feeding vs model steps: is the loader the bottleneck?

For each trainer, on real shards (build-proxy single-image and build-refs collection outputs made
with the tiny RANDOM-WEIGHT models; pass --proxy / --refs to use existing outputs, otherwise they
are built first, outside the timing), in one process on one rank with the shipped configs:

  loader samples/s   the rank's data work per step, alone: read shards (Parquet, one cached
                     shard, so crossing shards re-reads), decode, tokenize and pack (planner) or
                     decode, crop and collate images (visualizer), for the same batches
  step samples/s     forward + backward + optimizer step on those batches, already in memory
  ratio              loader / step: above 1 the loader alone outruns the model
  overlapped         the training loop's way: the Prefetcher thread builds batches while the
                     model steps; overlapped / step near 1 means the model never waits for data

    .venv/bin/python -m benchmarks.bench_train [--steps 40] [--proxy OUT] [--refs OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from benchmarks.report import command_line, emit, now

RESULTS = Path(__file__).parent / "results" / "train.json"
LOADER_TARGET = 1.0  # the loader alone at least as fast as the model step: the loader is not the bottleneck


def summary_rows(result: dict) -> list[dict]:
    """The summary block of a results file of this benchmark: per trainer, one measurement of
    `steps` batches. Rows: loader samples/s / step samples/s (= step seconds / loader seconds of
    the same batches; target 1: the loader alone outruns the model step) and overlapped / step
    only (the Prefetcher loop against the step alone; informative).

    Files from before the benchmark recorded its command and date (`measured_at`, no `command`)
    get a command rebuilt from what they recorded (steps and data folders), marked as such.
    """
    from benchmarks.summary import summary_row

    date = result.get("date") or result["measured_at"]
    command = result.get("command")
    if command is None:
        steps = sorted({r["steps"] for r in result["runs"]})
        if len(steps) != 1:
            raise ValueError(f"runs with different steps {steps}: cannot rebuild the command")
        data = result["data"]
        command = (
            f"python -m benchmarks.bench_train --steps {steps[0]} --proxy {data['proxy']} --refs {data['refs']}"
            "  # rebuilt from the steps and data folders the file records; it recorded no command"
        )
    rows = []
    for r in result["runs"]:
        rows.append(
            summary_row(
                "train", f"{r['trainer']}, {r['samples']} samples in {r['steps']} batches: loader alone / model step alone",
                "samples/s ratio, loader / step", [r["step_s"]], [r["loader_s"]], LOADER_TARGET, date=date, command=command,
            )
        )
        rows.append(
            summary_row(
                "train", f"{r['trainer']}: training loop with the Prefetcher thread / model step alone",
                "samples/s ratio, overlapped / step", [r["step_s"]], [r["overlapped_s"]], None, date=date, command=command,
            )
        )
    return rows


def build_data(work: Path) -> tuple[str, str]:
    from weaverdata.config import ProxyConfig, RefsConfig, load_config
    from weaverdata.demo import PIPELINES, _tiny_models, build_demo_input, proxy_inputs, proxy_overrides, tiny_model_overrides
    from weaverdata.job import run_job
    from weaverdata.recipes import build_proxy, build_refs

    models = _tiny_models(Path(".cache"))
    inputs = proxy_inputs(work / "proxy-input")
    proxy_out = work / "proxy"
    cfg = load_config(ProxyConfig, PIPELINES / "proxy-single-image.yaml", {"input.path": str(inputs["single-image"]), "output.path": str(proxy_out), "runtime.progress": False, **proxy_overrides(models, "single-image")})
    run_job(build_proxy.RECIPE, cfg, build_proxy.process_unit, command="bench_train", plan=build_proxy.plan_job, details_file=build_proxy.DETAILS)
    photos = build_demo_input(work / "refs-input") / "photos"
    refs_out = work / "refs"
    cfg = load_config(RefsConfig, PIPELINES / "refs-collection.yaml", {"input.path": str(photos), "output.path": str(refs_out), "runtime.progress": False, **tiny_model_overrides(models), "grouping.edge_threshold": 0.99, "band.low": 0.9, "band.high": 0.9995})
    run_job(build_refs.RECIPE, cfg, build_refs.process_unit, command="bench_train", plan=build_refs.plan_job, details_file=build_refs.DETAILS)
    return str(proxy_out), str(refs_out)


def measure(trainer: str, data: str, steps: int, work: Path) -> dict:
    import torch

    from weaverdata.config import load_config
    from weaverdata.demo import PIPELINES
    from weaverdata.io.storage import Location
    from weaverdata.train.config import PlannerTrainConfig, VisualizerTrainConfig
    from weaverdata.train.data import DataPosition, SampleStream, ShardReader, build_index, list_shards, split_eval
    from weaverdata.train.loop import Ranks, make_task

    model = PlannerTrainConfig if trainer == "planner" else VisualizerTrainConfig
    cfg = load_config(model, PIPELINES / f"train-{trainer}.yaml", {"data.path": data, "output": str(work / trainer), "data.shard_cache": 1})
    task, _ = make_task(trainer, cfg.model_dump(mode="json"))
    torch.set_num_threads(1)  # one rank = one core here (cpus_per_worker 1)
    task.setup(cfg, Location.of(cfg.output), Ranks())
    index = build_index(data, list_shards(data, None, task.schema), task.kind_column)
    train, _ = split_eval(index, cfg.data.eval_fraction, cfg.data.eval_max_samples)
    pool = task.stages(train, steps)[-1][1]

    def fresh_stream():
        return SampleStream(pool, ShardReader(data, cfg.data.format, task.columns, 1), 0, 1, 0, cfg.data.shuffle_window, DataPosition())

    def next_batch(stream):
        b = task.next_batch(stream)
        if b is None:
            stream.next_epoch()
            b = task.next_batch(stream)
        return b

    stream = fresh_stream()
    t0 = time.perf_counter()
    batches = [next_batch(stream) for _ in range(steps)]
    loader_s = time.perf_counter() - t0
    samples = sum(len(task.batch_ids(b)) for b in batches)

    params = [p for p in task.trainable().parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr)
    loss, _, _ = task.loss(batches[0], 0, Ranks())  # warm-up, outside the timing
    loss.backward()
    opt.zero_grad()
    t0 = time.perf_counter()
    for i, b in enumerate(batches):
        loss, weight, _ = task.loss(b, i + 1, Ranks())
        (loss / weight).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    step_s = time.perf_counter() - t0

    # the training loop's way: batches built by the Prefetcher thread while the model steps
    from weaverdata.train.loop import Prefetcher

    feed = Prefetcher(task, fresh_stream())
    t0 = time.perf_counter()
    for i in range(steps):
        b, _ = feed.get()
        if b is None:
            feed.answer("next_epoch")
            b, _ = feed.get()
        loss, weight, _ = task.loss(b, i + 1, Ranks())
        (loss / weight).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    overlapped_s = time.perf_counter() - t0
    feed.close()
    return {
        "trainer": trainer, "steps": steps, "samples": samples, "batch_size": cfg.train.batch_size,
        "loader_s": round(loader_s, 3), "step_s": round(step_s, 3),
        "loader_samples_per_s": round(samples / loader_s, 1), "step_samples_per_s": round(samples / step_s, 1),
        "ratio_loader_over_step": round(step_s / loader_s, 2),
        "overlapped_s": round(overlapped_s, 3), "overlapped_samples_per_s": round(samples / overlapped_s, 1),
        "ratio_overlapped_over_step": round(step_s / overlapped_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--proxy", default=None, help="an existing build-proxy output")
    ap.add_argument("--refs", default=None, help="an existing build-refs output")
    ap.add_argument("--results", type=Path, default=RESULTS, help=f"results file (default results/{RESULTS.name})")
    ap.add_argument("--no-save", action="store_true", help="do not write the results file")
    args = ap.parse_args(argv)
    os.environ.setdefault("WEAVERDATA_CACHE", str(Path(".cache").resolve()))
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    proxy, refs = args.proxy, args.refs
    if not (proxy and refs):
        built = build_data(work)
        proxy, refs = proxy or built[0], refs or built[1]
    load_before = os.getloadavg()
    rows = [measure("planner", proxy, args.steps, work), measure("visualizer", refs, args.steps, work)]
    for r in rows:
        print(f"{r['trainer']:10s} loader {r['loader_samples_per_s']:8.1f} samples/s   step {r['step_samples_per_s']:8.1f} samples/s   loader/step {r['ratio_loader_over_step']:.2f}   overlapped/step {r['ratio_overlapped_over_step']:.2f}")
    result = {
        "benchmark": "trainer data feeding vs model steps, one rank (loader alone, step alone, overlapped)",
        "command": command_line("bench_train", argv),
        "date": now(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "data": {"proxy": proxy, "refs": refs},
        "runs": rows,
    }
    result["summary"] = summary_rows(result)
    emit(result["summary"])
    if not args.no_save:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
