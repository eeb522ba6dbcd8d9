"""Typed configs: a typo or a wrong type fails at load time naming the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from weaverdata.config import ConfigError, IngestConfig, load_config, parse_override

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def test_every_shipped_recipe_loads():
    cfg = load_config(IngestConfig, PIPELINES / "ingest.yaml")
    assert cfg.image.max_pixels == 100_000_000


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("image:\n  max_pixel: 5\n")
    with pytest.raises(ConfigError) as exc:
        load_config(IngestConfig, path)
    assert "image.max_pixel" in str(exc.value) and str(path) in str(exc.value)


def test_wrong_type_names_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("input:\n  samples_per_shard: many\n")
    with pytest.raises(ConfigError, match="input.samples_per_shard"):
        load_config(IngestConfig, path)


def test_overrides_reach_any_field_and_are_typed():
    cfg = load_config(IngestConfig, PIPELINES / "ingest.yaml", dict([parse_override("video.fps=2.5"), parse_override("output.path=/x")]))
    assert cfg.video.fps == 2.5 and cfg.output.path == "/x"
    with pytest.raises(ConfigError, match="unknown key 'video.fsp'"):
        load_config(IngestConfig, None, {"video.fsp": 1})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("video.fps")


def test_identity_ignores_paths_and_runtime_but_not_content():
    a = load_config(IngestConfig, None, {"input.path": "/a", "output.path": "/o1", "runtime.task_cpus": 1})
    b = load_config(IngestConfig, None, {"input.path": "/b", "output.path": "/o2"})
    c = load_config(IngestConfig, None, {"image.max_pixels": 10})
    assert a.identity_sha256() == b.identity_sha256() != c.identity_sha256()


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config(IngestConfig, "/nope.yaml")


@pytest.mark.parametrize("model, path, command", [("proxy", "pipelines/proxy-single-image.yaml", "build-proxy"), ("refs", "pipelines/refs-collection.yaml", "build-refs")])
def test_staged_recipes_refuse_a_serving_mode_they_do_not_have(model, path, command):
    """build-refs and build-proxy run their text on the job's engine pool: a config asking for a
    ray.data.llm processor per round fails at load, naming the setting, instead of being ignored."""
    from weaverdata.config import ProxyConfig, RefsConfig

    cls = {"proxy": ProxyConfig, "refs": RefsConfig}[model]
    with pytest.raises(ConfigError, match=rf"{command} runs its text on the job's engines: engine.serving must be 'pool'"):
        load_config(cls, path, {"engine.model": "m", "engine.serving": "ray_data_llm"})
    assert load_config(cls, path, {"engine.model": "m"}).engine.serving == "pool"
