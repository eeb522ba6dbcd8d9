"""Corpus-scale mining in parallel Ray tasks gives exactly the single-process answer: the same
unique pairs, in the band, without near-copies, and hard negatives below the band."""

from __future__ import annotations

import numpy as np
import pytest

from weaverdata.refs.knn import PAIR_DTYPE, build_index, mine_pairs, search
from weaverdata.refs.mining import (
    MIN_QUERY_BLOCK,
    ivf_row_order,
    merge_block_pairs,
    min_query_block,
    mine_corpus,
    mine_stored,
    plan_blocks,
)

faiss = pytest.importorskip("faiss")
pytestmark = pytest.mark.ray

K = 10
LOW, HIGH = 0.6, 0.95
N, D = 6_000, 128
BLOCK = 1_000  # 6 blocks, so most pairs are found from two blocks; the least at d=128 (min_query_block)


@pytest.fixture(scope="module")
def corpus():
    """6,000 clustered 128-d embeddings: 24 topics, 750 subjects of Poisson(8) members (same
    subject: cosine ~0.75, same topic: ~0.45), and 60 planted near-copies (cosine > 0.999) of
    random items, each listed as (original, copy)."""
    rng = np.random.default_rng(0)
    n, d, n_topics, n_subjects, n_copies = N, D, 24, 750, 60
    topics = rng.normal(size=(n_topics, d))
    subjects = topics[rng.integers(0, n_topics, n_subjects)] + 0.8 * rng.normal(size=(n_subjects, d))
    x = subjects[rng.integers(0, n_subjects, n)] + 0.7 * rng.normal(size=(n, d))
    copies = rng.choice(n, size=n_copies, replace=False)
    originals = rng.choice(np.setdiff1d(np.arange(n), copies), size=n_copies, replace=False)
    x[copies] = x[originals] + 1e-3 * rng.normal(size=(n_copies, d))
    planted = np.sort(np.stack([originals, copies], axis=1), axis=1)
    return x.astype(np.float32), planted


def _pair_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(pairs["i"].tolist(), pairs["j"].tolist(), strict=True))


def _assert_same(a: np.ndarray, b: np.ndarray, edges: tuple[float, ...] = (0.6, 0.95, 0.3)) -> None:
    """The same pairs with the same scores, up to float32 rounding: a BLAS kernel may round a dot
    product differently for a block of queries than for the whole corpus (bit for bit on the
    Intel machines this was first run on, not on AMD EPYC). Only a pair within rounding of a
    band edge may be in one array and not the other."""
    assert a.dtype == b.dtype == PAIR_DTYPE
    eps = 1e-5
    ka = {(int(i), int(j)): float(s) for i, j, s in a.tolist()}
    kb = {(int(i), int(j)): float(s) for i, j, s in b.tolist()}
    for key in ka.keys() ^ kb.keys():
        score = ka.get(key, kb.get(key))
        assert min(abs(score - t) for t in edges) < eps, (key, score)  # a band or negative edge
    common = sorted(ka.keys() & kb.keys())
    assert len(common) >= len(ka) - 2 and len(common) > 0
    np.testing.assert_allclose([ka[k] for k in common], [kb[k] for k in common], rtol=0, atol=eps)
    assert bool(np.all(a["i"] < a["j"]))


@pytest.mark.parametrize("kind", ["flat", "ivf", "numpy"])
def test_parallel_mining_equals_single_process(ray_local, corpus, kind):
    x, _ = corpus
    stats: dict = {}
    band, neg = mine_corpus(x, K, LOW, HIGH, kind=kind, query_block=BLOCK, parallelism=2, stats=stats)
    ref_band, ref_neg = mine_pairs(x, K, LOW, HIGH, kind=kind)
    _assert_same(band, ref_band)
    _assert_same(neg, ref_neg)
    assert stats["blocks"] == 6 and stats["query_block"] == BLOCK
    # the merge had work to do: pairs found from both ends in two blocks were kept once
    assert stats["block_pairs"] > len(band) + len(neg)
    assert len(band) > 1000 and len(neg) > 100


def test_hnsw_with_the_same_index_equals_single_process(ray_local, corpus):
    """An HNSW graph built on several threads depends on their timing; the same graph gives
    the same pairs."""
    x, _ = corpus
    index = build_index(x, "hnsw")
    band, neg = mine_corpus(x, K, LOW, HIGH, index=index, query_block=BLOCK, parallelism=2)
    ref_band, ref_neg = mine_pairs(x, K, LOW, HIGH, index=index)
    _assert_same(band, ref_band)
    _assert_same(neg, ref_neg)


def test_pairs_are_unique_and_ordered(ray_local, corpus):
    x, _ = corpus
    band, neg = mine_corpus(x, K, LOW, HIGH, kind="ivf", query_block=BLOCK, parallelism=2, order_by_cell=False)
    for pairs in (band, neg):
        assert (pairs["i"] < pairs["j"]).all()
        assert len(_pair_set(pairs)) == len(pairs)
        key = pairs["i"] * len(x) + pairs["j"]
        assert (np.diff(key) > 0).all()  # sorted by (i, j)
    assert not _pair_set(band) & _pair_set(neg)


def test_near_copies_are_neither_pairs_nor_negatives(ray_local, corpus):
    x, planted = corpus
    # the copies are found: each is its original's nearest other item, above the band
    scores, ids = search(build_index(x, "flat"), x[planted[:, 0]], 2)
    assert (ids[:, 1] == planted[:, 1]).all() and (scores[:, 1] > HIGH).all()
    band, neg = mine_corpus(x, K, LOW, HIGH, kind="ivf", query_block=BLOCK, parallelism=2)
    copies = set(map(tuple, planted.tolist()))
    assert not copies & _pair_set(band)
    assert not copies & _pair_set(neg)
    assert (band["score"] >= LOW).all() and (band["score"] <= HIGH).all()


def test_hard_negatives_are_below_the_band(ray_local, corpus):
    x, _ = corpus
    _, neg = mine_corpus(x, K, LOW, HIGH, kind="ivf", query_block=BLOCK, parallelism=2)
    assert len(neg) > 100 and (neg["score"] < LOW).all()
    _, harder = mine_corpus(x, K, LOW, HIGH, kind="ivf", query_block=BLOCK, parallelism=2, hard_negative_min=0.45)
    assert 0 < len(harder) < len(neg)
    assert ((harder["score"] >= 0.45) & (harder["score"] < LOW)).all()
    assert _pair_set(harder) <= _pair_set(neg)


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_mine_stored_reads_ids_and_embeddings(ray_local, corpus, tmp_path, suffix):
    from weaverdata.models.clip import write_embeddings

    x, _ = corpus
    ids = [f"img{r:05d}" for r in range(len(x))]
    url = str(tmp_path / f"emb{suffix}")
    write_embeddings(ids, x, url)
    got_ids, band, neg = mine_stored(url, K, LOW, HIGH, kind="flat", query_block=BLOCK, parallelism=2)
    assert got_ids == ids
    ref_band, ref_neg = mine_pairs(x, K, LOW, HIGH, kind="flat")
    _assert_same(band, ref_band)
    _assert_same(neg, ref_neg)


def test_blocks_cover_every_row_once(corpus):
    x, _ = corpus
    order = ivf_row_order(build_index(x, "ivf"))
    assert np.array_equal(np.sort(order), np.arange(len(x)))
    assert ivf_row_order(build_index(x[:100], "flat")) is None
    blocks = plan_blocks(len(x), BLOCK, order)
    assert np.array_equal(np.concatenate(blocks), order)
    sizes = [len(b) for b in blocks]
    assert len(blocks) == 6 and max(sizes) - min(sizes) <= 1 and min(sizes) >= BLOCK
    assert len(plan_blocks(len(x), 1_100)) == 5  # never smaller than asked
    with pytest.raises(ValueError):
        plan_blocks(len(x), 0)


def test_blocks_are_large_enough_for_faiss_blas():
    """faiss scores a batch of queries with BLAS from ``distance_compute_blas_threshold``
    (queries x d) and with its own loop below; the two differ in the last bit, so a block must
    stay on the side the whole search is on."""
    threshold = faiss.cvar.distance_compute_blas_threshold
    assert min_query_block(N, D) * D >= threshold
    assert min_query_block(N, D) == BLOCK
    assert min_query_block(10, D) == MIN_QUERY_BLOCK  # the whole search is below: any block is
    assert min_query_block(N, D, uses_faiss=False) == MIN_QUERY_BLOCK


def test_too_small_blocks_are_raised(ray_local, corpus):
    x, _ = corpus
    stats: dict = {}
    band, _ = mine_corpus(x, K, LOW, HIGH, kind="flat", query_block=300, parallelism=2, stats=stats)
    assert stats["query_block"] == BLOCK and stats["blocks"] == 6
    _assert_same(band, mine_pairs(x, K, LOW, HIGH, kind="flat")[0])


def test_merge_keeps_a_pair_found_from_both_blocks_once():
    block_a = np.array([(3, 8, 0.70), (3, 9, 0.40)], dtype=PAIR_DTYPE)
    block_b = np.array([(3, 8, 0.71), (8, 9, 0.99)], dtype=PAIR_DTYPE)  # 8 -> 3 seen from the other end
    band, neg = merge_block_pairs([block_a, block_b], 0.5, 0.95)
    assert band.tolist() == [(3, 8, pytest.approx(0.71))]
    assert neg.tolist() == [(3, 9, pytest.approx(0.40))]


def test_tiny_corpora_give_no_pairs(ray_local):
    band, neg = mine_corpus(np.ones((1, 8)), K, LOW, HIGH, kind="flat")
    assert len(band) == len(neg) == 0
