"""Neighbour search at corpus scale: faiss matches brute force, pairs are unique, the band
splits pairs from hard negatives and near-copies."""

from __future__ import annotations

import numpy as np
import pytest

from weaverdata.refs.knn import (
    PAIR_DTYPE,
    band_split,
    brute_force_knn,
    build_index,
    concat_pairs,
    dedup_pairs,
    mine_pairs,
    recall_at_k,
    search,
    unique_pairs,
)

faiss = pytest.importorskip("faiss")

K = 10


@pytest.fixture(scope="module")
def corpus():
    """20,000 synthetic 128-d embeddings clustered like real ones (400 subjects, spread so that
    a query's 10th neighbour is at cosine ~0.43, about where CLIP image neighbours sit), 1,000
    held-out queries near corpus items, and their exact top-10 by brute force.

    faiss runs on one thread here: on a shared 2-core machine OpenMP's spinning threads make
    index building several times slower, and the thread count does not change the answers."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    n, d = 20_000, 128
    centres = rng.normal(size=(400, d))
    x = (centres[rng.integers(0, 400, n)] + 1.3 * rng.normal(size=(n, d))).astype(np.float32)
    q = (x[rng.choice(n, 1000, replace=False)] + 0.3 * rng.normal(size=(1000, d))).astype(np.float32)
    exact_scores, exact_ids = brute_force_knn(x, K, q)
    yield x, q, exact_scores, exact_ids
    faiss.omp_set_num_threads(threads)


def test_flat_index_is_exact(corpus):
    x, q, exact_scores, exact_ids = corpus
    scores, ids = search(build_index(x, "flat"), q, K)
    assert recall_at_k(ids, exact_ids) == 1.0
    assert np.allclose(scores, exact_scores, atol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_recall_is_at_least_099(corpus, kind):
    x, q, _, exact_ids = corpus
    _, ids = search(build_index(x, kind), q, K)
    assert recall_at_k(ids, exact_ids) >= 0.99


def test_brute_force_blocks_do_not_change_the_answer():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(523, 24))
    full_s, full_i = brute_force_knn(x, 7)
    tiny_s, tiny_i = brute_force_knn(x, 7, max_block_bytes=4 * 7 * 16)  # blocks of 16 x 16
    assert np.array_equal(full_i, tiny_i) and np.allclose(full_s, tiny_s)
    e = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref = np.argsort(-(e @ e.T), axis=1, kind="stable")[:, :7]
    assert np.array_equal(full_i, ref)
    assert (full_i[:, 0] == np.arange(523)).all()  # each row finds itself first


def test_k_larger_than_corpus_pads_with_missing():
    x = np.eye(3)
    s, i = brute_force_knn(x, 5)
    assert (i[:, 3:] == -1).all() and np.isneginf(s[:, 3:]).all()
    s2, i2 = search(build_index(x, "flat"), x, 5)
    assert (i2[:, 3:] == -1).all() and np.isneginf(s2[:, 3:]).all()


def test_recall_at_k_counts_shared_ids():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    approx = np.array([[3, 2, 9], [4, 5, 6]])
    assert recall_at_k(approx, exact) == pytest.approx(5 / 6)
    assert recall_at_k(approx, exact, k=1) == pytest.approx(1 / 2)


def test_a_pair_found_both_ways_is_kept_once():
    ids = np.array([[0, 1, 2], [1, 0, 2], [2, 0, -1]])
    scores = np.array([[1.0, 0.8, 0.5], [1.0, 0.8, 0.3], [1.0, 0.5, -np.inf]], dtype=np.float32)
    pairs = unique_pairs(ids, scores)
    assert pairs.dtype == PAIR_DTYPE
    assert pairs["i"].tolist() == [0, 0, 1]
    assert pairs["j"].tolist() == [1, 2, 2]
    assert pairs["score"].tolist() == pytest.approx([0.8, 0.5, 0.3])


def test_pairs_from_two_groups_and_two_sources_are_merged_once():
    group_a = dedup_pairs([5, 7], [7, 9], [0.7, 0.6])
    group_b = dedup_pairs([9, 7], [7, 5], [0.6, 0.71])  # same pairs, other order
    merged = concat_pairs(group_a, group_b)
    assert [(int(p["i"]), int(p["j"])) for p in merged] == [(5, 7), (7, 9)]
    assert merged["score"][0] == pytest.approx(0.71)  # the highest score seen
    assert len(concat_pairs()) == 0


def test_mine_pairs_band_negatives_and_near_copies():
    """Subjects of 3 images each plus one exact near-copy pair: same-subject pairs are in the
    band, the near-copy is neither a pair nor a negative, and negatives are below the band."""
    rng = np.random.default_rng(2)
    d = 64
    rows = []
    for _ in range(40):
        c = rng.normal(size=d)
        c /= np.linalg.norm(c)
        rows += [c + rng.normal(size=d) * 0.35 / np.sqrt(d) for _ in range(3)]
    rows.append(rows[0] + rng.normal(size=d) * 1e-4)  # item 120: a near-copy of item 0
    emb = np.array(rows)
    low, high = 0.8, 0.98
    for kind in ("flat", "hnsw", "numpy"):
        in_band, negatives = mine_pairs(emb, 4, low, high, kind=kind)
        band_set = {(int(p["i"]), int(p["j"])) for p in in_band}
        neg_set = {(int(p["i"]), int(p["j"])) for p in negatives}
        assert (0, 120) not in band_set | neg_set
        assert ((in_band["score"] >= low) & (in_band["score"] <= high)).all()
        assert (negatives["score"] < low).all() and len(negatives) > 0
        same_subject = {(3 * s + a, 3 * s + b) for s in range(40) for a, b in ((0, 1), (0, 2), (1, 2))}
        same_subject |= {(1, 120), (2, 120)}
        assert band_set == same_subject
        assert not band_set & neg_set
        assert len(band_set) == len(in_band)  # unique
    _, harder = mine_pairs(emb, 4, low, high, hard_negative_min=0.1)
    assert (harder["score"] >= 0.1).all()


def test_band_split_is_inclusive():
    pairs = dedup_pairs([0, 0, 0], [1, 2, 3], [0.5, 0.2, 0.9])
    in_band, below, above = band_split(pairs, 0.5, 0.5)
    assert in_band["j"].tolist() == [1] and below["j"].tolist() == [2] and above["j"].tolist() == [3]
