"""Inputs and outputs on a real S3-compatible server (moto's server mode on loopback, through s3fs).

Object stores have no atomic rename: shards are written under their final names and the stats
file (the commit marker) is PUT last. These tests check that commit markers, resume after a
SIGKILL and `validate` are right there, and that a build-refs run reading from and writing to S3
gives the same samples as one on local disk.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli
from tests.s3 import S3Server
from tests.test_cluster import contents, refs_args
from tests.test_resume import accepted_and_rejected_ids, ingest_args, kill_when
from weaverdata.io.validate import validate_output

pytestmark = pytest.mark.ray

BUCKET = "weaverdata-test"


@pytest.fixture(scope="module")
def s3():
    server = S3Server().start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())  # this process's validate_output and fsspec see the server too
    fs = server.filesystem()
    fs.mkdir(BUCKET)
    try:
        yield server, fs
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def upload(fs, local: Path, prefix: str) -> str:
    for p in sorted(local.rglob("*")):
        if p.is_file():
            fs.pipe_file(f"{BUCKET}/{prefix}/{p.relative_to(local).as_posix()}", p.read_bytes())
    return f"s3://{BUCKET}/{prefix}"


def s3_contents(fs, prefix: str) -> dict[str, dict]:
    rows = {}
    for key in sorted(fs.glob(f"{BUCKET}/{prefix}/data/*/*.parquet")):
        with fs.open(key, "rb") as f:
            for row in pq.read_table(f).to_pylist():
                rows[row["id"]] = row
    return rows


def s3_accepted_and_rejected(fs, prefix: str) -> tuple[list[str], list[str]]:
    accepted = []
    for key in fs.glob(f"{BUCKET}/{prefix}/data/*/*.tar"):
        with tarfile.open(fileobj=io.BytesIO(fs.cat_file(key))) as tar:
            accepted += sorted({m.name.split(".", 1)[0] for m in tar.getmembers()})
    rejected = []
    for key in fs.glob(f"{BUCKET}/{prefix}/rejects/*.parquet"):
        with fs.open(key, "rb") as f:
            rejected += pq.read_table(f).column("id").to_pylist()
    return sorted(accepted), sorted(rejected)


@pytest.mark.slow  # ~3 min: CLIP, grouping and vLLM over S3
def test_build_refs_from_s3_to_s3_equals_a_local_run(s3, refs_shards, photos_dir, tiny_models):
    server, fs = s3
    inp = upload(fs, photos_dir, "photos")
    out = f"s3://{BUCKET}/refs"
    args = refs_args(photos_dir, Path("unused"), tiny_models)
    args[args.index("--input") + 1], args[args.index("--output") + 1] = inp, out
    proc = run_cli(*args, env=server.env(), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["status"] == "complete"
    report = validate_output(out)
    assert report.ok, report.errors
    mine, local = s3_contents(fs, "refs"), contents(refs_shards)
    assert sorted(mine) == sorted(local) and len(mine) > 0
    assert mine == local  # same records, same image bytes
    assert not [k for k in fs.find(f"{BUCKET}/refs") if ".tmp-" in k], "no temporary names on an object store"
    # every committed unit's stats file names data objects that exist
    for key in fs.glob(f"{BUCKET}/refs/stats/part-*.json"):
        for o in json.loads(fs.cat_file(key))["outputs"]:
            for name in (o.get("tar"), o.get("parquet")):
                if name:
                    assert fs.exists(f"{BUCKET}/refs/{name}"), name


def test_sigkill_then_resume_on_s3(s3, tmp_path, photos_dir):
    """A run on S3 killed mid-way (driver, raylet, workers at once) resumes to exactly the samples
    of an uninterrupted local run: no sample lost, none twice, `validate` right before and after."""
    server, fs = s3
    local_in = tmp_path / "in"
    for k in range(5):
        shutil.copytree(photos_dir, local_in / f"copy{k}")
        (local_in / f"copy{k}" / "broken.jpg").write_bytes(b"not a jpeg")
    inp = upload(fs, local_in, "resume-in")
    out = f"s3://{BUCKET}/resume-out"
    args = ingest_args(Path("unused-in"), Path("unused-out"))
    args[args.index("-i") + 1], args[args.index("-o") + 1] = inp, out

    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **server.env()}

    def two_committed() -> bool:
        fs.invalidate_cache()
        return len(fs.glob(f"{BUCKET}/resume-out/stats/part-*.json")) >= 2

    kill_when(args, two_committed, env=env, timeout=300, poll=0.05)
    time.sleep(1.0)
    fs.invalidate_cache()
    planned = len(json.loads(fs.cat_file(f"{BUCKET}/resume-out/run.json"))["units"])
    committed_before = len(fs.glob(f"{BUCKET}/resume-out/stats/part-*.json"))
    assert 2 <= committed_before < planned, (committed_before, planned)
    assert not validate_output(out).ok, "an unfinished run does not validate"

    rerun = run_cli(*args, env=server.env())
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    fs.invalidate_cache()
    summary = json.loads(fs.cat_file(f"{BUCKET}/resume-out/summary.json"))
    assert summary["status"] == "complete"
    assert summary["units"]["resumed"] >= committed_before
    report = validate_output(out)
    assert report.ok, report.errors

    clean = tmp_path / "clean"
    once = run_cli(*ingest_args(local_in, clean))
    assert once.returncode == 0, once.stderr[-3000:]
    acc, rej = s3_accepted_and_rejected(fs, "resume-out")
    assert (acc, rej) == accepted_and_rejected_ids(clean)
    assert len(set(acc)) == len(acc) == summary["accepted"] and len(rej) == summary["rejected"] == 5


def test_validate_on_s3_catches_a_missing_commit_marker_and_a_lost_shard(s3, tmp_path, photos_dir):
    server, fs = s3
    inp = upload(fs, photos_dir, "validate-in")
    out = f"s3://{BUCKET}/validate-out"
    args = ingest_args(Path("unused-in"), Path("unused-out"))
    args[args.index("-i") + 1], args[args.index("-o") + 1] = inp, out
    proc = run_cli(*args, env=server.env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    fs.invalidate_cache()
    assert validate_output(out).ok
    cli = run_cli("validate", out, env=server.env())
    assert cli.returncode == 0, cli.stderr[-2000:]

    stats = sorted(fs.glob(f"{BUCKET}/validate-out/stats/part-*.json"))
    shard = json.loads(fs.cat_file(stats[0]))["outputs"][0]["tar"]
    fs.rm(f"{BUCKET}/validate-out/{shard}")  # a committed shard's data lost
    fs.invalidate_cache()
    report = validate_output(out)
    assert not report.ok and any(shard in e for e in report.errors), report.errors
    cli = run_cli("validate", out, env=server.env())
    assert cli.returncode != 0 and shard in (cli.stdout + cli.stderr)

    fs.rm(stats[1])  # a unit without its commit marker: not committed, so the run is incomplete
    fs.invalidate_cache()
    report = validate_output(out)
    assert not report.ok and len(report.errors) >= 2, report.errors


def test_inspect_a_remote_output(s3, refs_shards, tmp_path):
    """`weaverdata inspect s3://...` reads the output over S3 and writes the report locally."""
    server, fs = s3
    out = upload(fs, refs_shards, "inspect-refs")
    report = tmp_path / "report"
    proc = run_cli("inspect", out, "--report", str(report), "--json", env=server.env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    local = run_cli("inspect", str(refs_shards), "--report", str(tmp_path / "local"), "--json")
    assert local.returncode == 0, local.stderr[-3000:]
    expected = json.loads(local.stdout)
    for key in ("samples_shown", "rejects_shown", "thumbnails", "missing_previews"):
        assert result[key] == expected[key], key
    assert result["samples_shown"] > 0 and result["thumbnails"] > 0
    assert sorted(p.name for p in (report / "thumbs").iterdir()) == sorted(p.name for p in (tmp_path / "local" / "thumbs").iterdir())
