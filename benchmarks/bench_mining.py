"""Corpus-scale pair mining against the bare matrix products of brute force, 10k to 1M embeddings.

For each corpus size n (`--sizes`), on the same machine and in the same run:

  mining       `index = build_index(x, "ivf", nlist=.., nprobe=.., train_size=..)` in the
               driver (faiss, all cores), then `mine_corpus(x, k, low, high, index=index,
               parallelism=P)`: normalise, serialise the index and put it in the Ray object
               store with the embeddings, P Ray tasks of 1 CPU searching query blocks for the
               k+1 nearest rows, merge and dedup of the blocks' pairs, band split. Wall seconds
               from the build to the returned arrays (Ray itself and its workers already
               running: an untimed warm-up mining call starts them). The same work as
               `mine_corpus(x, ..., kind="ivf", nlist=.., ...)`; the benchmark builds the index
               itself only to keep it for the recall measurement.
  brute force  only the matrix products an exact all-pairs search would need: `A @ C.T` with
               numpy (OpenBLAS on all cores) over `--bf-block` x `--bf-block` blocks of the
               normalised corpus, i.e. the whole n x n similarity matrix. The top-k selection
               brute force also needs is NOT timed, so this is a lower bound on brute force and
               the ratio below favours brute force. Every block is timed when the matrix has at
               most `--bf-blocks` blocks; otherwise `--bf-blocks` random full-size blocks are
               timed and their mean is extrapolated linearly to the (n / block)^2 blocks.
  ratio        brute-force seconds / mining seconds (how many times faster mining is), and the
               same with CPU seconds: user + system seconds of the driver and every descendant
               process (all threads) over the timed mining, against the driver's CPU seconds over
               the products (BLAS threads included). Other jobs on the machine stretch wall
               times (the two sides are not timed at the same moment) but hardly CPU seconds.
  recall@k     the ANN top-k from the very index the mining searched (same nprobe) against
               the exact top-k (`brute_force_knn`) for `--recall-queries` random corpus items,
               each item itself left out of both lists.
  peak memory  a thread sampling every `--mem-interval` s (0.5) the driver and all its descendant
               processes (the local Ray: gcs, raylet and its shared-memory object store,
               workers) during the timed mining: peak of the summed PSS (proportional set
               size, from /proc/PID/smaps_rollup: a page shared by k processes, such as the
               object store mapped by the raylet, the driver and the workers, counts 1/k in
               each, so the sum counts it once) and peak of the summed RSS (shared pages counted
               in every process that maps them: an upper bound). Both include the driver's copy
               of the benchmark's embeddings (n x d x 4 bytes), the index the benchmark keeps
               for the recall (about n x (d x 4 + 8) bytes; `mine_corpus` alone frees its
               index once serialised) and the idle Ray processes (`baseline` in the JSON).

Workload (seeded; built before anything is timed): n synthetic d-dimensional float32 vectors
clustered like image embeddings: n/2000 topics; subjects of geometric sizes (mean 10) under a
random topic; each item = topic + 0.8 noise (its subject) + 0.7 noise (the item), in random
order; then 1% of the items replaced by near-copies of another item (+ 0.1 noise). Cosines:
same subject ~0.77, same topic ~0.47, unrelated ~0 +- 0.04, near-copy ~0.995.

    cd /work/main && .venv/bin/python -m benchmarks.bench_mining                  # ~15 min: 10k, 100k, 1M
    .venv/bin/python -m benchmarks.bench_mining --sizes 10000,100000 --no-save    # ~2 min
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.report import command_line, emit, now

RESULTS = Path(__file__).resolve().parent / "results" / "mining.json"


# -- workload --------------------------------------------------------------------------------


def synthetic_embeddings(n: int, d: int = 512, seed: int = 0, chunk: int = 100_000) -> np.ndarray:
    """n clustered float32 vectors (see the module doc), built in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    n_topics = max(1, n // 2000)
    sizes = rng.geometric(1 / 10, size=n // 4 + 16)
    n_subjects = int(np.searchsorted(np.cumsum(sizes), n)) + 1
    subject_of = np.repeat(np.arange(n_subjects), sizes[:n_subjects])[:n]
    subject_of = subject_of[rng.permutation(n)]
    topics = rng.standard_normal((n_topics, d), dtype=np.float32)
    subjects = topics[rng.integers(0, n_topics, n_subjects)]
    subjects += 0.8 * rng.standard_normal((n_subjects, d), dtype=np.float32)
    x = np.empty((n, d), dtype=np.float32)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        x[a:b] = subjects[subject_of[a:b]]
        x[a:b] += 0.7 * rng.standard_normal((b - a, d), dtype=np.float32)
    copies = rng.choice(n, size=n // 100, replace=False)
    originals = rng.choice(n, size=n // 100, replace=False)
    keep = ~np.isin(originals, copies)
    copies, originals = copies[keep], originals[keep]
    x[copies] = x[originals] + 0.1 * rng.standard_normal((len(copies), d), dtype=np.float32)
    return x


# -- memory ----------------------------------------------------------------------------------


class TreeMonitor:
    """Peak summed PSS and RSS of this process and all its descendants, sampled in a thread,
    and the CPU seconds (user + system) they used between `__enter__` and `__exit__`."""

    def __init__(self, interval: float = 0.5):
        import psutil

        self.psutil = psutil
        self.root = psutil.Process()
        self.interval = interval
        self.peak_pss = self.peak_rss = 0
        self.samples = 0
        self.max_processes = 0
        self.own_seconds = 0.0  # thread CPU spent sampling (reading smaps is not free)
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> tuple[int, int, int]:
        """(summed PSS, summed RSS, processes) now; remembers each process's CPU seconds."""
        pss = rss = 0
        procs = [self.root, *self.root.children(recursive=True)]
        for p in procs:
            try:
                info = p.memory_full_info()
                cpu = p.cpu_times()
            except (self.psutil.NoSuchProcess, self.psutil.ZombieProcess, self.psutil.AccessDenied):
                continue
            pss += info.pss
            rss += info.rss
            self._cpu_first.setdefault(p.pid, 0.0)  # a process born meanwhile started at 0
            self._cpu_last[p.pid] = cpu.user + cpu.system
        return pss, rss, len(procs)

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds of the process tree, the sampling itself left out."""
        return sum(self._cpu_last[p] - self._cpu_first[p] for p in self._cpu_last) - self.own_seconds

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.thread_time()
            pss, rss, nproc = self.sample()
            self.own_seconds += time.thread_time() - t
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self.max_processes = max(self.max_processes, nproc)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMonitor:
        self.sample()
        self._cpu_first = dict(self._cpu_last)
        self._thread = threading.Thread(target=self._run, name="tree-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        pss, rss, _ = self.sample()  # one last look
        self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)


# -- measurements ----------------------------------------------------------------------------


def time_bare_products(x: np.ndarray, block: int, max_blocks: int, seed: int) -> dict:
    """Wall and CPU seconds (this process, all BLAS threads) of `A @ C.T` over the n x n
    similarity matrix in block x block tiles: every tile when there are at most `max_blocks`,
    else `max_blocks` random full tiles, their mean times (n / block)^2."""
    n = len(x)
    starts = np.arange(0, n, block)
    tiles = len(starts) ** 2
    out = np.empty((block, block), dtype=np.float32)
    np.matmul(x[:block], x[:block].T, out=out[: min(block, n), : min(block, n)])  # warm-up, untimed
    if tiles <= max_blocks:
        t, cpu = time.perf_counter(), time.process_time()
        for a in starts:
            qa = x[a : a + block]
            for c in starts:
                cb = x[c : c + block]
                np.matmul(qa, cb.T, out=out[: len(qa), : len(cb)])
        return {
            "seconds": time.perf_counter() - t,
            "cpu_seconds": time.process_time() - cpu,
            "extrapolated": False,
            "tiles_timed": tiles,
            "tiles_total": tiles,
            "tile": block,
        }
    full = n // block  # tiles with block full rows
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, full, size=(max_blocks, 2)) * block
    times, cpus = [], []
    for a, c in pick:
        t, cpu = time.perf_counter(), time.process_time()
        np.matmul(x[a : a + block], x[c : c + block].T, out=out)
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - cpu)
    scale = (n / block) ** 2
    mean = float(np.mean(times))
    return {
        "seconds": mean * scale,
        "cpu_seconds": float(np.mean(cpus)) * scale,
        "seconds_from_fastest_tile": min(times) * scale,
        "extrapolated": True,
        "tiles_timed": max_blocks,
        "tiles_total": tiles,
        "tile": block,
        "tile_seconds_mean": mean,
        "tile_seconds_min_max": [float(min(times)), float(max(times))],
        "gflops_mean_tile": 2 * block * block * x.shape[1] / mean / 1e9,
        "gflops_fastest_tile": 2 * block * block * x.shape[1] / min(times) / 1e9,
    }


def drop_self(ids: np.ndarray, query_ids: np.ndarray, k: int) -> np.ndarray:
    """Each row's neighbours without the query itself (or without the last one if absent)."""
    drop = ids == query_ids[:, None]
    drop[~drop.any(axis=1), -1] = True
    return ids[~drop].reshape(len(ids), -1)[:, :k]


def measure_recall(x: np.ndarray, index, k: int, queries: int, seed: int) -> dict:
    """recall@k of `index` (the one the mining searched) against exact neighbours."""
    from weaverdata.refs.knn import brute_force_knn, recall_at_k, search

    rng = np.random.default_rng(seed + 1)
    q = np.sort(rng.choice(len(x), size=min(queries, len(x)), replace=False))
    _, ann = search(index, x[q], k + 1)
    t = time.perf_counter()
    _, exact = brute_force_knn(x, k + 1, x[q])
    t_exact = time.perf_counter() - t
    recall = recall_at_k(drop_self(ann, q, k), drop_self(exact, q, k), k)
    return {"recall": recall, "queries": len(q), "exact_seconds": t_exact}


def ivf_params(n: int, args) -> dict:
    from weaverdata.refs.knn import default_nlist

    nlist = default_nlist(n)
    return {
        "nlist": nlist,
        "nprobe": min(args.nprobe, nlist),
        "train_size": min(n, args.train_per_list * nlist),
        "seed": args.seed,
    }


def run_size(n: int, args) -> dict:
    from weaverdata.refs.knn import build_index
    from weaverdata.refs.mining import mine_corpus
    from weaverdata.refs.vectors import l2_normalize

    t = time.perf_counter()
    x = l2_normalize(synthetic_embeddings(n, args.dim, args.seed))
    print(f"\n== n = {n:,} x {args.dim}: built in {time.perf_counter() - t:.1f} s", flush=True)
    params = ivf_params(n, args)
    load_before = os.getloadavg()
    gc.collect()
    mem = TreeMonitor(args.mem_interval)
    base_pss, base_rss, _ = mem.sample()
    stats: dict = {}
    with mem:
        t = time.perf_counter()
        index = build_index(x, "ivf", **params)
        build_s = time.perf_counter() - t
        band, negatives = mine_corpus(
            x, args.k, args.low, args.high, index=index, parallelism=args.parallelism,
            hard_negative_min=args.hard_negative_min, stats=stats,
        )
        mining_s = time.perf_counter() - t
    print(
        f"mining {mining_s:.1f} s (index build {build_s:.1f}, normalise + plan {stats['build_s']:.1f}, "
        f"serialise + put {stats['put_s']:.1f}, search {stats['search_s']:.1f} in {stats['blocks']} "
        f"blocks, merge + band {stats['merge_s']:.1f}); {len(band):,} pairs in band, "
        f"{len(negatives):,} hard negatives; {mem.cpu_seconds:.0f} CPU s; peak PSS {mem.peak_pss / 2**30:.2f} GiB "
        f"(RSS {mem.peak_rss / 2**30:.2f}, before {base_pss / 2**30:.2f})", flush=True,
    )
    pairs = {"in_band": int(len(band)), "hard_negatives": int(len(negatives)), "block_pairs": stats["block_pairs"]}
    assert (band["i"] < band["j"]).all() and (band["score"] >= args.low).all() and (band["score"] <= args.high).all()
    del band, negatives
    gc.collect()

    recall = measure_recall(x, index, args.k, args.recall_queries, args.seed)
    del index
    print(f"recall@{args.k} {recall['recall']:.4f} on {recall['queries']} queries "
          f"(exact top-k in {recall['exact_seconds']:.1f} s)", flush=True)
    bf = time_bare_products(x, args.bf_block, args.bf_blocks, args.seed)
    how = (f"extrapolated from {bf['tiles_timed']} of {bf['tiles_total']:,} tiles of {bf['tile']}x{bf['tile']}"
           if bf["extrapolated"] else f"measured, all {bf['tiles_total']} tiles")
    print(
        f"bare brute-force products {bf['seconds']:.1f} s, {bf['cpu_seconds']:.0f} CPU s ({how}); "
        f"ratio {bf['seconds'] / mining_s:.1f}, CPU ratio {bf['cpu_seconds'] / mem.cpu_seconds:.1f}", flush=True,
    )
    del x
    gc.collect()
    return {
        "n": n,
        "dim": args.dim,
        "ivf": params,
        "mining_seconds": mining_s,
        "mining_seconds_per_1k": mining_s / (n / 1000),
        "index_build_seconds": build_s,
        "mining_stats": stats,
        "pairs": pairs,
        "brute_force_products": bf,
        "mining_cpu_seconds": mem.cpu_seconds,
        "ratio": bf["seconds"] / mining_s,
        "cpu_ratio": bf["cpu_seconds"] / mem.cpu_seconds,
        "recall": recall,
        "memory": {
            "method": "sum over the driver and its descendant processes, sampled every "
            f"{args.mem_interval} s during the timed mining; PSS from smaps_rollup (shared "
            "pages counted once), RSS summed (shared pages counted per process)",
            "peak_pss_bytes": mem.peak_pss,
            "peak_rss_bytes": mem.peak_rss,
            "baseline_pss_bytes": base_pss,
            "baseline_rss_bytes": base_rss,
            "embeddings_bytes": n * args.dim * 4,
            "held_for_recall_bytes": n * (args.dim * 4 + 8),
            "samples": mem.samples,
            "sampling_cpu_seconds": mem.own_seconds,
            "max_processes": mem.max_processes,
        },
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
    }


def summary_rows(result: dict) -> list[dict]:
    """The summary block of a results file of this benchmark: per corpus size, one run, the time
    ratio bare brute-force products seconds / mining seconds (how many times faster mining is;
    informative: no target). Extrapolated brute-force times say so in the row's name."""
    from benchmarks.summary import summary_row

    rows = []
    for r in result["results"]:
        bf = r["brute_force_products"]
        how = (
            f"products extrapolated from {bf['tiles_timed']} of {bf['tiles_total']:,} tiles"
            if bf["extrapolated"]
            else f"products measured, all {bf['tiles_total']} tiles"
        )
        rows.append(
            summary_row(
                "mining", f"mine_corpus vs bare n x n products, n = {r['n']:,} x {r['dim']} ({how})",
                "time ratio, brute force / mining", [bf["seconds"]], [r["mining_seconds"]], None,
                date=result["date"], command=result["command"],
            )
        )
    return rows


# -- main ------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="corpus sizes, comma-separated")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10, help="neighbours per item (default 10)")
    ap.add_argument("--low", type=float, default=0.6, help="band low (default 0.6)")
    ap.add_argument("--high", type=float, default=0.95, help="band high (default 0.95)")
    ap.add_argument("--hard-negative-min", type=float, default=0.3)
    ap.add_argument("--nprobe", type=int, default=16, help="IVF lists searched (default 16); nlist is default_nlist(n)")
    ap.add_argument("--train-per-list", type=int, default=40, help="IVF training rows per list (default 40)")
    ap.add_argument("--parallelism", type=int, default=os.cpu_count() or 1, help="search tasks at once (default: cores)")
    ap.add_argument("--recall-queries", type=int, default=1000)
    ap.add_argument("--bf-block", type=int, default=4096, help="tile side of the brute-force products")
    ap.add_argument("--bf-blocks", type=int, default=32, help="tiles timed before extrapolating (default 32)")
    ap.add_argument("--mem-interval", type=float, default=0.5, help="memory sampling period, s (default 0.5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS.name}")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import faiss
    import ray

    from weaverdata.config import RuntimeConfig
    from weaverdata.refs.mining import mine_corpus
    from weaverdata.runtime import connect

    uptime_before = _uptime()
    print(f"uptime before: {uptime_before}")
    t_start = time.perf_counter()
    info = connect(RuntimeConfig(progress=False))
    # warm-up (untimed): worker processes start and import faiss
    mine_corpus(synthetic_embeddings(4000, args.dim, args.seed + 7), args.k, args.low, args.high,
                kind="ivf", parallelism=args.parallelism, nlist=64, nprobe=8)
    results = [run_size(n, args) for n in sizes]
    ray.shutdown()
    uptime_after = _uptime()
    total = time.perf_counter() - t_start

    print(
        f"\n{'n':>10} {'mining s':>9} {'s/1k':>7} {'brute-force s':>14} {'ratio':>7} {'CPU ratio':>9} "
        f"{'recall@k':>9} {'peak PSS GiB':>13}"
    )
    for r in results:
        bf = r["brute_force_products"]
        tag = "extrap." if bf["extrapolated"] else "measured"
        print(
            f"{r['n']:>10,} {r['mining_seconds']:>9.1f} {r['mining_seconds_per_1k']:>7.3f} "
            f"{bf['seconds']:>9.0f} {tag:>4} {r['ratio']:>7.1f} {r['cpu_ratio']:>9.1f} {r['recall']['recall']:>9.4f} "
            f"{r['memory']['peak_pss_bytes'] / 2**30:>13.2f}"
        )
    print(f"total {total / 60:.1f} min; uptime after: {uptime_after}")

    out = {
        "benchmark": "corpus-scale pair mining (mine_corpus, IVF, Ray tasks) vs the bare n x n matrix products of brute force",
        "command": command_line("bench_mining", argv),
        "date": now(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu": _cpu_model(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "faiss": faiss.__version__,
            "ray": ray.__version__,
            "ray_cluster_cpus": info["cpus"],
            "uptime_before": uptime_before,
            "uptime_after": uptime_after,
        },
        "settings": {
            "k": args.k, "low": args.low, "high": args.high, "hard_negative_min": args.hard_negative_min,
            "parallelism": args.parallelism, "task_cpus": 1, "nprobe": args.nprobe,
            "train_per_list": args.train_per_list, "recall_queries": args.recall_queries,
            "bf_tile": args.bf_block, "bf_tiles_timed": args.bf_blocks, "seed": args.seed,
        },
        "total_seconds": total,
        "results": results,
    }
    out["summary"] = summary_rows(out)
    emit(out["summary"])
    if not args.no_save:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.results}")
    return 0


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


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
