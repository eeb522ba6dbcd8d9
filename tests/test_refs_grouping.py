"""Image groups by repeated maximum cliques: planted groups come back exactly, the tie-break is
the lowest indices, and the target is the member least like the others."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from weaverdata.refs.grouping import (
    adjacency_from_pairs,
    choose_target,
    connected_components,
    max_clique,
    repeated_max_cliques,
    repeated_max_cliques_graph,
    similarity_graph,
)
from weaverdata.refs.knn import brute_force_knn, unique_pairs


def planted_groups(seed=0, n_groups=30, dim=64, n_noise=200, spread=0.25):
    """``n_groups`` groups of 2..6 noisy copies of random unit centroids, plus ``n_noise`` random
    points, shuffled. Returns (embeddings, groups as sorted index lists)."""
    rng = np.random.default_rng(seed)
    rows, members = [], []
    for _ in range(n_groups):
        size = int(rng.integers(2, 7))
        c = rng.normal(size=dim)
        c /= np.linalg.norm(c)
        start = len(rows)
        rows += [c + rng.normal(size=dim) * spread / np.sqrt(dim) for _ in range(size)]
        members.append(range(start, start + size))
    rows += list(rng.normal(size=(n_noise, dim)))
    perm = rng.permutation(len(rows))
    where = np.argsort(perm)  # original row -> shuffled position
    emb = np.array(rows)[perm]
    groups = sorted(sorted(int(where[i]) for i in g) for g in members)
    return emb, groups


def random_graph(rnd: random.Random, n: int, p: float) -> list[set[int]]:
    adj = [set() for _ in range(n)]
    for a, b in itertools.combinations(range(n), 2):
        if rnd.random() < p:
            adj[a].add(b)
            adj[b].add(a)
    return adj


def brute_max_clique(adj, nodes, cap):
    """Largest clique (capped), lexicographically smallest, by trying every subset in order."""
    nodes = sorted(nodes)
    best = nodes[:1]
    for size in range(2, cap + 1):
        found = next(
            (c for c in itertools.combinations(nodes, size) if all(b in adj[a] for a, b in itertools.combinations(c, 2))),
            None,
        )
        if found is None:
            break
        best = list(found)
    return best


def brute_repeated(adj, min_size, max_size):
    """The MetaQuery procedure on the whole graph at once: no components, no shortcuts."""
    alive = set(range(len(adj)))
    groups = []
    while True:
        c = brute_max_clique(adj, alive, max_size)
        if len(c) < min_size:
            return groups
        groups.append(c)
        alive -= set(c)


# --------------------------------------------------------------------------------------------


def test_planted_groups_are_recovered_exactly():
    emb, groups = planted_groups()
    found = repeated_max_cliques(emb, threshold=0.8)
    assert sorted(found) == groups
    assert [len(g) for g in found] == sorted((len(g) for g in found), reverse=True)


def test_planted_groups_from_a_nearest_neighbour_graph():
    """Corpus scale: the graph built from k nearest neighbours above the threshold (no n x n
    matrix) gives the same groups."""
    emb, groups = planted_groups(seed=1)
    scores, ids = brute_force_knn(emb, 8, max_block_bytes=1 << 16)
    pairs = unique_pairs(ids, scores)
    adj = adjacency_from_pairs(len(emb), pairs[pairs["score"] >= 0.8])
    assert sorted(repeated_max_cliques_graph(adj)) == groups


def test_target_is_the_least_similar_member():
    rng = np.random.default_rng(5)
    dim = 64
    for _ in range(50):
        size = int(rng.integers(2, 7))
        c = rng.normal(size=dim)
        c /= np.linalg.norm(c)
        odd = int(rng.integers(size))
        rows = [c + rng.normal(size=dim) * (0.6 if i == odd else 0.1) / np.sqrt(dim) for i in range(size)]
        emb = np.array(rows)
        if size == 2:  # two members are equally (dis)similar: the lowest index wins
            assert choose_target([1, 0], emb) == (0, [1])
            continue
        target, refs = choose_target(range(size), emb)
        assert target == odd
        assert refs == [i for i in range(size) if i != odd]


def test_target_tie_goes_to_the_lowest_index():
    emb = np.tile(np.array([[1.0, 2.0, 3.0]]), (4, 1))  # identical: every mean similarity ties
    assert choose_target([3, 1, 2], emb) == (1, [2, 3])


def test_max_clique_matches_brute_force_with_lowest_index_tie_break():
    rnd = random.Random(0)
    for _ in range(300):
        n = rnd.randint(0, 13)
        adj = random_graph(rnd, n, rnd.random())
        cap = rnd.randint(1, 7)
        cands = [v for v in range(n) if rnd.random() < 0.85]
        assert max_clique(adj, cands, cap) == brute_max_clique(adj, cands, cap)


def test_repeated_cliques_equal_the_global_procedure():
    """Component by component gives exactly the groups of the whole-graph procedure; every
    group is a clique of the allowed size and no node is in two groups."""
    rnd = random.Random(1)
    for _ in range(150):
        n = rnd.randint(0, 14)
        adj = random_graph(rnd, n, rnd.uniform(0.05, 0.8))
        lo = rnd.randint(1, 3)
        hi = rnd.randint(lo, 6)
        got = repeated_max_cliques_graph(adj, lo, hi)
        assert sorted(got) == sorted(brute_repeated(adj, lo, hi))
        seen = [v for g in got for v in g]
        assert len(seen) == len(set(seen))
        for g in got:
            assert lo <= len(g) <= hi
            assert all(b in adj[a] for a, b in itertools.combinations(g, 2))


def fresh_search_each_time(adj, min_size, max_size):
    """The procedure as the module doc defines it: a fresh maximum-clique search of the whole
    remaining graph for every group (no carried cap, no resumed position)."""
    alive = set(range(len(adj)))
    groups = []
    while True:
        c = max_clique(adj, alive, max_size)
        if len(c) < min_size:
            return sorted(groups, key=lambda g: (-len(g), g))
        groups.append(c)
        alive -= set(c)


def test_repeated_cliques_on_larger_graphs_equal_a_fresh_search_each_time():
    """The search of each next group starts from what the last one proved (its size caps the
    next, and the next of the same size starts after its first node): the same groups as
    searching the whole remaining graph afresh, on graphs too large for brute force, with
    planted cliques of every size overlapping each other."""
    rnd = random.Random(7)
    for _ in range(40):
        n = rnd.randint(20, 120)
        adj = random_graph(rnd, n, rnd.uniform(0.01, 0.12))
        for _ in range(rnd.randint(0, n // 4)):  # planted cliques
            members = rnd.sample(range(n), rnd.randint(2, 9))
            for a, b in itertools.combinations(members, 2):
                adj[a].add(b)
                adj[b].add(a)
        lo, hi = rnd.randint(1, 3), rnd.randint(3, 7)
        assert repeated_max_cliques_graph(adj, lo, hi) == fresh_search_each_time(adj, lo, hi)


def test_a_clique_larger_than_max_size_is_split_lowest_indices_first():
    adj = [set(range(9)) - {i} for i in range(9)]
    assert repeated_max_cliques_graph(adj) == [[0, 1, 2, 3, 4, 5], [6, 7, 8]]
    assert repeated_max_cliques_graph(adj, min_size=4) == [[0, 1, 2, 3, 4, 5]]
    assert repeated_max_cliques_graph(adj, max_size=4) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_isolated_points_make_no_group():
    emb = np.eye(5)
    assert repeated_max_cliques(emb, threshold=0.5) == []
    assert connected_components(similarity_graph(emb, 0.5)) == [[0], [1], [2], [3], [4]]


def test_boolean_matrix_and_sets_agree():
    rnd = random.Random(2)
    adj = random_graph(rnd, 30, 0.3)
    m = np.zeros((30, 30), dtype=bool)
    for a, nb in enumerate(adj):
        m[a, list(nb)] = True
    assert max_clique(m) == max_clique(adj)
    assert repeated_max_cliques_graph(m) == repeated_max_cliques_graph(adj)


def test_similarity_graph_is_symmetric_and_thresholded():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(300, 16))
    adj = similarity_graph(emb, 0.5, block=37)
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    s = e @ e.T
    for i in range(len(emb)):
        assert i not in adj[i]
        for j in adj[i]:
            assert i in adj[j]
    expected = {(i, j) for i, j in zip(*np.nonzero(s >= 0.5), strict=True) if i < j}
    got = {(i, j) for i, nb in enumerate(adj) for j in nb if i < j}
    # pairs within float32 rounding of the threshold may go either way
    assert {p for p in got ^ expected if abs(s[p] - 0.5) > 1e-5} == set()


@pytest.mark.timeout(60)
def test_a_component_of_near_identical_images_is_fast():
    """Thousands of near-copies form one huge clique; it is cut into groups of 6 quickly."""
    rng = np.random.default_rng(4)
    emb = np.ones((1200, 8)) + rng.normal(size=(1200, 8)) * 1e-3
    groups = repeated_max_cliques(emb, 0.9)
    assert len(groups) == 200 and all(len(g) == 6 for g in groups)
    assert groups[0] == [0, 1, 2, 3, 4, 5]
