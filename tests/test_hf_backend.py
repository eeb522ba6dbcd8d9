"""The transformers fallback backend on the tiny random VLM and LLM (real photos, batched generate)."""

from __future__ import annotations

import json

from tests.conftest import run_cli
from tests.test_vllm_engine import photo_requests
from weaverdata.config import EngineConfig, SamplingConfig
from weaverdata.engines.captioner import Captioner
from weaverdata.engines.prompts import load_prompt
from weaverdata.engines.requests import CaptionRequest


def test_transformers_backend_sees_every_image(tiny_models):
    cfg = EngineConfig(backend="transformers", model=str(tiny_models["vlm"]), batch_size=3, max_pixels=224 * 224,
                       sampling=SamplingConfig(max_tokens=8, seed=2), retries_on_failed_check=0)
    requests = photo_requests(load_prompt("dense_description"), n=5)
    results = Captioner(cfg).run(requests)
    assert set(results) == {r.id for r in requests}
    assert all(4 <= r.image_tokens <= 64 for r in results.values())  # at most 224x224 px -> at most 16x16 patches -> 64 merged tokens
    assert all(0 < r.completion_tokens <= 8 for r in results.values())


def test_transformers_backend_text_llm(tiny_models):
    cfg = EngineConfig(backend="transformers", model=str(tiny_models["llm"]), batch_size=2, sampling=SamplingConfig(max_tokens=6, seed=0), retries_on_failed_check=0)
    reqs = [CaptionRequest(id=f"t{i}", messages=[{"role": "user", "content": f"Write about topic {i}."}]) for i in range(3)]
    results = Captioner(cfg).run(reqs)
    assert [results[f"t{i}"].image_tokens for i in range(3)] == [None, None, None]  # a text model has no image token
    assert all(r.prompt_tokens > 3 for r in results.values())


def test_models_tiny_command(tmp_path):
    res = run_cli("models", "tiny", "--out", str(tmp_path / "m"), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    paths = json.loads(res.stdout)
    assert set(paths) == {"vlm", "llm", "clip", "scorer_aesthetic", "scorer_watermark"}
    from weaverdata.config import ClipConfig, ScorerConfig
    from weaverdata.models.scorers import load_heads

    heads = load_heads([ScorerConfig(name="aesthetic", path=paths["scorer_aesthetic"], activation="relu"), ScorerConfig(name="watermark", path=paths["scorer_watermark"], output="sigmoid")],
                       ClipConfig(model=paths["clip"]))  # the heads fit the tiny CLIP's width
    assert [len(h.layers) for h in heads] == [3, 1]
    assert "RANDOM WEIGHTS" in res.stderr
    readme = (tmp_path / "m" / "README.md").read_text().lower()
    assert "random" in readme
    assert json.loads((tmp_path / "m" / "vlm" / "weaverdata_tiny.json").read_text())["random_weights"] is True
