"""Grouping by components (weaverdata.refs.components, weaverdata.refs.mining.group_corpus): the
union-find gives the graph's components, batches hold whole components, and the cliques found
batch by batch (pure, then as Ray tasks) are exactly those of the single-process grouping, on
constructed embeddings: the exact all-pairs graph, the same graph from nearest neighbours, and
the component-split path all give the same groups, targets and group numbers."""

from __future__ import annotations

import functools
import random

import numpy as np
import pytest

from weaverdata.refs import grouping
from weaverdata.refs.components import (
    Groups,
    batch_groups,
    component_batches,
    component_labels,
    groups_of_edges,
    new_forest,
    order_groups,
    split_pairs,
    union_edges,
)
from weaverdata.refs.knn import PAIR_DTYPE, brute_force_knn, dedup_pairs, unique_pairs
from weaverdata.refs.samples import clique_candidates
from weaverdata.refs.vectors import l2_normalize

THRESHOLD = 0.9


def random_edges(rnd: random.Random, n: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if rnd.random() < p]
    rnd.shuffle(pairs)
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def test_union_find_gives_the_connected_components():
    rnd = random.Random(0)
    for _ in range(200):
        n = rnd.randint(0, 40)
        i, j = random_edges(rnd, n, rnd.uniform(0.0, 0.15))
        adj = grouping.adjacency_from_pairs(n, np.stack([i, j], axis=1))
        want = np.empty(n, dtype=np.int64)
        for comp in grouping.connected_components(adj):
            want[comp] = comp[0]
        assert component_labels(n, i, j).tolist() == want.tolist()
        # fed in blocks, in any order, edges repeated and reversed: the same labels
        parent = new_forest(n)
        for block in np.array_split(np.arange(len(i)), rnd.randint(1, 5)):
            union_edges(parent, j[block], i[block])
            union_edges(parent, i[block[::2]], j[block[::2]])
        assert parent.tolist() == want.tolist()


def test_union_find_refuses_bad_input():
    with pytest.raises(ValueError, match="outside"):
        component_labels(3, [0], [3])
    with pytest.raises(ValueError, match="int64"):
        union_edges(np.arange(3, dtype=np.int32), [0], [1])


def test_batches_hold_whole_components_in_order():
    rnd = random.Random(1)
    for _ in range(100):
        n = rnd.randint(1, 80)
        labels = component_labels(n, *random_edges(rnd, n, rnd.uniform(0.0, 0.08)))
        min_size, batch_nodes = rnd.randint(1, 3), rnd.randint(1, 20)
        batch_of = component_batches(labels, min_size, batch_nodes)
        sizes = np.bincount(labels, minlength=n)
        for root in np.unique(labels):
            members = labels == root
            assert len(set(batch_of[members].tolist())) == 1  # a component is never cut
            assert (batch_of[members][0] == -1) == (sizes[root] < min_size)
        used = batch_of[batch_of >= 0]
        if len(used):
            assert sorted(set(used.tolist())) == list(range(int(used.max()) + 1))
            for b in range(int(used.max()) + 1):
                in_b = np.unique(labels[batch_of == b])
                assert len(in_b) == 1 or sizes[in_b].sum() <= batch_nodes  # only a lone component may be larger
            first = [int(labels[batch_of == b].min()) for b in range(int(used.max()) + 1)]
            assert first == sorted(first)  # in order of lowest node


def test_split_pairs_keeps_each_batch_edge_once_and_drops_the_rest():
    batch_of = np.array([0, 0, 1, 1, -1, 2])
    pairs = np.array([(0, 1, 0.9), (2, 3, 0.8), (1, 2, 0.7), (3, 4, 0.6), (5, 5, 1.0), (0, 1, 0.95)], dtype=PAIR_DTYPE)
    parts = split_pairs(pairs, batch_of, 3)
    assert [p[["i", "j"]].tolist() for p in parts] == [[(0, 1), (0, 1)], [(2, 3)], [(5, 5)]]


def test_groups_arrays_round_trip_and_order():
    g = Groups.of([(3, [1, 2]), (0, [7]), (9, [4, 5])])
    assert g.pairs() == [(3, [1, 2]), (0, [7]), (9, [4, 5])]
    assert order_groups(g).pairs() == [(3, [1, 2]), (9, [4, 5]), (0, [7])]  # largest first, then lowest members
    assert Groups.concat([Groups.empty(), g, Groups.of([(8, [6])])]).pairs()[-1] == (8, [6])
    assert order_groups(Groups.empty()).pairs() == []


def test_groups_of_edges_equal_the_set_based_grouping():
    """From edge arrays (union-find, bitsets straight from the edges) the same groups and
    targets as from adjacency sets, on random graphs with overlapping planted cliques; edges
    given twice and in any order change nothing."""
    rnd = random.Random(3)
    rng = np.random.default_rng(3)
    for _ in range(60):
        n = rnd.randint(2, 90)
        i, j = random_edges(rnd, n, rnd.uniform(0.0, 0.1))
        planted = [rnd.sample(range(n), min(n, rnd.randint(2, 8))) for _ in range(rnd.randint(0, 6))]
        extra = np.array([(a, b) for m in planted for a in m for b in m if a < b], dtype=np.int64).reshape(-1, 2)
        i, j = np.concatenate([i, extra[:, 0], extra[:, 1]]), np.concatenate([j, extra[:, 1], extra[:, 0]])
        emb = rng.normal(size=(n, 8))
        lo, hi = rnd.randint(2, 3), rnd.randint(3, 7)
        adj = grouping.adjacency_from_pairs(n, np.stack([i, j], axis=1))
        want = [grouping.choose_target(g, emb) for g in grouping.repeated_max_cliques_graph(adj, lo, hi)]
        assert order_groups(groups_of_edges(i, j, emb, lo, hi)).pairs() == want
        assert grouping.bitsets_from_edges(n, i, j) == grouping._local_bitsets(adj, list(range(n)))
    with pytest.raises(ValueError, match="min_size"):
        groups_of_edges([0], [1], np.eye(2), 1, 6)


# -- constructed embeddings ------------------------------------------------------------------------


def constructed(seed: int = 0, n_chains: int = 120, dim: int = 24) -> np.ndarray:
    """Tight groups of 2-9 images (a group above max_size is split) in chains of 1-4 groups:
    consecutive groups of a chain are not similar enough to join (cosine 0.85), but a bridge
    image between them is close to both, so a component holds several cliques; and loners."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_chains):
        centre = l2_normalize(rng.normal(size=dim))[0]
        for link in range(int(rng.integers(1, 5))):
            if link:
                other = rng.normal(size=dim)
                other -= (other @ centre) * centre
                following = l2_normalize(0.85 * centre + np.sqrt(1 - 0.85**2) * l2_normalize(other)[0])[0]
                rows.append(l2_normalize(centre + following)[0])  # the bridge
                centre = following
            size = int(rng.integers(2, 10))
            rows += [centre + 0.06 * rng.normal(size=dim) / np.sqrt(dim) for _ in range(size)]
    rows += list(rng.normal(size=(150, dim)))
    return l2_normalize(np.array(rows)[rng.permutation(len(rows))])


KW = dict(edge_threshold=THRESHOLD, min_size=2, max_size=6, knn_k=24, knn_index="flat", group_prefix="c-")


def exact(emb):
    return clique_candidates(emb, list(range(len(emb))), exact_max_images=10**6, **KW)


def test_the_neighbour_graph_is_the_exact_graph_here():
    """The premise of the comparisons below: with k above every degree, the neighbour graph
    has exactly the edges of the all-pairs graph."""
    emb = constructed()
    adj = grouping.similarity_graph(emb, THRESHOLD)
    assert max(len(a) for a in adj) < KW["knn_k"]
    comps = [c for c in grouping.connected_components(adj) if len(c) > 1]
    assert len(comps) > 50 and max(len(c) for c in comps) > 12  # bridged components of several cliques


def component_path(emb, *, blocks: int, batch_nodes: int):
    """The component-split grouping with pure functions only: neighbour pairs block by block
    (as the Ray search tasks find them), union-find, batches, pairs cut by batch, cliques per
    batch, ordered."""
    e = l2_normalize(emb)
    parts = []
    for rows in np.array_split(np.arange(len(e)), blocks):
        scores, ids = brute_force_knn(e, KW["knn_k"] + 1, e[rows])
        parts.append(unique_pairs(ids, scores, query_ids=rows))
    parent = new_forest(len(e))
    for p in parts:
        hit = p[p["score"] >= THRESHOLD]
        union_edges(parent, hit["i"], hit["j"])
    batch_of = component_batches(parent, KW["min_size"], batch_nodes)
    n_batches = int(batch_of.max()) + 1
    cut = [split_pairs(p, batch_of, n_batches) for p in parts]
    found = [batch_groups([c[b] for c in cut], emb, THRESHOLD, 1.0, KW["min_size"], KW["max_size"]) for b in range(n_batches)]
    assert (n_batches > 1) == (batch_nodes < len(emb))
    groups = order_groups(Groups.concat(found[::-1]))  # batches finish in any order
    return [(refs, target, f"c-clique-{g}") for g, (target, refs) in enumerate(groups.pairs())]


def test_component_batches_give_the_single_process_cliques():
    emb = constructed(seed=2)
    want = exact(emb)
    assert len(want) > 150
    knn = clique_candidates(emb, list(range(len(emb))), exact_max_images=10, neighbour_pairs=functools.partial(_mine_pairs_numpy), **KW)
    assert knn == want
    for blocks, batch_nodes in ((1, 10**6), (3, 40), (7, 5)):
        assert component_path(emb, blocks=blocks, batch_nodes=batch_nodes) == want


def _mine_pairs_numpy(emb, k, low, high, kind):
    from weaverdata.refs.knn import mine_pairs

    return mine_pairs(emb, k, low, high, kind="numpy")


def test_batch_groups_merges_pairs_found_from_both_ends():
    emb = l2_normalize(np.array([[1.0, 0.0], [1.0, 0.05], [1.0, 0.1], [0.0, 1.0]]))
    a = dedup_pairs([0, 0], [1, 2], [0.99, 0.99])
    b = dedup_pairs([1, 2], [0, 1], [0.99, 0.98])
    g = batch_groups([a, b], emb, 0.9, 1.0, 2, 6)
    assert g.pairs() == [grouping.choose_target([0, 1, 2], emb)]


@pytest.mark.ray
@pytest.mark.parametrize("batch_nodes", [10**6, 60])
def test_group_corpus_in_ray_tasks_equals_the_single_process_grouping(ray_local, batch_nodes):
    """Both single-process paths (exact graph; neighbour graph) and the Ray paths (components,
    cliques per batch of components in tasks; edges from neighbour search tasks, or all pairs
    block by block) give the same groups, targets and numbers."""
    from weaverdata.refs.mining import group_corpus, mine_corpus

    emb = constructed(seed=3)
    want = exact(emb)
    stats: dict = {}
    grouper = functools.partial(group_corpus, parallelism=2, query_block=300, batch_nodes=batch_nodes, stats=stats)
    got = clique_candidates(emb, list(range(len(emb))), exact_max_images=10, grouper=grouper, **KW)
    assert got == want
    assert stats["blocks"] > 1 and stats["groups"] == len(want)
    assert (stats["batches"] > 1) == (batch_nodes < len(emb))
    single = clique_candidates(emb, list(range(len(emb))), exact_max_images=10, neighbour_pairs=functools.partial(mine_corpus, parallelism=2, query_block=300), **KW)
    assert single == want
    all_pairs: dict = {}
    by_blocks = group_corpus(emb, KW["knn_k"], THRESHOLD, 2, 6, kind="exact", parallelism=2, batch_nodes=batch_nodes, stats=all_pairs)
    assert by_blocks == [(t, refs) for refs, t, _ in want]
    assert (all_pairs["batches"] > 1) == (batch_nodes < len(emb))


@pytest.mark.ray
def test_a_large_input_is_grouped_in_ray_tasks_from_all_pairs(ray_local, monkeypatch):
    """Above LOCAL_MAX_IMAGES (and up to exact_max_images) the grouper gets the all-pairs graph
    ("exact"); the groups equal the single-process ones."""
    from weaverdata.refs import samples
    from weaverdata.refs.mining import group_corpus

    emb = constructed(seed=4)
    want = exact(emb)
    kinds = []

    def grouper(*args, kind, **kw):
        kinds.append(kind)
        return group_corpus(*args, kind=kind, parallelism=2, batch_nodes=100, **kw)

    monkeypatch.setattr(samples, "LOCAL_MAX_IMAGES", 500)
    assert clique_candidates(emb, list(range(len(emb))), exact_max_images=10**6, grouper=grouper, **KW) == want
    assert kinds == ["exact"]


@pytest.mark.ray
def test_group_corpus_on_tiny_or_edgeless_corpora(ray_local):
    from weaverdata.refs.mining import group_corpus

    assert group_corpus(np.ones((1, 4), np.float32), 5, 0.9, 2, 6, kind="flat") == []
    far = np.eye(8, dtype=np.float32)  # no pair reaches the threshold
    assert group_corpus(far, 4, 0.9, 2, 6, kind="flat", parallelism=2) == []
