"""The command line: helpful errors that arrive in seconds, never a hang."""

from __future__ import annotations

import json
import time

from tests.conftest import REPO, run_cli


def timed(*args: str):
    t0 = time.monotonic()
    res = run_cli(*args, timeout=60)
    return res, time.monotonic() - t0


def test_shim_and_help():
    res = run_cli("--help")
    assert res.returncode == 0
    for cmd in ("ingest", "validate"):
        assert cmd in res.stdout


def test_wrong_input_path_fails_fast_with_a_clear_message(tmp_path):
    res, secs = timed("ingest", "-i", str(tmp_path / "missing"), "-o", str(tmp_path / "out"))
    assert res.returncode == 2 and "does not exist" in res.stderr and str(tmp_path / "missing") in res.stderr
    assert secs < 20


def test_empty_input_fails_fast(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    res, secs = timed("ingest", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"))
    assert res.returncode == 2 and "no input files" in res.stderr
    assert secs < 20


def test_unwritable_output_fails_fast(tmp_path, photos_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res, secs = timed("ingest", "-i", str(photos_dir), "-o", str(blocker / "out"))
    assert res.returncode == 2 and "not writable" in res.stderr
    assert secs < 20


def test_unreachable_ray_address_fails_fast(tmp_path, photos_dir):
    res, secs = timed("ingest", "-i", str(photos_dir), "-o", str(tmp_path / "out"), "--ray-address", "127.0.0.1:9")
    assert res.returncode == 2 and "no Ray cluster answers" in res.stderr
    assert secs < 20


def test_config_typo_names_key_and_file(tmp_path, photos_dir):
    res = run_cli("ingest", "-c", str(REPO / "pipelines/ingest.yaml"), "-i", str(photos_dir), "-o", str(tmp_path / "o"), "--set", "video.fsp=3")
    assert res.returncode == 2 and "video.fsp" in res.stderr and "ingest.yaml" in res.stderr


def test_ingest_runs_end_to_end_and_prints_a_summary(tmp_path, photos_dir):
    out = tmp_path / "out"
    res = run_cli("ingest", "-c", str(REPO / "pipelines/ingest.yaml"), "-i", str(photos_dir), "-o", str(out), "--json", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["accepted"] == len(list(photos_dir.iterdir())) and summary["rejected"] == 0
    assert (out / "summary.md").read_text().startswith("# weaverdata ingest run: complete")
