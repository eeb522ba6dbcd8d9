"""The vLLM engine actor, or only its `VLLM::EngineCore` process, SIGKILLed in the middle of a
real `weaverdata build-proxy` run (issues 7 and 14).

The run (single-image recipe, real photos, real vLLM on the tiny RANDOM-WEIGHT VLM, the job's
engine pool) is watched with psutil. Once the engine actor (`ray::EngineActor`) runs a batch
(its process title ends in `.generate`) and its `VLLM::EngineCore` child is computing, the actor
is SIGKILLed. The pool's actors have `max_restarts=-1` and `max_task_retries=-1`: Ray restarts
the actor (a new engine starts, counted in `engine_starts`) and sends the batches it held again.
The run must complete, every request must be answered by the engine (none lost, none turned
into an engine-error reject), and the output must equal the unkilled run's (`proxy_shards`, the
same command).

In the second run only the engine's `VLLM::EngineCore` child process is SIGKILLed while it
computes a batch. The actor above it (ray.data.llm's engine actor, or `ray::EngineActor` of the
engine pool) gets vLLM's `EngineDeadError` and exits on purpose (`os._exit(1)`, so that Ray
restarts it rather than retrying on an actor with a dead engine); from there on it is the first
case, with the same checks.

Only processes under this test's own CLI process are looked at or signalled.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, cli_sets
from weaverdata.demo import proxy_inputs, proxy_overrides

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # ~2.5 min for the killed run, plus the proxy_shards fixture

ENGINE_ACTOR = "EngineActor"  # the job's engine actors (weaverdata.engines.engine_pool), `ray::EngineActor[.generate]`
ENGINE_CORE = "VLLM::EngineCore"
BUSY_TITLES = (".submit", ".generate")  # an engine actor running a batch: ray.data.llm's (`...vLLMEngineStageUDF)).submit`), the engine pool's (`ray::EngineActor.generate`)
DEADLINE_S = 900


def contents(out: Path) -> dict[str, dict]:
    return {row["id"]: row for p in sorted(out.glob("data/*/*.parquet")) for row in pq.read_table(p).to_pylist()}


def rejects(out: Path) -> list[dict]:
    return [r for p in sorted(out.glob("rejects/*.parquet")) for r in pq.read_table(p).to_pylist()]


def cached_results(out: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (out / "work" / "captions").rglob("part-*.parquet"))  # flat, or one folder per unit


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def descendants(root: psutil.Process) -> list[psutil.Process]:
    try:
        return root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def name_of(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""


def gone(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_engine_actor_mid_batch(proc: subprocess.Popen, out: Path) -> dict:
    """Watch the run under proc; SIGKILL the engine actor once its engine computes a batch.

    Returns what was seen: the killed actor's pid, its EngineCore's pid, the engine's CPU seconds
    on the batch before the kill, the results cached at the kill, and the engine actor pids seen
    after it (the restarted actor)."""
    root = psutil.Process(proc.pid)
    seen: dict = {"killed": None, "actors_after": set(), "core_gone_after": None}
    batch_started: dict[int, float] = {}  # EngineCore pid -> its CPU seconds when the batch arrived
    deadline = time.monotonic() + DEADLINE_S
    while proc.poll() is None and time.monotonic() < deadline:
        for p in descendants(root):
            name = name_of(p)
            if ENGINE_ACTOR not in name:
                continue
            if seen["killed"] is not None:
                if p.pid != seen["killed"]:
                    seen["actors_after"].add(p.pid)
                continue
            if not name.endswith(BUSY_TITLES):  # idle or starting: no batch in it
                continue
            try:
                cores = [c for c in p.children() if name_of(c) == "VLLM::EngineCore"]
                if not cores:
                    continue
                core = cores[0]
                start = batch_started.setdefault(core.pid, cpu_seconds(core))
                used = cpu_seconds(core) - start
                if used < 0.05:  # the batch is in the actor; wait until its engine computes it
                    continue
                cached = cached_results(out)
                if not p.name().endswith(BUSY_TITLES):  # the batch ended meanwhile: wait for the next one
                    batch_started.pop(core.pid, None)
                    continue
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                continue
            seen.update(killed=p.pid, core=core, core_cpu_on_batch=used, cached_at_kill=cached, killed_at=time.monotonic())
        core = seen.get("core")
        if core is not None and seen["core_gone_after"] is None:
            try:
                gone = core.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                gone = True
            if gone:
                seen["core_gone_after"] = time.monotonic() - seen["killed_at"]
        time.sleep(0.02 if seen["killed"] is None else 0.5)
    return seen


def kill_engine_core_mid_batch(proc: subprocess.Popen, out: Path, total: int) -> dict:
    """Watch the run under proc; SIGKILL only the `VLLM::EngineCore` process (not the actor above
    it) once it computes a batch its actor runs, with results still to come (`total`: the results
    an unkilled run caches).

    Returns what was seen: the killed core's pid, its parent actor's pid and name, the core's CPU
    seconds on the batch before the kill, the results cached at the kill, how long the actor
    lived on after it, and the engine cores seen after it (the restarted actor's)."""
    root = psutil.Process(proc.pid)
    seen: dict = {"killed": None, "cores_after": set(), "actor_gone_after": None}
    batch_started: dict[int, float] = {}  # EngineCore pid -> its CPU seconds when its actor was seen running a batch
    idle_since: dict[int, float] = {}  # EngineCore pid -> when its actor was last seen without one
    deadline = time.monotonic() + DEADLINE_S
    while proc.poll() is None and time.monotonic() < deadline:
        procs = descendants(root)
        cores = [p for p in procs if name_of(p) == ENGINE_CORE]
        if seen["killed"] is not None:
            seen["cores_after"].update(c.pid for c in cores if c.pid != seen["killed"])
            if seen["actor_gone_after"] is None and gone(seen["actor"]):
                seen["actor_gone_after"] = time.monotonic() - seen["killed_at"]
            time.sleep(0.5)
            continue
        for core in cores:
            try:
                actor = core.parent()
                if actor is None or not name_of(actor).startswith("ray::"):
                    continue
                if not name_of(actor).endswith(BUSY_TITLES):  # idle or starting (an async actor's title drops its method for a moment between calls)
                    if time.monotonic() - idle_since.setdefault(core.pid, time.monotonic()) > 0.5:
                        batch_started.pop(core.pid, None)
                    continue
                idle_since.pop(core.pid, None)
                start = batch_started.setdefault(core.pid, cpu_seconds(core))
                used = cpu_seconds(core) - start
                if used < 0.05:  # the batch is in the actor; wait until its engine computes it
                    continue
                cached = cached_results(out)
                if cached >= total or not name_of(actor).endswith(BUSY_TITLES):  # nothing left to compute, or the batch ended meanwhile
                    batch_started.pop(core.pid, None)
                    continue
                actor_name = name_of(actor)
                core.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                continue
            seen.update(killed=core.pid, actor=actor, actor_pid=actor.pid, actor_name=actor_name, core_cpu_on_batch=used, cached_at_kill=cached, killed_at=time.monotonic())
            break
        time.sleep(0.02)
    return seen


def watched_run(root: Path, tiny_models: dict, watch) -> tuple:
    """`weaverdata build-proxy` (the command of `proxy_shards`) in its own session, with
    `watch(proc, out)` looking on; returns (exit code, out, what watch saw, stdout, stderr)."""
    inputs = proxy_inputs(root / "in")
    out = root / "out"
    sets = {**proxy_overrides(tiny_models, "single-image"), "runtime.progress": False}
    args = ["build-proxy", "--config", "pipelines/proxy-single-image.yaml", "--input", str(inputs["single-image"]), "--output", str(out), "--json", *cli_sets(sets)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.monotonic()
    with open(root / "stdout", "w") as so, open(root / "stderr", "w") as se:
        proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *args], stdout=so, stderr=se, env=env, cwd=REPO, start_new_session=True)
        try:
            seen = watch(proc, out)
            proc.wait(timeout=max(1.0, DEADLINE_S - (time.monotonic() - started)))
        finally:
            if proc.poll() is None:  # the deadline passed: end this run's processes (its own session), never others
                for p in [*descendants(psutil.Process(proc.pid)), psutil.Process(proc.pid)]:
                    try:
                        p.send_signal(signal.SIGKILL)
                    except psutil.NoSuchProcess:
                        pass
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=30)
    seen["seconds"] = time.monotonic() - started
    return proc.returncode, out, seen, (root / "stdout").read_text(), (root / "stderr").read_text(errors="replace")


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, tiny_models):
    return watched_run(tmp_path_factory.mktemp("fault-engine"), tiny_models, kill_engine_actor_mid_batch)


@pytest.fixture(scope="module")
def core_killed_run(tmp_path_factory, tiny_models, proxy_shards):
    total = cached_results(proxy_shards)
    return watched_run(tmp_path_factory.mktemp("fault-engine-core"), tiny_models, lambda proc, out: kill_engine_core_mid_batch(proc, out, total))


def assert_no_row_lost(out: Path, stdout: str, proxy_shards: Path) -> None:
    """The run is complete, every request was answered (none became an engine-error reject), and
    the output equals the unkilled run's: the same sample ids, count and records."""
    summary = json.loads(stdout)
    unkilled = json.loads((proxy_shards / "summary.json").read_text())
    assert summary["status"] == "complete" and not summary["units"]["failed"]
    assert summary["inputs"] == summary["samples"] + summary["rejected"] == unkilled["inputs"]
    assert not [r for r in rejects(out) if r["reason"].startswith("caption_")], summary["rejected_by_reason"]
    assert summary["rejected_by_reason"] == unkilled["rejected_by_reason"]
    cap, cap_unkilled = summary["details"]["captioning"], unkilled["details"]["captioning"]
    assert cap["generated"] == cap_unkilled["generated"] and cap["rejected"] == 0, (cap, cap_unkilled)
    assert cached_results(out) == cached_results(proxy_shards)
    mine, single = contents(out), contents(proxy_shards)
    assert sorted(mine) == sorted(single) and len(mine) == summary["samples"] > 0
    assert mine == single


def test_engine_actor_killed_mid_batch_is_restarted_and_no_row_is_lost(killed_run, proxy_shards):
    rc, out, seen, stdout, stderr = killed_run
    assert rc == 0, stderr[-3000:]
    killed = seen["killed"]
    assert killed is not None, "the run ended before the engine actor could be killed mid-batch"

    # killed mid-run: a batch was in the actor, its engine had computed on it, and results were
    # still to come (the cache is written as a round's results arrive); the actor process is gone
    # and another engine actor ran after it
    assert seen["core_cpu_on_batch"] >= 0.05 and seen["cached_at_kill"] < cached_results(out)
    assert not psutil.pid_exists(killed) or name_of(psutil.Process(killed)) != f"ray::{ENGINE_ACTOR}"
    assert seen["actors_after"], "no engine actor ran after the kill"
    # the engine core under the killed actor does not outlive it (vLLM ends it when its parent dies)
    assert seen["core_gone_after"] is not None and seen["core_gone_after"] < 60
    # Ray restarted it (a second engine start of the job's one replica, counted by the engines
    # themselves) and retried the batches it held
    assert json.loads(stdout)["details"]["engine_starts"] == 2
    print(f"engine actor {killed} killed after its engine computed {seen['core_cpu_on_batch']:.2f} CPU s on a batch "
          f"(the core exited {seen['core_gone_after']:.1f} s later); restarted as {sorted(seen['actors_after'])}; run {seen['seconds']:.0f} s")

    # no row lost, and the output equals the unkilled run's
    assert_no_row_lost(out, stdout, proxy_shards)


def test_engine_core_killed_mid_batch_makes_the_actor_exit_and_no_row_is_lost(core_killed_run, proxy_shards):
    rc, out, seen, stdout, stderr = core_killed_run
    assert rc == 0, stderr[-3000:]
    core = seen["killed"]
    assert core is not None, "the run ended before an engine core could be killed mid-batch"

    # killed mid-run: a batch was waiting on the engine, the engine had computed on it, and
    # results were still to come
    assert seen["core_cpu_on_batch"] >= 0.05 and seen["cached_at_kill"] < cached_results(out), seen
    # the actor above the core was not signalled, yet it exited (vLLM's EngineDeadError, then
    # os._exit(1) on purpose) and an engine core of a restarted actor ran after it
    assert seen["actor_gone_after"] is not None and seen["actor_gone_after"] < 120, seen
    # the engines' own output is in the run's logs (OUT/logs/, copied from the Ray session), not on the console
    logs = "\n".join(p.read_text(errors="replace") for p in (out / "logs").glob("worker-*"))
    assert re.search(r"exiting (the )?actor", logs), "the actor did not say it exits because its engine died"
    assert not re.search(r"exiting (the )?actor", stderr)
    assert seen["cores_after"], "no engine core ran after the kill"
    assert json.loads(stdout)["details"]["engine_starts"] == 2  # the restarted actor's engine, counted
    print(f"engine core {core} (under {seen['actor_name']} {seen['actor_pid']}) killed after {seen['core_cpu_on_batch']:.2f} CPU s on a batch; "
          f"the actor exited {seen['actor_gone_after']:.1f} s later; engine cores after: {sorted(seen['cores_after'])}; run {seen['seconds']:.0f} s")

    assert_no_row_lost(out, stdout, proxy_shards)
