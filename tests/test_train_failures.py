"""`train.max_failures`: a Ray Train worker SIGKILLed in the middle of `weaverdata train planner`
is restarted by Ray Train, the new worker resumes from the newest committed checkpoint, and the
run ends (exit 0) with exactly the metrics of an uninterrupted run of the same command.

The kill: once a checkpoint is committed and the worker has logged at least two steps past it
(so the restart has steps to redo), the worker (`ray::RayTrainWorker`, a descendant of this
test's own CLI process) is frozen with SIGSTOP, the output folder is read while nothing can write
to it, and the worker is SIGKILLed. The test fails, never passes, if the run ends first.
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
import pytest

from tests.conftest import REPO, run_cli
from tests.test_train_planner import kill_group, metrics, train_args
from weaverdata.io.storage import Location
from weaverdata.train.loop import committed_checkpoints

pytestmark = [pytest.mark.ray]

STEPS = 30  # checkpoints every 10 steps (train_args' BASE), so the kill lands after step 12 or 22
RESTARTS = ["--set", "train.max_failures=1"]
ENV = {"RAY_DEDUP_LOGS": "0"}  # both workers print the same step lines; keep every one
WORKER = "ray::RayTrainWorker"
DEADLINE_S = 900


def committed(out: Path) -> list[int]:
    """Steps of the checkpoints written in full, as the trainer itself lists them."""
    return committed_checkpoints(Location.of(str(out)))


def logged_steps(out: Path) -> list[int]:
    """Steps of metrics.jsonl's complete lines (a line being appended is not one yet)."""
    try:
        text = (out / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line)["step"] for line in text.split("\n")[:-1] if line.strip()]


def train_workers(root: psutil.Process) -> list[psutil.Process]:
    """The Ray Train worker processes under root (the CLI process, which started its own Ray)."""
    found = []
    try:
        procs = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for p in procs:
        try:
            if p.name() == WORKER:
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def gone(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_worker_past_a_checkpoint(proc: subprocess.Popen, out: Path) -> dict | None:
    """Wait until a checkpoint is committed and two more steps are logged, then freeze the train
    worker, note what the output folder holds, and SIGKILL the worker. None if the run ended (or
    the deadline passed) first."""
    root = psutil.Process(proc.pid)
    deadline = time.monotonic() + DEADLINE_S
    while proc.poll() is None and time.monotonic() < deadline:
        done = committed(out)
        if done and max(logged_steps(out), default=0) >= done[-1] + 2:
            workers = train_workers(root)
            if len(workers) == 1:
                worker = workers[0]
                try:
                    worker.send_signal(signal.SIGSTOP)  # nothing writes to the output from here on
                except psutil.NoSuchProcess:
                    continue
                seen = {"pid": worker.pid, "checkpoints": committed(out), "logged": logged_steps(out), "summary": (out / "summary.json").exists()}
                worker.send_signal(signal.SIGKILL)
                gone_by = time.monotonic() + 60
                while time.monotonic() < gone_by and not gone(worker):
                    time.sleep(0.05)
                assert gone(worker), f"train worker {worker.pid} still runs 60 s after SIGKILL"
                return seen
        time.sleep(0.05)
    return None


def worker_steps(stderr: str) -> dict[int, list[int]]:
    """The `[train] step N/...` lines each worker printed, by pid, in order (repeats dropped)."""
    by_pid: dict[int, list[int]] = {}
    for pid, step in re.findall(r"\(RayTrainWorker pid=(\d+)\)\S*\s+\[train\] step (\d+)/", stderr):
        steps = by_pid.setdefault(int(pid), [])
        if not steps or steps[-1] != int(step):
            steps.append(int(step))
    return by_pid


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.fixture(scope="module")
def uninterrupted(proxy_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("max-failures") / "whole"
    proc = run_cli(*train_args(proxy_shards, out, STEPS, *RESTARTS), timeout=DEADLINE_S, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_a_killed_train_worker_is_restarted_from_the_last_checkpoint(uninterrupted, proxy_shards, tmp_path):
    out = tmp_path / "killed"
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **ENV}
    started = time.monotonic()
    with open(tmp_path / "stdout", "w") as so, open(tmp_path / "stderr", "w") as se:
        proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *train_args(proxy_shards, out, STEPS, *RESTARTS)], cwd=REPO, env=env, stdout=so, stderr=se, start_new_session=True)
        try:
            seen = kill_worker_past_a_checkpoint(proc, out)
            proc.wait(timeout=max(1.0, DEADLINE_S - (time.monotonic() - started)))
        finally:
            if proc.poll() is None:  # the deadline passed: end this run's own processes
                kill_group(proc)
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text(errors="replace")
    assert seen is not None, f"the run ended before a train worker could be killed past a checkpoint: {stderr[-3000:]}"

    # the kill landed mid-run: a checkpoint committed, steps logged past it, the run not over
    resume_step = seen["checkpoints"][-1]
    last_logged = seen["logged"][-1]
    assert not seen["summary"] and resume_step + 2 <= last_logged < STEPS, seen
    assert proc.returncode == 0, stderr[-3000:]

    # Ray Train restarted the worker group once; the new worker resumed from that checkpoint and
    # redid the steps the killed one had done after it
    assert f"[train] resumed from {out / 'checkpoints' / f'step-{resume_step:08d}'} (step {resume_step})" in stderr, stderr[-3000:]
    printed = worker_steps(stderr)
    assert seen["pid"] in printed and len(printed) == 2, printed
    (restarted,) = set(printed) - {seen["pid"]}
    assert printed[seen["pid"]][0] == 1 and printed[seen["pid"]][-1] >= resume_step + 1, printed
    assert printed[restarted][0] == resume_step + 1, printed
    summary = json.loads(stdout)
    assert summary["status"] == "complete" and summary["steps"] == STEPS, summary

    # one history: the killed worker's rows after the checkpoint are gone, and every row (loss,
    # weight, lr, grad norm, fixed-batch loss, held-out metrics) equals the uninterrupted run's,
    # bit for bit, before and after the restart
    rows, whole = metrics(out), metrics(uninterrupted)
    assert [r["step"] for r in rows] == list(range(STEPS + 1)), [r["step"] for r in rows]
    assert without_timing(rows[resume_step + 1 :]) == without_timing(whole[resume_step + 1 :])
    assert without_timing(rows) == without_timing(whole)
    print(f"train worker {seen['pid']} killed after step {last_logged} (checkpoint {resume_step}); restarted as {restarted}, resumed at step {resume_step + 1}; run {time.monotonic() - started:.0f} s")
