"""The similarity band keeps same-subject references and never a near-copy; quality filters
drop small, oddly shaped, blurry and badly exposed images, each with its reason."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from weaverdata.engines.checks import Verdict
from weaverdata.media.image import hamming, phash
from weaverdata.refs.band import (
    Thresholds,
    band_verdict,
    quantile_thresholds,
    reference_verdicts,
    sample_scores,
)
from weaverdata.refs.band import Verdict as BandVerdict
from weaverdata.refs.grouping import choose_target
from weaverdata.refs.quality import exposure_stats, laplacian_variance, luminance, quality_verdict


def _photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)())


def _gray(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("L"), dtype=np.float64)


# --------------------------------------------------------------------------------------------
# band


def test_band_reuses_the_project_verdict():
    assert BandVerdict is Verdict


def test_band_reasons_and_inclusive_edges():
    assert band_verdict(0.5, 30, 0.5, 0.9) == Verdict.keep()
    assert band_verdict(0.9, 30, 0.5, 0.9).ok
    assert band_verdict(0.49, 30, 0.5, 0.9).reason == "too_dissimilar"
    assert band_verdict(0.91, 30, 0.5, 0.9).reason == "near_duplicate"
    assert band_verdict(0.7, 5, 0.5, 0.9).reason == "near_duplicate_phash"  # MMC4: <= 5
    assert band_verdict(0.7, 6, 0.5, 0.9).ok
    assert band_verdict(0.95, 0, 0.5, 0.9).reason == "near_duplicate"  # cosine checked first
    assert band_verdict(0.7, None, 0.5, 0.9).ok  # no hash: cosine only
    assert band_verdict(float("nan"), 30, 0.5, 0.9).reason == "too_dissimilar"
    with pytest.raises(ValueError):
        band_verdict(0.7, 30, 0.9, 0.5)


def test_a_near_copy_is_never_kept_property():
    rnd = random.Random(0)
    for _ in range(5000):
        low = rnd.uniform(-0.2, 0.9)
        high = rnd.uniform(low, 1.0)
        phash_min = rnd.randint(0, 10)
        cos = rnd.choice([rnd.uniform(-1, 1), low, high, rnd.uniform(high, 1.0)])
        dist = rnd.randint(0, 64)
        v = band_verdict(cos, dist, low, high, phash_min)
        if cos > high or dist <= phash_min:  # a near-copy: never kept
            assert not v.ok
        if cos < low:
            assert v.reason == "too_dissimilar"
        elif cos > high:
            assert v.reason == "near_duplicate"
        elif dist <= phash_min:
            assert v.reason == "near_duplicate_phash"
        else:
            assert v.ok


def test_group_references_drop_real_near_copies():
    """A group mined from a collection: the target's JPEG re-encode (pHash distance 0) and an
    embedding near-copy are dropped; a crop of the same photo (another framing) stays."""
    target_im = _photo("astronaut")
    buf = io.BytesIO()
    target_im.save(buf, "JPEG", quality=60)
    reencoded = Image.open(io.BytesIO(buf.getvalue()))
    crop = target_im.crop((40, 40, 472, 472))
    h = phash(target_im)
    dists = {"reencoded": hamming(h, phash(reencoded)), "crop": hamming(h, phash(crop)), "copy": 40}
    assert dists["reencoded"] <= 5 < dists["crop"]

    # embeddings: 0 target (the odd one out), 1 crop, 2 re-encode, 3 embedding copy of 1
    rng = np.random.default_rng(0)
    c = rng.normal(size=64)
    c /= np.linalg.norm(c)
    emb = np.array(
        [c + rng.normal(size=64) * 0.9 / 8, c + rng.normal(size=64) * 0.3 / 8, c + rng.normal(size=64) * 0.3 / 8]
    )
    emb = np.vstack([emb, emb[1] + rng.normal(size=64) * 1e-3])
    target, refs = choose_target(range(4), emb)
    assert target == 0 and refs == [1, 2, 3]
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos = [float(e[target] @ e[r]) for r in refs]
    cos[2] = 0.999  # the embedding copy, as a CLIP model sees a copy
    thresholds = Thresholds.absolute(0.3, 0.98)
    verdicts = reference_verdicts(cos, [dists["crop"], dists["reencoded"], dists["copy"]], thresholds)
    assert [v.reason for v in verdicts] == ["", "near_duplicate_phash", "near_duplicate"]
    assert [r for r, v in zip(refs, verdicts, strict=True) if v.ok] == [1]


def test_quantile_thresholds_known_values():
    scores = np.arange(101, dtype=float) / 100.0  # 0.00 .. 1.00
    assert quantile_thresholds(scores, 0.1, 0.9) == pytest.approx((0.1, 0.9))
    assert quantile_thresholds([0.2, np.nan, 0.4], 0.0, 1.0) == pytest.approx((0.2, 0.4))
    for bad in [(0.9, 0.1), (-0.1, 0.5), (0.5, 1.1)]:
        with pytest.raises(ValueError):
            quantile_thresholds(scores, *bad)
    with pytest.raises(ValueError):
        quantile_thresholds([], 0.1, 0.9)


def test_thresholds_resolve_from_the_runs_own_scores():
    rng = np.random.default_rng(1)
    scores = rng.uniform(0.1, 0.5, size=300_000)
    sample = sample_scores(scores, max_n=50_000, seed=0)
    assert len(sample) == 50_000 and np.array_equal(sample, sample_scores(scores, max_n=50_000, seed=0))
    t = Thresholds.quantile(0.25, 0.99)
    assert not t.resolved
    with pytest.raises(ValueError):
        t.verdict(0.3)
    with pytest.raises(ValueError):
        t.resolve()
    r = t.resolve(sample)
    assert r.resolved and r.quantiles == (0.25, 0.99) and r.sample_size == 50_000
    assert r.low == pytest.approx(0.2, abs=0.005) and r.high == pytest.approx(0.496, abs=0.005)
    assert r.verdict(0.15).reason == "too_dissimilar"
    assert r.verdict(0.499).reason == "near_duplicate"
    assert r.verdict(0.3, 3).reason == "near_duplicate_phash"
    assert r.verdict(0.3, 20).ok
    a = Thresholds.absolute(0.2, 0.9)
    assert a.resolve(sample) is a
    with pytest.raises(ValueError):
        Thresholds.quantile(0.2, 1.5)
    with pytest.raises(ValueError):
        Thresholds(0.9, 0.2)


# --------------------------------------------------------------------------------------------
# quality


def test_size_and_aspect_reasons():
    assert quality_verdict(150, 150).ok  # MMC4 defaults: 150 px, aspect 0.5 .. 2
    assert quality_verdict(149, 300).reason == "too_small"
    assert quality_verdict(0, 300).reason == "too_small"
    assert quality_verdict(300, 150).ok and quality_verdict(150, 300).ok
    assert quality_verdict(301, 150).reason == "bad_aspect"
    assert quality_verdict(150, 301).reason == "bad_aspect"
    assert quality_verdict(100, 1000, min_side=None, aspect_range=None).ok


def test_blur_is_caught_on_a_real_photo():
    for name in ("astronaut", "coffee", "camera"):
        im = _photo(name)
        sharp, blurred = _gray(im), _gray(im.filter(ImageFilter.GaussianBlur(3)))
        assert laplacian_variance(sharp) > 300 > 20 > laplacian_variance(blurred)
        assert quality_verdict(*im.size, gray=sharp, blur_min=100).ok
        v = quality_verdict(*im.size, gray=blurred, blur_min=100)
        assert v.reason == "blurry" and "Laplacian" in v.detail


def test_exposure_is_caught_on_a_real_photo():
    im = _photo("coffee")
    g = luminance(np.asarray(im))
    bright, dark = np.clip(g * 0.4 + 190, 0, 255), g * 0.15
    rng = (40.0, 215.0)
    assert quality_verdict(*im.size, gray=g, exposure_range=rng, max_clipped=0.1).ok
    assert quality_verdict(*im.size, gray=bright, exposure_range=rng).reason == "overexposed"
    assert quality_verdict(*im.size, gray=dark, exposure_range=rng).reason == "underexposed"
    # clipped fraction alone: a fifth of the pixels blown out / crushed
    assert exposure_stats(bright)[2] > 0.2
    assert quality_verdict(*im.size, gray=bright, max_clipped=0.1).reason == "overexposed"
    crushed = g.copy()
    crushed[: g.shape[0] // 4] = 0
    assert quality_verdict(*im.size, gray=crushed, max_clipped=0.1).reason == "underexposed"


def test_first_failing_reason_wins():
    gray = np.zeros((100, 100))  # small, flat (blurry) and black
    assert quality_verdict(100, 100, gray=gray, blur_min=10, exposure_range=(40, 215)).reason == "too_small"
    assert quality_verdict(100, 100, min_side=50, gray=gray, blur_min=10, exposure_range=(40, 215)).reason == "blurry"
    assert quality_verdict(100, 100, min_side=50, gray=gray, exposure_range=(40, 215)).reason == "underexposed"
