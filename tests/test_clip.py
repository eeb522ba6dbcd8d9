"""open_clip embedder on a tiny random-weight model the project builds: reload, norms, Ray stage."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import skimage_photo_files
from weaverdata.config import ClipConfig
from weaverdata.models.clip import ClipEmbedder, build_tiny_clip, embed_dataset, read_embeddings, write_embeddings


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tinyclip") / "clip", seed=3)


def photos(n=6):
    return [Image.open(f).convert("RGB") for f in skimage_photo_files()[:n]]


def test_saved_and_reloaded_model_gives_identical_embeddings(tiny_clip, tmp_path):
    a = ClipEmbedder(ClipConfig(model=str(tiny_clip)))
    b = ClipEmbedder(ClipConfig(model=f"local-dir:{tiny_clip}"))
    ims = photos()
    np.testing.assert_array_equal(a.embed_images(ims), b.embed_images(ims))
    np.testing.assert_array_equal(a.embed_texts(["a cat", "a rocket"]), b.embed_texts(["a cat", "a rocket"]))
    other = ClipEmbedder(ClipConfig(model=str(build_tiny_clip(tmp_path / "other", seed=4))))
    assert not np.allclose(other.embed_images(ims), a.embed_images(ims)), "another seed must give other weights"
    assert "RANDOM WEIGHTS" in (tiny_clip / "README.md").read_text()


def test_embeddings_are_unit_norm_and_batch_independent(tiny_clip):
    e = ClipEmbedder(ClipConfig(model=str(tiny_clip), batch_size=2))
    ims = photos(5)
    x = e.embed_images(ims)
    t = e.embed_texts(["an astronaut", "coffee", "a cat"])
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    big = ClipEmbedder(ClipConfig(model=str(tiny_clip), batch_size=64)).embed_images(ims)
    np.testing.assert_allclose(x, big, atol=1e-5)


@pytest.mark.parametrize("suffix", ["emb.parquet", "emb.npy"])
def test_embeddings_written_beside_shards_stay_aligned_by_id(tmp_path, suffix):
    ids = [f"id{i}" for i in range(7)]
    emb = np.random.default_rng(0).normal(size=(7, 16)).astype(np.float32)
    write_embeddings(ids, emb, str(tmp_path / suffix))
    back_ids, back = read_embeddings(str(tmp_path / suffix))
    assert back_ids == ids
    np.testing.assert_array_equal(back, emb)


@pytest.mark.ray
def test_ray_data_stage_matches_the_plain_embedder(tiny_clip, ray_local):
    import ray

    files = skimage_photo_files()[:8]
    rows = [{"id": f.stem, "image": f.read_bytes()} for f in files] + [{"id": "broken", "image": b"not an image"}]
    cfg = ClipConfig(model=str(tiny_clip), batch_size=4, cpus_per_replica=0.5)
    out = {r["id"]: r for r in embed_dataset(ray.data.from_items(rows), cfg).take_all()}
    assert set(out) == {r["id"] for r in rows}
    assert out["broken"]["clip_error"] == "not_an_image"
    assert not np.any(out["broken"]["embedding"])
    plain = ClipEmbedder(cfg).embed_images([Image.open(f) for f in files])
    for f, expected in zip(files, plain):
        np.testing.assert_allclose(out[f.stem]["embedding"], expected, atol=1e-5)
