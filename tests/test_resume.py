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


# -- build-refs: SIGKILL during captioning ------------------------------------------------------------


def refs_args(inp: Path, out: Path, tiny_models) -> list[str]:
    from tests.conftest import cli_sets
    from weaverdata.demo import tiny_model_overrides

    # engine.max_num_seqs 1: the engine answers one request at a time, so a unit's text task spends
    # seconds, not milliseconds, between its first cached results and its drafts (the window the
    # kill must land in; with a batch of 32 the tiny model answers a unit's phase in ~10 ms)
    sets = {**tiny_model_overrides(tiny_models), "engine.max_num_seqs": 1, "input.samples_per_shard": 25, "grouping.edge_threshold": 0.99, "band.low": 0.9,
            "band.high": 0.9995, "runtime.progress": False, "runtime.task_cpus": 0.5}
    return ["build-refs", "-c", "pipelines/refs-collection.yaml", "-i", str(inp), "-o", str(out), "--json", *cli_sets(sets)]


def cache_keys(out: Path) -> dict[str, list[str]]:
    """The keys in each unit's caption cache (every file of it), as written."""
    return {d.name: [k for f in sorted(d.glob("part-*.parquet")) for k in pq.read_table(f, columns=["key"]).column("key").to_pylist()]
            for d in sorted((out / "work" / "captions").glob("unit=*"))}


def records(out: Path) -> dict[str, dict]:
    rows = {}
    for p in sorted(out.glob("data/*/*.parquet")):
        t = pq.read_table(p)
        rows.update((r["id"], r) for r in t.drop_columns([c for c in t.column_names if c.endswith(("_image", "_images"))]).to_pylist())
    return rows


@pytest.mark.slow
def test_build_refs_killed_during_captioning_resumes_exactly_once(big_input, tmp_path, tiny_models):
    """SIGKILL while the text stage has cached some results and not all units have drafts:
    the rerun asks only for what was not finished (no key is generated twice), and writes what a
    run that found every answer in the cache writes."""
    out = tmp_path / "killed"

    def cached_without_drafts() -> set[str]:
        """Units whose text task has cached results but has not written its drafts."""
        return {d.name.removeprefix("unit=") for d in out.glob("work/captions/unit=*")
                if list(d.glob("part-*.parquet")) and not (out / "work" / "drafts" / f"part-{d.name.removeprefix('unit=')}.parquet").exists()}

    for _attempt in range(5):  # a unit may write its drafts between the check and the kill: then again
        kill_when(refs_args(big_input, out, tiny_models), lambda: bool(cached_without_drafts()), timeout=900, poll=0.02)
        time.sleep(1.0)  # nothing may change after a kill: the checks below read a still folder
        if cached_without_drafts():
            break
        shutil.rmtree(out)
    redone = cached_without_drafts()
    assert redone, "in 5 attempts no kill landed while a unit's text task had cached results"
    before = cache_keys(out)
    assert not list(out.glob("stats/part-*.json"))

    rerun = run_cli(*refs_args(big_input, out, tiny_models), timeout=1200)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["status"] == "complete"
    report = validate_output(str(out))
    assert report.ok, report.errors
    after = cache_keys(out)
    for unit, keys in after.items():
        assert len(keys) == len(set(keys)), f"{unit}: a result was generated twice"
        assert keys[: len(before.get(unit, []))] == before.get(unit, [])  # what the kill left stays
    cap = summary["details"]["captioning"]
    assert cap["cached"] >= sum(len(before[f"unit={u}"]) for u in redone) > 0  # the rerun found them and paid nothing for them
    assert summary["details"]["engine_starts"] == 1

    # the same run in one go, every answer from those caches: the same samples and rejects
    clean = tmp_path / "clean"
    shutil.copytree(out / "work" / "captions", clean / "work" / "captions")
    shutil.copytree(out / "embeddings", clean / "embeddings")
    once = run_cli(*refs_args(big_input, clean, tiny_models), timeout=1200)
    assert once.returncode == 0, once.stderr[-3000:]
    assert json.loads(once.stdout)["details"]["captioning"]["generated"] == 0
    assert records(out) == records(clean)
    assert accepted_and_rejected_ids(out) == accepted_and_rejected_ids(clean)
