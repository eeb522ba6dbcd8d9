"""A run killed with SIGKILL inside a shard write resumes to exactly the ids of an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from tests.conftest import REPO, run_cli
from weaverdata.io.validate import validate_output

pytestmark = pytest.mark.ray


def accepted_and_rejected_ids(out: Path) -> tuple[list[str], list[str]]:
    accepted = sorted(s["__key__"] for tar in out.glob("data/*/*.tar") for s in wds.WebDataset(str(tar), shardshuffle=False))
    rejected = sorted(i for f in out.glob("rejects/*.parquet") for i in pq.read_table(f).column("id").to_pylist())
    return accepted, rejected


@pytest.fixture(scope="module")
def big_input(tmp_path_factory, photos_dir) -> Path:
    """~100 real photos (scikit-image's, copied 5 times) plus a few bad files."""
    root = tmp_path_factory.mktemp("resume-in")
    for k in range(5):
        d = root / f"copy{k}"
        shutil.copytree(photos_dir, d)
        (d / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def kill_tree(pid: int) -> None:
    """SIGKILL the driver and, at the same instant, every process under it (Ray's raylet, workers)."""
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    os.killpg(pid, signal.SIGKILL)


def kill_when(args: list[str], ready, *, kill=kill_tree, env: dict | None = None, timeout: float = 240, poll: float = 0.01) -> None:
    """Run `python cli.py ARGS` in its own session and `kill(pid)` as soon as `ready()` is true.

    Fails (with the run's output) if the run ended, or `timeout` passed, before the kill; the
    process group is SIGKILLed on the way out whatever happened.
    """
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *args], cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    killed = False
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                kill(proc.pid)
                killed = True
                break
            time.sleep(poll)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert killed, f"the run ended before the kill could land: {proc.stdout.read().decode()[-2000:]}"


def ingest_args(inp: Path, out: Path) -> list[str]:
    return ["ingest", "-c", "pipelines/ingest.yaml", "-i", str(inp), "-o", str(out), "--set", "input.samples_per_shard=3", "--set", "runtime.progress=false", "--set", "runtime.max_in_flight=2"]


def kill_during_a_shard_write(inp: Path, out: Path) -> bool:
    """Start a run and SIGKILL it while a shard's temporary file exists; True if one survived the kill.

    A shard write is short: the writer may rename its file between our glob and the signal, and then
    the kill landed between writes. The caller retries that case, so the test always checks a kill
    that cut a write in half.
    """
    kill_when(ingest_args(inp, out), lambda: len(list(out.glob("stats/part-*.json"))) >= 2 and bool(list(out.glob("data/*/*.tmp-*"))))
    time.sleep(1.0)  # nothing may change after a kill: the checks below read a still folder
    return bool(list(out.glob("data/*/*.tmp-*")))


def test_sigkill_inside_a_shard_write_then_resume(big_input, tmp_path):
    out = tmp_path / "killed"
    for _attempt in range(5):
        if kill_during_a_shard_write(big_input, out):
            break
        shutil.rmtree(out)
    assert list(out.glob("data/*/*.tmp-*")), "in 5 attempts no kill landed while a shard was being written"
    planned = len(json.loads((out / "run.json").read_text())["units"])
    committed_before = len(list(out.glob("stats/part-*.json")))
    assert committed_before < planned, "the kill must land before the run finished"
    assert not validate_output(str(out)).ok

    rerun = run_cli(*ingest_args(big_input, out))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units"]["resumed"] >= committed_before - 1  # a unit may have committed while the kill landed
    report = validate_output(str(out))
    assert report.ok, report.errors
    assert not list(out.glob("**/*.tmp-*")), "leftovers of the killed attempt are cleared"

    clean = tmp_path / "clean"
    once = run_cli(*ingest_args(big_input, clean))
    assert once.returncode == 0, once.stderr[-3000:]
    assert accepted_and_rejected_ids(out) == accepted_and_rejected_ids(clean)
    acc, rej = accepted_and_rejected_ids(out)
    assert len(acc) == summary["accepted"] and len(rej) == summary["rejected"] == 5
    assert len(set(acc)) == len(acc)


def test_resume_into_a_folder_made_with_another_config_is_refused(big_input, tmp_path):
    out = tmp_path / "o"
    first = run_cli(*ingest_args(big_input, out))
    assert first.returncode == 0, first.stderr[-2000:]
    other = run_cli(*ingest_args(big_input, out), "--set", "image.max_pixels=1000")
    assert other.returncode == 2 and "different config" in other.stderr and "--overwrite" in other.stderr
    again = run_cli(*ingest_args(big_input, out), "--set", "image.max_pixels=1000", "--overwrite")
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["image"]["max_pixels"] == 1000
    assert summary["rejected_by_reason"].get("decompression_bomb", 0) > 50  # every real photo is above 1000 px
    assert validate_output(str(out)).ok
