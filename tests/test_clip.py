"""open_clip embedder on a tiny random-weight model the project builds: reload, norms, Ray stage."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import skimage_photo_files
from weaverdata.config import ClipConfig
from weaverdata.media.image import decode_image
from weaverdata.models.clip import ClipEmbedder, ClipImageStage, build_tiny_clip, embed_dataset, forward_threads, node_cores, read_embeddings, write_embeddings


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
    # the stage decodes JPEGs at a reduced DCT scale still >= the model's 64 px (PNGs in full)
    plain = ClipEmbedder(cfg).embed_images([decode_image(f.read_bytes(), enough_side=64).rgb for f in files])
    for f, expected in zip(files, plain):
        np.testing.assert_allclose(out[f.stem]["embedding"], expected, atol=1e-5)


def test_reduced_jpeg_decode_gives_nearly_the_full_decode_embedding(tiny_clip):
    """The CLIP stage decodes JPEGs at the smallest DCT scale still >= the model's input side;
    on the real JPEGs scikit-image ships the embeddings stay within cosine 0.99 of a full decode."""
    jpegs = [f.read_bytes() for f in skimage_photo_files() if f.suffix == ".jpg"]
    assert len(jpegs) >= 3
    emb = ClipEmbedder(ClipConfig(model=str(tiny_clip)))
    reduced = [decode_image(b, enough_side=64).rgb for b in jpegs]
    full = [decode_image(b).rgb for b in jpegs]
    assert all(min(r.size) >= 64 and r.width < f.width for r, f in zip(reduced, full))
    cos = (emb.embed_images(reduced) * emb.embed_images(full)).sum(axis=1)
    assert cos.min() > 0.99, cos


def test_forward_actor_uses_the_node_cores_not_only_its_reservation(tiny_clip):
    import torch

    assert forward_threads(ClipConfig(cpus_per_replica=1), 8) == 8
    assert forward_threads(ClipConfig(replicas=4), 8) == 2
    assert forward_threads(ClipConfig(replicas=16, cpus_per_replica=2), 8) == 2
    assert forward_threads(ClipConfig(threads=3), 8) == 3
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # what Ray's OMP_NUM_THREADS=1 gives an actor reserving 1 CPU
        ClipImageStage(ClipConfig(model=str(tiny_clip), device="cpu"))
        assert torch.get_num_threads() == node_cores()
    finally:
        torch.set_num_threads(before)
