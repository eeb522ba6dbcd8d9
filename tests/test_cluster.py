"""Recipes on a real three-node Ray cluster on this machine (a head and two workers, each its own
raylet and object store, started with `ray start` as docs/cluster.md shows): with --ray-address,
and through `ray job submit --working-dir`, the outputs equal a single-node run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.cluster import RAY, LocalCluster
from tests.conftest import REPO, cli_sets, run_cli
from tests.test_resume import accepted_and_rejected_ids, ingest_args, kill_when
from weaverdata.demo import proxy_inputs, proxy_overrides, tiny_model_overrides
from weaverdata.io.validate import validate_output

pytestmark = [pytest.mark.ray, pytest.mark.cluster, pytest.mark.slow]  # ~5 min more than the fixtures: run by `make test-all`


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(workers=2, cpus_per_node=2) as c:
        yield c


def contents(out: Path) -> dict[str, dict]:
    """Every sample of an output: its record and its media bytes, by id."""
    rows = {}
    for p in sorted(out.glob("data/*/*.parquet")):
        for row in pq.read_table(p).to_pylist():
            rows[row["id"]] = row
    return rows


def refs_args(photos_dir: Path, out: Path, tiny_models) -> list[str]:
    sets = {**tiny_model_overrides(tiny_models), "grouping.edge_threshold": 0.99, "band.low": 0.9, "band.high": 0.9995, "runtime.progress": False}
    return ["build-refs", "--config", "pipelines/refs-collection.yaml", "--input", str(photos_dir), "--output", str(out), "--json", *cli_sets(sets)]


def test_build_refs_on_three_nodes_equals_one_node(cluster, refs_shards, photos_dir, tiny_models, tmp_path):
    out = tmp_path / "refs"
    proc = run_cli(*refs_args(photos_dir, out, tiny_models), "--ray-address", cluster.address, env=cluster.env(), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["ray"]["nodes"] == 3 and summary["ray"]["cpus"] == 6
    assert validate_output(str(out)).ok
    mine, single = contents(out), contents(refs_shards)
    assert sorted(mine) == sorted(single) and len(mine) > 0
    assert mine == single


def test_build_proxy_on_three_nodes_equals_one_node(cluster, proxy_shards, tiny_models, tmp_path):
    inputs = proxy_inputs(tmp_path / "in")
    out = tmp_path / "proxy"
    sets = {**proxy_overrides(tiny_models, "single-image"), "runtime.progress": False}
    proc = run_cli("build-proxy", "--config", "pipelines/proxy-single-image.yaml", "--input", str(inputs["single-image"]), "--output", str(out), "--json", "--ray-address", cluster.address, *cli_sets(sets), env=cluster.env(), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["ray"]["nodes"] == 3
    mine, single = contents(out), contents(proxy_shards)
    assert sorted(mine) == sorted(single) and len(mine) > 0
    assert mine == single


def test_ray_job_submit_with_the_working_dir(cluster, refs_shards, photos_dir, tiny_models, tmp_path):
    out = tmp_path / "refs-job"
    cmd = [RAY, "job", "submit", "--address", cluster.dashboard, "--working-dir", str(REPO), "--", "weaverdata", *refs_args(photos_dir, out, tiny_models)]
    proc = subprocess.run(cmd, env=cluster.env(), capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "succeeded" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["ray"]["nodes"] == 3
    assert contents(out) == contents(refs_shards)


def test_driver_killed_on_the_cluster_then_rerun_resumes(cluster, photos_dir, tmp_path):
    """The driver (only it: the cluster lives on) SIGKILLed mid-run; Ray ends its job's tasks, and
    the same command run again against the same cluster resumes to exactly the samples of an
    uninterrupted run."""
    import shutil

    inp = tmp_path / "in"
    for k in range(4):
        shutil.copytree(photos_dir, inp / f"copy{k}")
    out = tmp_path / "out"
    args = [*ingest_args(inp, out), "--ray-address", cluster.address]
    kill_when(args, lambda: len(list(out.glob("stats/part-*.json"))) >= 3, kill=lambda pid: os.kill(pid, signal.SIGKILL), env=cluster.env(), timeout=300)  # the driver alone
    time.sleep(2.0)  # Ray notices the dead driver and ends its tasks
    planned = len(json.loads((out / "run.json").read_text())["units"])
    committed_before = len(list(out.glob("stats/part-*.json")))
    assert 3 <= committed_before < planned, (committed_before, planned)
    assert len(cluster.processes()) >= 3, "the cluster outlives the driver"

    rerun = run_cli(*args, "--json", env=cluster.env(), timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["status"] == "complete" and summary["ray"]["nodes"] == 3
    assert summary["units"]["resumed"] >= committed_before
    assert validate_output(str(out)).ok

    clean = tmp_path / "clean"
    once = run_cli(*ingest_args(inp, clean))
    assert once.returncode == 0, once.stderr[-3000:]
    acc, rej = accepted_and_rejected_ids(out)
    assert (acc, rej) == accepted_and_rejected_ids(clean)
    assert len(set(acc)) == len(acc) == summary["accepted"]
