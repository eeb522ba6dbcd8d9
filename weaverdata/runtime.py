"""The Ray runtime: start or join a cluster, then run work units as tasks with progress.

Ray only lives here and in the recipes' thin adapters. A local Ray gets max(4, cores) logical
CPUs and every task asks for a fraction of one (config `runtime.task_cpus`), so on a 2-core
machine nothing asks for resources that can never be granted; a request larger than the whole
cluster is refused before submission instead of waiting forever.
"""

from __future__ import annotations

import logging
import os
import posixpath
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from weaverdata.config import RuntimeConfig

log = logging.getLogger(__name__)


class RuntimeError_(RuntimeError):
    """The cluster cannot run the job (unreachable, or too small for what a stage asks)."""


def node_cores() -> int:
    """Cores this process may run on (its CPU affinity, which follows cgroup cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def connect(cfg: RuntimeConfig, *, worker_output: bool = False) -> dict[str, Any]:
    """Join `cfg.ray_address` (or RAY_ADDRESS), or start a local Ray fitted to this machine.

    The workers' own output (engines, tasks) reaches this console only with ``cfg.verbose`` or
    ``worker_output`` (the trainers: their workers print the training progress); otherwise it
    stays in the workers' log files, which a job copies into OUTPUT/logs/."""
    import ray

    if not ray.is_initialized():
        address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
        common = dict(
            logging_level=logging.WARNING,
            log_to_driver=cfg.verbose or worker_output,
            configure_logging=True,
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}},
        )
        try:
            if address:
                probe_address(address)
                ray.init(address=address, **common)
            else:
                if not cfg.verbose:  # a local Ray says at every start that it made itself a token (it is on by default): not news
                    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
                cpus = cfg.num_cpus or max(4, os.cpu_count() or 1)
                _start_local(lambda: ray.init(address="local", num_cpus=cpus, object_store_memory=cfg.object_store_memory, include_dashboard=False, _node_ip_address="127.0.0.1", **common))
        except (ConnectionError, TimeoutError, ValueError) as exc:
            raise RuntimeError_(f"cannot start or join Ray (address={address or 'local'}): {exc}") from exc
    fit_blocks_to_object_store()
    quiet_ray_data(cfg.verbose)
    resources = ray.cluster_resources()
    return {
        "address": ray.get_runtime_context().gcs_address,
        "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
        "cpus": resources.get("CPU", 0.0),
        "gpus": resources.get("GPU", 0.0),
    }


def quiet_ray_data(verbose: bool) -> None:
    """Ray Data logs every dataset's plan and progress at INFO on the console (hundreds of lines
    a run); keep them in its log file (ray-data.log, copied into OUTPUT/logs/) and show its
    warnings only, unless verbose."""
    import ray.data  # noqa: F401  (configures the 'ray.data' logger on import)

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and type(handler).__name__ != "SessionFileHandler":
            handler.setLevel(logging.INFO if verbose else logging.WARNING)


LOG_SUFFIXES = (".out", ".err", ".log")


def save_logs(loc: Any, folder: str = "logs", max_file_bytes: int = 64 * 2**20) -> int:
    """Copy the Ray session's log files on this machine (worker and engine output, Ray Data's
    log, the raylet's) into ``folder`` of an output location. A cluster's other nodes keep theirs
    (``ray logs`` reads them). Returns the number of files copied."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    if node is None:
        return 0
    src = node.get_logs_dir_path()
    copied = 0
    for sub in ("", "ray-data"):  # the workers' and Ray's own logs, then Ray Data's
        try:
            names = sorted(os.listdir(os.path.join(src, sub)))
        except OSError:
            continue
        loc.makedirs(posixpath.join(folder, sub) if sub else folder)
        for name in names:
            path = os.path.join(src, sub, name)
            try:
                if not name.endswith(LOG_SUFFIXES) or not os.path.isfile(path) or not 0 < os.path.getsize(path) <= max_file_bytes:
                    continue
                loc.fs.put_file(path, loc.path(folder, sub, name) if sub else loc.path(folder, name))
                copied += 1
            except OSError as exc:
                log.debug("log %s not copied: %s", name, exc)
    return copied


def _start_local(start: Callable[[], Any], attempts: int = 3) -> None:
    """Start a local Ray, again if its raylet did not register within Ray's fixed 30 s (a laptop
    or CI machine busy with other work): Ray raises a bare Exception for that one case."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            start()
            return
        except Exception as exc:  # noqa: BLE001 - only Ray's startup timeout is retried; anything else is raised as it is
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            log.warning("the local Ray node timed out during startup (attempt %d of %d); starting it again", attempt, attempts)
            ray.shutdown()


def fit_blocks_to_object_store(share: int = 16) -> int:
    """Cap Ray Data's block size at 1/`share` of the smallest node's object store (it is 128 MiB
    by default, and 30 % of RAM makes stores of many GiB on real nodes, so this changes nothing
    there). On a small store, blocks of a whole file of images would each fill it, and Ray Data's
    backpressure could only spill them to disk instead of streaming. Returns the cap in bytes."""
    import ray
    from ray.data import DataContext

    stores = [n["Resources"].get("object_store_memory", 0) for n in ray.nodes() if n.get("Alive")]
    ctx = DataContext.get_current()
    smallest = min((s for s in stores if s > 0), default=0)
    if smallest:
        ctx.target_max_block_size = int(min(ctx.target_max_block_size or 128 * 2**20, max(2**20, smallest // share)))
    return int(ctx.target_max_block_size or 0)


def peak_rss_bytes() -> int:
    """This process's peak resident memory. Linux: VmHWM of /proc/self/status, which starts
    afresh at exec; getrusage's ru_maxrss does not, so a CLI started from a big process (a test
    runner, a notebook) would report its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux and BSD: KiB


def memory_report() -> dict[str, int | None]:
    """Peak memory of this driver process, and the Ray object store's size and spilling so far
    (what a run over more bytes than the object store holds leaves behind: it streams, and
    anything that did not fit went to disk)."""
    report: dict[str, int | None] = {
        "driver_peak_rss_bytes": peak_rss_bytes(),
        "object_store_bytes": None,
        "spilled_bytes": None,
    }
    try:
        import ray

        if not ray.is_initialized():
            return report
        report["object_store_bytes"] = int(ray.cluster_resources().get("object_store_memory", 0)) or None
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
        report["spilled_bytes"] = int(reply.store_stats.spilled_bytes_total)
    except (ImportError, AttributeError, ConnectionError, RuntimeError) as exc:  # an internal Ray API: report what we have
        log.debug("object store stats unavailable: %s", exc)
    return report


def probe_address(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds when a Ray address does not answer (ray.init would retry for minutes)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RuntimeError_(f"Ray address {address!r} is not HOST:PORT (or ray://HOST:PORT, auto)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise RuntimeError_(f"no Ray cluster answers at {address} ({exc}); is `ray start --head` running there?") from exc


def check_fits(name: str, cpus: float, gpus: float = 0.0) -> None:
    """Refuse a stage that asks for more than the whole cluster has (it would wait forever)."""
    import ray

    have = ray.cluster_resources()
    if cpus > have.get("CPU", 0.0) or gpus > have.get("GPU", 0.0):
        raise RuntimeError_(
            f"stage {name!r} asks for {cpus} CPU / {gpus} GPU per task but the cluster has "
            f"{have.get('CPU', 0)} CPU / {have.get('GPU', 0)} GPU in all; lower its resources in the config"
        )


@dataclass
class UnitOutcome:
    unit: str
    stats: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class Progress:
    """Rich progress bar over units and samples, printed to stderr; silent when disabled."""

    total_units: int
    enabled: bool = True
    label: str = "units"
    _bar: Any = None
    _task: Any = None
    samples: int = 0
    rejected: int = 0
    started: float = field(default_factory=time.monotonic)

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                # a log file or `ray job logs` is no terminal: Rich would assume 80 columns and cut the counts
                console=Console(stderr=True, width=None if sys.stderr.isatty() else 160),
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total_units, info="")
        return self

    def advance(self, outcome: UnitOutcome) -> None:
        if outcome.stats:
            self.samples += outcome.stats.get("samples", outcome.stats.get("accepted", 0))
            self.rejected += outcome.stats.get("rejected", 0)
        if self._bar is not None:
            rate = (self.samples + self.rejected) / max(time.monotonic() - self.started, 1e-9)
            info = f"{self.samples} samples, {self.rejected} rejected, {rate:.1f} inputs/s"
            self._bar.update(self._task, advance=1, info=info)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def run_units(
    fn: Callable[..., dict[str, Any]],
    units: Iterable[Any],
    args: tuple = (),
    *,
    cfg: RuntimeConfig,
    total: int,
    name: str = "unit",
    max_in_flight: int | None = None,
) -> list[UnitOutcome]:
    """Run fn(unit, *args) for every unit as a Ray task; a worker that dies is retried.

    At most `max_in_flight` tasks (the argument, else `runtime.max_in_flight`, else twice the
    task slots) are pending at once, so memory stays bounded on any input
    size. A unit whose task raises (after retries) is reported as failed; the others go on, and
    a rerun redoes only the failed and the unfinished units.
    """
    import ray

    check_fits(name, cfg.task_cpus)
    remote = ray.remote(num_cpus=cfg.task_cpus, max_retries=cfg.max_retries)(fn)
    cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
    slots = int(cluster_cpus / cfg.task_cpus)  # tasks that can run at once
    max_in_flight = max_in_flight or cfg.max_in_flight or max(2, 2 * slots)
    args_refs = tuple(ray.put(a) for a in args)
    outcomes: list[UnitOutcome] = []
    pending: dict[Any, str] = {}
    it = iter(units)
    with Progress(total, enabled=cfg.progress, label=f"{name}: units") as progress:
        def submit_one() -> bool:
            unit = next(it, None)
            if unit is None:
                return False
            pending[remote.remote(unit, *args_refs)] = unit.unit
            return True

        while len(pending) < max_in_flight and submit_one():
            pass
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            unit_id = pending.pop(ref)
            try:
                outcome = UnitOutcome(unit_id, stats=ray.get(ref))
            except (ray.exceptions.RayTaskError, ray.exceptions.WorkerCrashedError, ray.exceptions.RayError) as exc:
                outcome = UnitOutcome(unit_id, error=_short_error(exc))
                log.error("unit %s failed: %s", unit_id, outcome.error)
            outcomes.append(outcome)
            progress.advance(outcome)
            submit_one()
    return outcomes


def _short_error(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
