"""Candidates to sample plans (weaverdata.refs.samples): pure, on constructed embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from weaverdata.refs.band import Thresholds
from weaverdata.refs.samples import (
    NO_GROUP,
    NO_PAIR,
    ImageMeta,
    clique_candidates,
    drop_samples,
    phash_distance,
    plan_samples,
    sample_id,
    video_candidates,
)
from weaverdata.refs.vectors import l2_normalize

FAR_HASHES = ["0000000000000000", "ffffffffffffffff", "00000000ffffffff", "ffffffff00000000", "0f0f0f0f0f0f0f0f", "f0f0f0f0f0f0f0f0"]


def planted(n_groups: int, size: int, dim: int = 32, spread: float = 0.02, seed: int = 0) -> tuple[np.ndarray, list[list[int]]]:
    rng = np.random.default_rng(seed)
    centres = l2_normalize(rng.normal(size=(n_groups, dim)))
    emb, groups = [], []
    for g in range(n_groups):
        groups.append(list(range(len(emb), len(emb) + size)))
        emb += [centres[g] + spread * rng.normal(size=dim) for _ in range(size)]
    return l2_normalize(np.array(emb)), groups


def metas_for(emb, source="collection", scope=""):
    return [ImageMeta(f"img{i:03d}", source, scope, FAR_HASHES[i % len(FAR_HASHES)]) for i in range(len(emb))]


def test_phash_distance():
    assert phash_distance("0000000000000000", "ffffffffffffffff") == 64
    assert phash_distance("00000000000000ff", "0000000000000000") == 8


def test_planted_groups_become_samples_with_the_least_similar_member_as_target():
    emb, groups = planted(4, 3)
    emb = np.vstack([emb, l2_normalize(np.random.default_rng(9).normal(size=(2, 32)))])  # two loners
    metas = metas_for(emb)
    cands = clique_candidates(emb, list(range(len(emb))), edge_threshold=0.9, min_size=2, max_size=6, exact_max_images=1000, knn_k=8, knn_index="flat", group_prefix="")
    assert sorted(sorted([t, *r]) for r, t, _ in cands) == groups
    plan = plan_samples(metas, emb, cands, Thresholds.absolute(0.5, 0.999))
    assert len(plan.samples) == 4 and all(s.task == "multi_reference" and len(s.refs) == 2 for s in plan.samples)
    for s in plan.samples:
        members = [s.target, *s.refs]
        sims = emb[members] @ emb[members].T
        mean_to_others = (sims.sum(1) - 1) / 2
        assert members[int(np.argmin(mean_to_others))] == s.target
        assert all(0.5 <= c <= 0.999 for c in s.cosines)
    assert {metas[i].id: r for i, (r, _) in plan.unused_reason.items()} == {"img012": NO_GROUP, "img013": NO_GROUP}


def test_the_same_groups_from_the_approximate_graph():
    emb, groups = planted(6, 4, seed=3)
    kw = dict(edge_threshold=0.9, min_size=2, max_size=6, knn_k=8, knn_index="flat", group_prefix="")
    exact = clique_candidates(emb, list(range(len(emb))), exact_max_images=10_000, **kw)
    approx = clique_candidates(emb, list(range(len(emb))), exact_max_images=2, **kw)
    assert exact == approx and sorted(sorted([t, *r]) for r, t, _ in exact) == groups


def test_a_near_copy_is_never_kept_as_a_reference():
    emb, _ = planted(1, 3, spread=0.05)
    copy = emb[0] + 1e-4
    emb = l2_normalize(np.vstack([emb, copy]))
    metas = metas_for(emb)
    metas[3] = ImageMeta("img003", "collection", "", metas[0].phash)  # same pixels hash too
    cands = [([1, 2, 3], 0, "g")]
    plan = plan_samples(metas, emb, cands, Thresholds.absolute(0.5, 0.99))
    (s,) = plan.samples
    assert 3 not in s.refs and s.refs == [1, 2]
    assert plan.unused_reason[3][0] == "near_duplicate"
    # a copy the embedding misses is caught by the perceptual hash
    plan = plan_samples(metas, emb, cands, Thresholds.absolute(0.5, 1.0))
    assert 3 not in plan.samples[0].refs and plan.unused_reason[3][0] == "near_duplicate_phash"


def test_a_candidate_without_a_reference_in_band_is_dropped_with_the_reason():
    emb = l2_normalize(np.array([[1.0, 0.0], [0.0, 1.0]]))
    metas = metas_for(emb)
    plan = plan_samples(metas, emb, [([1], 0, "g")], Thresholds.absolute(0.5, 0.99))
    assert plan.samples == [] and plan.dropped == {"too_dissimilar": 1}
    assert plan.unused_reason[0][0] == plan.unused_reason[1][0] == "too_dissimilar"


def test_quantile_band_is_resolved_from_the_candidates_and_recorded():
    emb, groups = planted(10, 3, spread=0.2, seed=5)
    metas = metas_for(emb)
    cands = [([g[1], g[2]], g[0], f"g{k}") for k, g in enumerate(groups)]
    plan = plan_samples(metas, emb, cands, Thresholds.quantile(0.1, 0.9))
    t = plan.thresholds
    assert t.resolved and t.quantiles == (0.1, 0.9) and t.sample_size == 20
    kept = [c for s in plan.samples for c in s.cosines]
    assert kept and all(t.low - 1e-6 <= c <= t.high + 1e-6 for c in kept)
    assert sum(plan.dropped.values()) + len(plan.samples) == len(cands)


def test_text_to_image_takes_the_unmatched_images():
    emb, _ = planted(1, 2)
    emb = np.vstack([emb, l2_normalize(np.array([np.r_[1.0, np.zeros(31)]]))])
    metas = metas_for(emb)
    plan = plan_samples(metas, emb, [([1], 0, "g")], Thresholds.absolute(0.5, 0.999), text_to_image="unmatched")
    tasks = sorted((s.task, s.target) for s in plan.samples)
    assert tasks == [("single_reference", 0), ("text_to_image", 2)] and not plan.unused_reason
    plan_all = plan_samples(metas, emb, [([1], 0, "g")], Thresholds.absolute(0.5, 0.999), text_to_image="all")
    assert sum(s.task == "text_to_image" for s in plan_all.samples) == 3
    assert len({s.id for s in plan_all.samples}) == len(plan_all.samples)


def test_video_pairs_stay_inside_their_shot():
    # two shots of 10 frames at 2 fps; a reference 1 s (2 frames) before its target
    metas = [ImageMeta(f"f{i:02d}", "video", "v.mp4", FAR_HASHES[i % 6], time_s=i * 0.5, shot=0 if i < 10 else 1) for i in range(20)]
    cands = video_candidates(metas, interval_s=1.0, tolerance_s=0.1, max_refs=1, stride=1)
    assert cands
    for refs, target, group in cands:
        assert {metas[i].shot for i in (*refs, target)} == {metas[target].shot}
        assert metas[target].time_s - metas[refs[0]].time_s == pytest.approx(1.0)
        assert group == f"v.mp4#shot={metas[target].shot}"
    targets = sorted(t for _, t, _ in cands)
    assert 10 not in targets and 11 not in targets  # the first two frames of shot 1 have no reference in it
    emb = l2_normalize(np.ones((20, 4)) + 0.01 * np.random.default_rng(0).normal(size=(20, 4)))
    plan = plan_samples(metas, emb, cands, Thresholds.absolute(0.0, 1.0))
    assert all(s.task == "video_dynamics" and len(s.times_s) == 2 for s in plan.samples)


def test_frames_in_no_pair_are_reported_as_no_pair():
    metas = [ImageMeta(f"f{i}", "video", "v.mp4", FAR_HASHES[i], time_s=i * 0.5, shot=i) for i in range(3)]  # three one-frame shots
    plan = plan_samples(metas, np.eye(3), video_candidates(metas, interval_s=0.5, tolerance_s=0.1, max_refs=1, stride=1), Thresholds.absolute(0, 1))
    assert plan.samples == [] and all(r == NO_PAIR for r, _ in plan.unused_reason.values())


def test_dropping_a_sample_for_its_text_frees_only_images_used_nowhere_else():
    emb = l2_normalize(np.array([[1.0, 0.1], [1.0, 0.2], [1.0, 0.3]]))
    metas = metas_for(emb)
    plan = plan_samples(metas, emb, [([1], 0, "a"), ([1], 2, "b")], Thresholds.absolute(0.5, 1.0))
    assert len(plan.samples) == 2
    first = plan.samples[0]
    after = drop_samples(plan, {first.id: ("caption_truncated", "description: cut")}, metas)
    assert [s.id for s in after.samples] == [plan.samples[1].id]
    assert after.dropped == {"caption_truncated": 1}
    assert set(after.unused_reason) == {0}  # image 1 still serves the other sample
    assert after.unused_reason[0][0] == "caption_truncated"


def test_sample_ids_are_stable_and_never_image_ids():
    a = sample_id("video", "abc", ["def"])
    assert a == sample_id("video", "abc", ["def"]) != sample_id("video", "abc", ["xyz"])
    assert a.startswith("s") and len(a) == 25
