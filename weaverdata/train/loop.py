"""The training loop every trainer shares: data feeding, gradient sync, checkpoints, metrics.

A trainer (`PlannerTask`, `VisualizerTask`) says how to build its model, turn samples into a
batch, and compute a summed loss and its weight; this loop owns the rest:

- **Ranks** come from Ray Train (`TorchTrainer`, gloo on CPU, NCCL on GPU) or, with
  `train.executor=local`, from one process with no Ray. Gradients are summed across ranks and
  divided by the summed weight (tokens, samples), so a step's update is that of one big batch
  whatever the number of ranks, and a rank whose share of the epoch is used up contributes
  nothing instead of stalling the collective.
- **Data position**: every rank streams its own block of the epoch (`data.SampleStream`); when
  all ranks are through, all move to the next epoch together.
- **Checkpoints** (`OUTPUT/checkpoints/step-N/`): the model (as the trainer saves it, e.g.
  `save_pretrained`), optimizer, scheduler, step, curriculum stage and every rank's data
  position; `state.json` is written last and is the commit marker. A rerun (or a Ray Train
  restart) resumes from the newest committed checkpoint; noise and dropout draw from generators
  seeded by (seed, step, rank), so a resumed run repeats an uninterrupted one exactly.
- **Metrics**: `OUTPUT/metrics.jsonl` has one row per logged step (rows after the checkpoint a
  run resumed from are dropped, so the file always tells one history); `summary.json` and
  `summary.md` close the run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import queue
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from weaverdata.io.storage import Location
from weaverdata.train.config import TrainConfig
from weaverdata.train.contracts import Ranks, Task, TrainError  # noqa: F401  (re-exported for callers of the loop)
from weaverdata.train.data import DataError, DataPosition, SampleIndex, SampleStream, ShardReader, build_index, list_shards, split_eval

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
METRICS_FILE = "metrics.jsonl"
MANIFEST_FILE = "train.json"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"


# -- checkpoints -------------------------------------------------------------------------------


def step_dir(step: int) -> str:
    return posixpath.join(CHECKPOINTS, f"step-{step:08d}")


def committed_checkpoints(out: Location) -> list[int]:
    pattern = out.path(CHECKPOINTS, "step-*", STATE_FILE)
    steps = []
    for p in out.fs.glob(pattern):
        name = posixpath.basename(posixpath.dirname(p))
        if ".tmp-" not in name:
            steps.append(int(name.removeprefix("step-")))
    return sorted(steps)


def write_checkpoint(out: Location, step: int, write_files, state: dict[str, Any], keep: int) -> str:
    """Write a checkpoint folder (files from `write_files(local_dir)`, then state.json last)."""
    rel = step_dir(step)
    staging = tempfile.mkdtemp(prefix="weaverdata-ckpt-")
    try:
        write_files(staging)
        with open(os.path.join(staging, STATE_FILE), "w") as f:
            json.dump(state, f, indent=1)
        if out.is_local:
            tmp = f"{rel}.tmp-{uuid.uuid4().hex[:8]}"
            out.makedirs(CHECKPOINTS)
            shutil.copytree(staging, out.path(tmp))
            if out.exists(rel):  # a checkpoint without a marker, left by a killed run
                shutil.rmtree(out.path(rel))
            os.replace(out.path(tmp), out.path(rel))
        else:  # object stores: every file first, the marker last
            if out.exists(rel):
                out.fs.rm(out.path(rel), recursive=True)
            for root, _, files in os.walk(staging):
                for name in files:
                    if root == staging and name == STATE_FILE:
                        continue
                    local = os.path.join(root, name)
                    out.fs.put_file(local, out.path(rel, os.path.relpath(local, staging)))
            out.fs.put_file(os.path.join(staging, STATE_FILE), out.path(rel, STATE_FILE))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in committed_checkpoints(out)[:-keep]:
        out.fs.rm(out.path(step_dir(old)), recursive=True)
    return out.path(rel)


def fetch_checkpoint(out: Location, step: int) -> str:
    """A local folder holding checkpoint `step` (the folder itself on local disk)."""
    rel = step_dir(step)
    if out.is_local:
        return out.path(rel)
    local = tempfile.mkdtemp(prefix="weaverdata-ckpt-")
    out.fs.get(out.path(rel) + "/", local + "/", recursive=True)
    return local


# -- metrics ---------------------------------------------------------------------------------


class JsonLines:
    """A JSON Lines file cut back to `step <= upto` on resume, then appended (rewritten whole on object stores)."""

    def __init__(self, out: Location, rel: str, upto: int):
        self.out, self.rel = out, rel
        self.rows: list[dict[str, Any]] = []
        if out.exists(rel):
            with out.open(rel, "rb") as f:
                self.rows = [r for r in (json.loads(line) for line in f.read().decode().splitlines() if line.strip()) if r["step"] <= upto]
        self._rewrite()

    def _rewrite(self) -> None:
        self.out.write_bytes_atomic(self.rel, "".join(json.dumps(r) + "\n" for r in self.rows).encode())

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.out.is_local:
            with self.out.open(self.rel, "ab") as f:
                f.write((json.dumps(row) + "\n").encode())
        else:
            self._rewrite()


# -- the loop ----------------------------------------------------------------------------------


@dataclass
class LoopState:
    step: int = 0
    stage: int = 0
    position: DataPosition = field(default_factory=DataPosition)
    samples: int = 0
    started: float = field(default_factory=time.monotonic)


def make_scheduler(optimizer, cfg: TrainConfig):
    import torch

    warm, total, kind = cfg.optim.warmup_steps, cfg.optim.steps, cfg.optim.schedule

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "cosine":
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _sync_grads(params, weight, ranks: Ranks) -> None:
    """Sum gradients over ranks and divide by the summed loss weight (one big batch's mean)."""
    import torch

    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1) for g in grads])
    ranks.all_sum(flat)
    scale = 1.0 / max(float(weight), 1e-12)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g)).mul_(scale)
        offset += n


def worker_main(task: Task, cfg: TrainConfig, ranks: Ranks) -> dict[str, Any]:
    """Run (or resume) training on this rank; rank 0 writes checkpoints, metrics and the summary."""
    import torch

    out = Location.of(cfg.output)
    torch.manual_seed(cfg.optim.seed)
    shards = list_shards(cfg.data.path, cfg.data.groups, task.schema)
    index = build_index(cfg.data.path, shards, task.kind_column)
    train_index, eval_index = split_eval(index, cfg.data.eval_fraction, cfg.data.eval_max_samples)
    task.setup(cfg, out, ranks)
    model = task.trainable()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = make_scheduler(optimizer, cfg)
    stages = task.stages(train_index, cfg.optim.steps)
    reader = ShardReader(cfg.data.path, cfg.data.format, task.columns, cfg.data.shard_cache)

    state = LoopState()
    done = committed_checkpoints(out)  # a rerun, or a Ray Train restart (train.max_failures), resumes here: the output folder is the one record of checkpoints (nothing goes through ray.train.report/get_checkpoint)
    if done:
        folder = fetch_checkpoint(out, done[-1])
        with open(os.path.join(folder, STATE_FILE)) as f:
            saved = json.load(f)
        if saved["world"] != ranks.world:
            raise TrainError(f"checkpoint step {saved['step']} was written by {saved['world']} workers; resume with train.workers={saved['world']} (data positions are per rank)")
        task.load_model(folder)
        optimizer.load_state_dict(torch.load(os.path.join(folder, "optimizer.pt"), map_location=ranks.device, weights_only=True))
        scheduler.load_state_dict(torch.load(os.path.join(folder, "scheduler.pt"), weights_only=True))
        pos = saved["positions"][ranks.rank]
        state = LoopState(step=saved["step"], stage=saved["stage"], position=DataPosition(pos["epoch"], pos["consumed"]), samples=saved["samples"])
        if ranks.rank == 0:
            print(f"[train] resumed from {out.path(step_dir(saved['step']))} (step {saved['step']})", file=sys.stderr, flush=True)
    else:
        ranks.broadcast_params(model)

    metrics = JsonLines(out, METRICS_FILE, state.step) if ranks.rank == 0 else None
    ids_log = JsonLines(out, posixpath.join("sample_ids", f"rank-{ranks.rank}.jsonl"), state.step) if cfg.train.log_sample_ids else None
    if ranks.rank == 0:  # rank 0 also draws the checkpoint samples from the whole held-out split
        all_eval = [reader.get(eval_index, i) for i in range(len(eval_index))]
        eval_samples = all_eval[:: ranks.world]
    else:
        all_eval, eval_samples = [], [reader.get(eval_index, i) for i in range(ranks.rank, len(eval_index), ranks.world)]
    probe = _probe_batch(task, train_index, reader, cfg) if (cfg.train.probe_every and ranks.rank == 0) else None

    def stream_for(stage: int, position: DataPosition) -> SampleStream:
        return SampleStream(stages[stage][1], reader, ranks.rank, ranks.world, cfg.optim.seed + 1000 * stage, cfg.data.shuffle_window, position)

    feed = Prefetcher(task, stream_for(state.stage, state.position))
    if metrics is not None and state.step == 0 and probe is not None:
        metrics.add({"step": 0, "probe_loss": _probe_loss(task, probe, ranks), "samples": 0, "seconds": 0.0})
    model.train()
    last_eval: dict[str, float] = {}
    t_step = time.monotonic()
    end = cfg.optim.steps if cfg.train.stop_after_steps is None else min(cfg.optim.steps, state.step + cfg.train.stop_after_steps)
    while state.step < end:
        step = state.step + 1
        while step > stages[state.stage][2]:
            state.stage += 1
            feed.close()
            feed = Prefetcher(task, stream_for(state.stage, DataPosition()))
        batch, position = _lockstep_batch(feed, ranks)
        if batch is None:  # this rank's share of the epoch is used up; the others finish theirs
            loss_sum, weight, counts = torch.zeros(()), 0.0, dict.fromkeys(task.count_keys, 0.0)
        else:
            loss_sum, weight, counts = task.loss(batch, step, ranks)
            loss_sum.backward()
        totals = torch.tensor([float(loss_sum.detach()), float(weight), *counts.values()], dtype=torch.float64)
        ranks.all_sum(totals)
        _sync_grads(params, totals[1].item(), ranks)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip).item() if cfg.optim.grad_clip else float("nan")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ids = task.batch_ids(batch) if batch is not None else []
        n_samples = torch.tensor([float(len(ids))])
        ranks.all_sum(n_samples)
        state.samples += int(n_samples.item())
        state.step = step
        state.position = position
        if ids_log is not None:
            ids_log.add({"step": step, "stage": stages[state.stage][0], "epoch": position.epoch, "ids": ids})
        evaluated = bool(cfg.train.eval_every and step % cfg.train.eval_every == 0) or step == cfg.optim.steps
        if evaluated:
            last_eval = _evaluate(task, eval_samples, ranks)
        if metrics is not None and (step % cfg.train.log_every == 0 or step == cfg.optim.steps):
            now = time.monotonic()
            row = {
                "step": step,
                "stage": stages[state.stage][0],
                "epoch": position.epoch,
                "loss": totals[0].item() / max(totals[1].item(), 1e-12),
                "weight": totals[1].item(),
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
                "samples": int(n_samples.item()),
                "seconds": round(now - t_step, 4),
                **{k: v for k, v in zip(counts.keys(), totals[2:].tolist())},
            }
            if probe is not None and (step % cfg.train.probe_every == 0 or step == cfg.optim.steps):
                row["probe_loss"] = _probe_loss(task, probe, ranks)
            if evaluated and last_eval:
                row.update({f"eval_{k}": v for k, v in last_eval.items()})
            metrics.add(row)
            print(f"[train] step {step}/{cfg.optim.steps} loss {row['loss']:.4f}" + (f" probe {row['probe_loss']:.4f}" if "probe_loss" in row else "") + (f" eval {last_eval}" if "eval_loss" in row else ""), file=sys.stderr, flush=True)
        t_step = time.monotonic()
        if step % cfg.train.checkpoint_every == 0 or step == end:
            _checkpoint(task, cfg, out, state, optimizer, scheduler, ranks, all_eval)

    feed.close()
    counters: dict[str, float] = {}
    for part in ranks.gather(task.counters()):  # keys differ by rank (skip reasons): gather, then add
        for k, v in part.items():
            counters[k] = counters.get(k, 0) + v
    summary = None
    if ranks.rank == 0:
        summary = _summary(cfg, task, out, index, train_index, eval_index, metrics.rows, counters, last_eval, state, ranks)
    ranks.barrier()
    return summary or {}


class Prefetcher:
    """Builds this rank's next batches in a background thread while the model steps.

    It makes exactly the calls a serial loop would (next_batch, and next_epoch only when the main
    thread says every rank is through), so batches and data positions are the same with or
    without it; each batch comes with the stream position after it, which is what a checkpoint
    saves. Decoding (PIL) and tokenizing (Rust) release the GIL, so the work really overlaps.
    """

    _STOP = object()

    def __init__(self, task: Task, stream: SampleStream, depth: int = 2):
        self.task, self.stream = task, stream
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.orders: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="weaverdata-prefetch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                batch = self.task.next_batch(self.stream)
                self.queue.put((batch, DataPosition(self.stream.position.epoch, self.stream.position.consumed), None))
                if batch is None:  # wait for the ranks' verdict: next epoch, or ask again
                    order = self.orders.get()
                    if order is self._STOP:
                        return
                    if order == "next_epoch":
                        self.stream.next_epoch()
        except BaseException as exc:  # handed to the training thread, which raises it
            self.queue.put((None, None, exc))

    def get(self) -> tuple[Any, DataPosition]:
        batch, position, error = self.queue.get()
        if error is not None:
            raise error
        return batch, position

    def answer(self, order: str) -> None:
        self.orders.put(order)

    def close(self) -> None:
        self.orders.put(self._STOP)
        while self.thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                self.queue.get_nowait()
            except queue.Empty:
                pass
            self.thread.join(timeout=0.05)


def _lockstep_batch(feed: Prefetcher, ranks: Ranks):
    """This rank's next batch and the position after it (None if its share of the epoch is used up
    while others still have some); when every rank is through, all move on to the next epoch."""
    import torch

    for _ in range(2):
        batch, position = feed.get()
        have = torch.tensor([0.0 if batch is None else 1.0])
        ranks.all_sum(have)
        if have.item() > 0:
            if batch is None:
                feed.answer("again")
            return batch, position
        feed.answer("next_epoch")
    raise DataError("a whole epoch yielded no batch: every sample of the stage was skipped (see the counters)")


def _evaluate(task: Task, samples: list, ranks: Ranks) -> dict[str, float]:
    import torch

    sums = task.evaluate(samples, ranks)
    keys = sorted(sums)
    t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64)
    ranks.all_sum(t)
    return task.finish_eval(dict(zip(keys, t.tolist())))


def _probe_batch(task: Task, index: SampleIndex, reader: ShardReader, cfg: TrainConfig):
    """A fixed batch (the first samples of the training index), for a loss curve without data noise."""
    return task.next_batch(SampleStream.in_index_order(index, reader))


def _probe_loss(task: Task, batch, ranks: Ranks) -> float:
    import torch

    model = task.trainable()
    model.eval()
    with torch.no_grad():
        loss_sum, weight, _ = task.loss(batch, 0, Ranks(0, 1, ranks.device))
    model.train()
    return float(loss_sum) / max(float(weight), 1e-12)


def _checkpoint(task: Task, cfg: TrainConfig, out: Location, state: LoopState, optimizer, scheduler, ranks: Ranks, eval_samples: list) -> None:
    import torch

    positions = ranks.gather(state.position.as_dict())
    if ranks.rank == 0:
        def files(folder: str) -> None:
            task.save_model(os.path.join(folder, "model"))
            torch.save(optimizer.state_dict(), os.path.join(folder, "optimizer.pt"))
            torch.save(scheduler.state_dict(), os.path.join(folder, "scheduler.pt"))
            task.on_checkpoint(folder, state.step, eval_samples)

        saved = {"step": state.step, "stage": state.stage, "world": ranks.world, "positions": positions, "samples": state.samples, "config_sha256": cfg.identity_sha256(), "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        where = write_checkpoint(out, state.step, files, saved, cfg.train.keep_checkpoints)
        print(f"[train] checkpoint {where}", file=sys.stderr, flush=True)
    ranks.barrier()


def _summary(cfg, task, out, index, train_index, eval_index, rows, counters, last_eval, state, ranks) -> dict[str, Any]:
    losses = [r["loss"] for r in rows if "loss" in r]
    probes = [r["probe_loss"] for r in rows if "probe_loss" in r]
    seconds = sum(r["seconds"] for r in rows)
    summary = {
        "trainer": task.name,
        "status": "complete" if state.step >= cfg.optim.steps else "stopped",
        "output": cfg.output,
        "data": {"path": cfg.data.path, "format": cfg.data.format, "shards": len(index.shards), "samples": len(index), "train_samples": len(train_index), "eval_samples": len(eval_index)},
        "workers": ranks.world,
        "steps": state.step,
        "epochs_started": state.position.epoch + 1,
        "samples_seen": sum(r["samples"] for r in rows),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "first_probe_loss": probes[0] if probes else None,
        "final_probe_loss": probes[-1] if probes else None,
        "eval": last_eval,
        "counters": counters,
        "train_seconds_logged": round(seconds, 2),
        "checkpoints": [out.path(step_dir(s)) for s in committed_checkpoints(out)],
        "config": cfg.model_dump(mode="json"),
    }
    out.write_bytes_atomic(SUMMARY_JSON, json.dumps(summary, indent=1).encode())
    out.write_bytes_atomic(SUMMARY_MD, render_summary(summary).encode())
    return summary


def render_summary(s: dict[str, Any]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [
        f"# weaverdata train {s['trainer']}: {s['status']}",
        "",
        f"- data: {s['data']['path']} ({s['data']['format']}; {s['data']['shards']} shards, {s['data']['train_samples']} train / {s['data']['eval_samples']} held-out samples)",
        f"- workers: {s['workers']}; steps: {s['steps']}; samples seen: {s['samples_seen']} (epochs started: {s['epochs_started']})",
        f"- loss: first {fmt(s['first_loss'])}, final {fmt(s['final_loss'])}" + (f"; fixed-batch loss: first {fmt(s['first_probe_loss'])}, final {fmt(s['final_probe_loss'])}" if s["first_probe_loss"] is not None else ""),
        "- held-out: " + (", ".join(f"{k} {fmt(v)}" for k, v in s["eval"].items()) or "none"),
        "- counters: " + (", ".join(f"{k} {int(v)}" for k, v in s["counters"].items()) or "none"),
        f"- checkpoints: {', '.join(s['checkpoints'])}",
        "",
    ]
    return "\n".join(lines)


# -- executors -------------------------------------------------------------------------------


def prepare_output(cfg: TrainConfig, trainer: str) -> Location:
    """Create or check OUTPUT/train.json: a folder is resumed only with the same identity."""
    if not cfg.output:
        raise TrainError("no output folder: pass --output CKPT_DIR")
    if not cfg.data.path:
        raise TrainError("no training data: pass --data OUT (an output folder of build-proxy, mix or build-refs)")
    out = Location.of(cfg.output)
    out.check_writable()
    manifest = {"trainer": trainer, "config_sha256": cfg.identity_sha256(), "identity": cfg.identity(), "data": cfg.data.path}
    if out.exists(MANIFEST_FILE):
        with out.open(MANIFEST_FILE, "rb") as f:
            old = json.loads(f.read())
        if old.get("trainer") != trainer or old.get("config_sha256") != manifest["config_sha256"]:
            if not cfg.overwrite:
                raise TrainError(f"{cfg.output} holds a {old.get('trainer')} run with a different config; resume it with that config, or pass --overwrite to start over")
            for rel in (CHECKPOINTS, "sample_ids", METRICS_FILE, SUMMARY_JSON, SUMMARY_MD):
                if out.exists(rel):
                    out.fs.rm(out.path(rel), recursive=True)
    elif cfg.overwrite is False and committed_checkpoints(out):
        raise TrainError(f"{cfg.output} holds checkpoints of an unknown run; pass --overwrite")
    out.write_bytes_atomic(MANIFEST_FILE, json.dumps(manifest, indent=1).encode())
    return out


def _ray_train_loop(config: dict[str, Any]) -> None:
    import ray.train
    import torch

    os.environ["WEAVERDATA_CACHE"] = config["cache"]  # where tiny models are built (per node)
    if os.path.isdir(config["cwd"]) and config["cwd"] not in sys.path:
        sys.path.insert(0, config["cwd"])  # module:Class models next to where the command ran (ship them with runtime_env working_dir on a cluster)
    ctx = ray.train.get_context()
    task, cfg = make_task(config["trainer"], config["config"])
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    device = ray.train.torch.get_device() if cfg.train.gpus_per_worker > 0 else torch.device("cpu")
    worker_main(task, cfg, Ranks(ctx.get_world_rank(), ctx.get_world_size(), device))


def make_task(trainer: str, config: dict[str, Any]):
    if trainer == "planner":
        from weaverdata.train.config import PlannerTrainConfig
        from weaverdata.train.planner import PlannerTask

        cfg = PlannerTrainConfig.model_validate(config)
        return PlannerTask(), cfg
    if trainer == "visualizer":
        from weaverdata.train.config import VisualizerTrainConfig
        from weaverdata.train.visualizer import VisualizerTask

        cfg = VisualizerTrainConfig.model_validate(config)
        return VisualizerTask(), cfg
    raise TrainError(f"unknown trainer {trainer!r}")


def run_training(trainer: str, cfg: TrainConfig) -> dict[str, Any]:
    """Check the data and output, then train on Ray Train (or in this process), return the summary."""
    out = prepare_output(cfg, trainer)
    task, _ = make_task(trainer, cfg.model_dump(mode="json"))
    shards = list_shards(cfg.data.path, cfg.data.groups, task.schema)  # fail here, not in a worker
    if cfg.train.executor == "local":
        if cfg.train.workers != 1:
            raise TrainError("train.executor=local runs one worker; use the ray executor for more")
        import torch

        torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
        return worker_main(task, cfg, Ranks())
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from weaverdata.runtime import check_fits, connect
    from weaverdata.train.models import cache_dir

    connect(cfg.runtime, worker_output=True)  # the workers print the training progress
    use_gpu = cfg.train.gpus_per_worker > 0
    resources = {"CPU": cfg.train.cpus_per_worker, **({"GPU": cfg.train.gpus_per_worker} if use_gpu else {})}
    check_fits("train worker", cfg.train.cpus_per_worker * cfg.train.workers, cfg.train.gpus_per_worker * cfg.train.workers)
    storage = cfg.output.rstrip("/") + "/ray"
    if "://" not in storage:
        storage = os.path.abspath(storage)
    trainer_obj = TorchTrainer(
        _ray_train_loop,
        train_loop_config={"trainer": trainer, "config": cfg.model_dump(mode="json"), "cache": str(cache_dir()), "cwd": os.getcwd()},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.train.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(storage_path=storage, name=f"{trainer}-{uuid.uuid4().hex[:8]}", failure_config=FailureConfig(max_failures=cfg.train.max_failures)),
    )
    log.info("training %s on %d shards with %d workers", trainer, len(shards), cfg.train.workers)
    try:
        trainer_obj.fit()
    except Exception as exc:  # Ray Train wraps a worker's error; show its cause, not Ray's frames
        cause = exc.__cause__ or exc
        raise TrainError(f"training failed: {type(cause).__name__}: {cause}") from exc
    with out.open(SUMMARY_JSON, "rb") as f:
        return json.loads(f.read())
