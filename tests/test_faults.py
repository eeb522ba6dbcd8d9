"""Faults a real run meets, each survived: a Ray worker process SIGKILLed mid-run, the output disk
filling up, the output turning read-only. (The driver killed mid-run: tests/test_resume.py on one
node, tests/test_cluster.py on a cluster, tests/test_s3.py on S3; the vLLM engine actor killed:
tests/test_fault_engine.py.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.test_resume import accepted_and_rejected_ids, ingest_args
from weaverdata.io.validate import validate_output

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def five_copies(tmp_path_factory, photos_dir) -> Path:
    """130 real photos (scikit-image's, 5 times, ~27 MB) and 5 broken files."""
    root = tmp_path_factory.mktemp("faults-in")
    for k in range(5):
        shutil.copytree(photos_dir, root / f"copy{k}")
        (root / f"copy{k}" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture(scope="module")
def clean_run(five_copies, tmp_path_factory) -> tuple[list[str], list[str]]:
    out = tmp_path_factory.mktemp("faults-clean") / "out"
    proc = run_cli(*ingest_args(five_copies, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return accepted_and_rejected_ids(out)


def unit_workers(root_pid: int) -> list:
    """Ray worker processes under this run that are executing a unit task right now (Ray sets the
    process title to `ray::<function>` while a task runs, `ray::IDLE` otherwise)."""
    import psutil

    found = []
    for p in psutil.Process(root_pid).children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith("ray::process_unit"):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def test_a_worker_killed_mid_run_has_its_task_retried(five_copies, clean_run, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *ingest_args(five_copies, out), "--json"], cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = []
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None and len(killed) < 2:
            if len(list(out.glob("stats/part-*.json"))) >= 2 + 4 * len(killed):
                for p in unit_workers(proc.pid)[:1]:
                    p.send_signal(signal.SIGKILL)
                    killed.append(p.pid)
            time.sleep(0.005)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert len(killed) == 2, f"no worker was caught running a unit: {stderr[-2000:]}"
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["status"] == "complete" and summary["units"]["failed"] == [], summary["units"]
    planned = summary["units"]["planned"]
    assert planned > 10 and summary["units"]["committed"] == planned
    # accounting: every input is a sample or a reject, exactly once
    acc, rej = accepted_and_rejected_ids(out)
    assert summary["accepted"] + summary["rejected"] == summary["inputs"] == 135
    assert (acc, rej) == clean_run
    assert len(set(acc)) == len(acc) == summary["accepted"]
    report = validate_output(str(out))
    assert report.ok, report.errors


def _namespaces_work() -> str | None:
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"no user+mount namespaces here: {probe.stderr.strip()}"


@pytest.mark.slow
def test_output_full_then_read_only_then_room_again(five_copies, clean_run, tmp_path):
    """The output location (a 12 MB tmpfs, mounted in a private namespace) fills up mid-run, then is
    remounted read-only, then given room: clear errors, no committed shard touched, then a rerun
    completes to exactly the samples of an uninterrupted run."""
    why = _namespaces_work()
    if why:
        pytest.skip(why)
    result, copy = tmp_path / "result.json", tmp_path / "copy"
    cmd = ["unshare", "--user", "--map-root-user", "--mount", sys.executable, str(REPO / "tests" / "disk_faults.py"), str(five_copies), str(tmp_path / "mnt"), "12", str(copy), str(result)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = json.loads(result.read_text())

    full = steps["full"]
    assert full["rc"] == 1, full
    last = full["stderr"].strip().splitlines()[-1]
    assert last.startswith("error: run incomplete:") and "No space left on device" in last, last
    assert "Traceback" not in full["stderr"], full["stderr"]
    committed = {k for k in full["committed"] if k.startswith("stats/")}
    assert 1 <= len(committed) < full["planned"], (len(committed), full["planned"])
    assert not full["validate"]["ok"]
    assert all("not committed" in e or "summary" in e for e in full["validate"]["errors"]), full["validate"]["errors"]

    ro = steps["read_only"]
    assert ro["rc"] == 2 and "not writable" in ro["stderr"], ro
    assert "Traceback" not in ro["stderr"], ro["stderr"]
    assert ro["committed"] == full["committed"], "a committed shard changed"

    again = steps["room_again"]
    assert again["rc"] == 0, again["stderr"]
    assert again["validate"]["ok"], again["validate"]["errors"]
    assert accepted_and_rejected_ids(copy) == clean_run
