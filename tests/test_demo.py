"""`make demo`'s job (python -m weaverdata.demo) runs on a clean folder and reports real results."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow  # ~6 min: every recipe again on the demo data (each has its own end-to-end test in the default run)
def test_demo_runs_and_validates(tmp_path):
    res = subprocess.run([sys.executable, "-m", "weaverdata.demo", "--output", str(tmp_path / "demo")], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    assert "valid (4 units" in res.stdout
    assert "RANDOM weights" in res.stdout
    assert (tmp_path / "demo" / "ingest" / "summary.json").is_file()
    # a console a person can read: progress and summaries, no engine or Ray Data chatter, no error
    console = res.stdout.splitlines() + res.stderr.splitlines()
    assert len(console) < 150, "\n".join(console)
    assert not [line for line in console if "ERROR" in line or "Traceback" in line], "\n".join(console)
    for recipe in ("refs-video", "refs-collection", "proxy-documents", "proxy-single-image"):
        assert f"validate {tmp_path / 'demo' / recipe}: valid" in res.stdout
        summary = json.loads((tmp_path / "demo" / recipe / "summary.json").read_text())
        assert summary["status"] == "complete" and summary["samples"] > 0
        assert summary["details"]["captioning"]["generated"] > 0
        assert (tmp_path / "demo" / recipe / "report" / "index.html").is_file() and f"weaverdata inspect {tmp_path / 'demo' / recipe}" in res.stdout
        assert (tmp_path / "demo" / recipe / "README.md").read_text().startswith("---\n")
        # ... while the engines' and Ray's own logs are kept with the output
        logs = tmp_path / "demo" / recipe / "logs"
        assert any("vllm" in p.read_text(errors="replace").lower() for p in logs.glob("worker-*")), sorted(p.name for p in logs.iterdir())
        assert list((logs / "ray-data").glob("ray-data*.log"))
