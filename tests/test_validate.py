"""`weaverdata validate` passes a good output and names the problem in a damaged one."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import run_cli
from weaverdata.config import IngestConfig, load_config
from weaverdata.io.validate import validate_output
from weaverdata.job import run_job
from weaverdata.recipes import ingest

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def good_output(tmp_path_factory, photos_dir, ray_local):
    out = tmp_path_factory.mktemp("valid") / "out"
    cfg = load_config(IngestConfig, None, {"input.path": str(photos_dir), "output.path": str(out), "input.samples_per_shard": 6, "runtime.progress": False})
    run_job("ingest", cfg, ingest.process_unit)
    assert validate_output(str(out)).ok
    return out


@pytest.fixture
def damaged(good_output, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(good_output, copy)
    return copy


def first_tar(out):
    return sorted(out.glob("data/*/*.tar"))[0]


def test_deleted_shard_is_named(damaged):
    tar = first_tar(damaged)
    tar.unlink()
    report = validate_output(str(damaged))
    assert not report.ok and any(tar.name in e and "missing" in e for e in report.errors), report.errors


def test_truncated_tar_is_named(damaged):
    tar = first_tar(damaged)
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    report = validate_output(str(damaged))
    assert not report.ok and any(tar.name in e for e in report.errors), report.errors


def test_deleted_commit_marker_is_an_uncommitted_unit(damaged):
    stats = sorted(damaged.glob("stats/*.json"))[0]
    stats.unlink()
    report = validate_output(str(damaged))
    assert any("not committed" in e for e in report.errors), report.errors


def test_summary_whose_counts_do_not_add_up(damaged):
    summary = json.loads((damaged / "summary.json").read_text())
    summary["accepted"] += 1
    (damaged / "summary.json").write_text(json.dumps(summary))
    report = validate_output(str(damaged))
    assert any("accepted" in e for e in report.errors), report.errors


def test_rejects_rows_missing(damaged):
    stats_path = sorted(damaged.glob("stats/*.json"))[0]
    stats = json.loads(stats_path.read_text())
    stats["rejected"] += 1
    stats["inputs"] += 1
    stats_path.write_text(json.dumps(stats))
    report = validate_output(str(damaged))
    assert any("rows, its stats say" in e for e in report.errors), report.errors


def test_cli_exit_codes(good_output, damaged):
    ok = run_cli("validate", str(good_output))
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout
    first_tar(damaged).unlink()
    bad = run_cli("validate", str(damaged))
    assert bad.returncode == 1
    assert "missing" in bad.stderr
