"""Grouping a corpus piece by piece: connected components of the edge graph, cliques per batch.

Repeated maximum cliques never span connected components, and removing a clique changes nothing
in another component (:mod:`weaverdata.refs.grouping`), so the grouping of a whole corpus is the
union of the groupings of its components. At millions of images the edges do not fit one
process; this module holds the pure steps that let the grouping run in pieces (the Ray edge is
:func:`weaverdata.refs.mining.group_corpus`):

1. :func:`union_edges` / :func:`component_labels`: union-find on numpy over the edge arrays,
   fed block after block (a block of pairs at a time, never all edges at once; a worker sends
   only :func:`spanning_pairs` of its block, at most one pair per node). A node's label is the
   lowest node of its component. Feeding a *superset* of the edges (pairs
   in band in any block, before the blocks are merged) can only join components, never split
   one, so the batches below still hold whole components.
2. :func:`component_batches`: components of at least ``min_size`` nodes packed, in order of
   their lowest node, into batches of about ``batch_nodes`` nodes (a larger component is a
   batch of its own); ``batch_of[node]`` is its batch, or -1.
3. :func:`split_pairs`: a block's pairs cut by batch (a pair whose ends lie in two batches can
   be no edge, so it is dropped).
4. :func:`batch_groups`: one batch's pairs merged and deduplicated exactly as
   :func:`weaverdata.refs.knn.mine_pairs` merges them (highest score), kept in the band, turned
   (:func:`groups_of_edges`) into the repeated maximum cliques of its components and a target
   per group (:func:`weaverdata.refs.grouping.choose_target`). :func:`groups_of_edges` works
   on edge arrays, never on Python sets, so a dense graph costs its edges and one bit per pair
   of a component's nodes; it is also the single-process grouping of small inputs.
5. :func:`order_groups`: all batches' groups in the order of the single-process procedure
   (largest first, then by lowest indices), so the groups, their numbering and their targets
   equal those of :func:`weaverdata.refs.samples.clique_candidates`.

Groups travel as :class:`Groups`: flat arrays (member offsets, members with the target first),
not Python lists, so a batch's result is a few numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from weaverdata.refs import grouping
from weaverdata.refs.knn import PAIR_DTYPE, band_split, concat_pairs

# --------------------------------------------------------------------------------------------
# union-find


def _compress(parent: np.ndarray) -> None:
    """Every node pointed at its root, in place (pointer jumping until nothing changes)."""
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return
        parent[:] = grand


def union_edges(parent: np.ndarray, i, j) -> np.ndarray:
    """Join the edges ``(i[k], j[k])`` into ``parent`` (an int64 forest over the nodes, every
    node pointing at its root, as :func:`new_forest` and this function leave it), in place;
    returns it.

    Hook-and-compress: each edge between two roots hooks the larger root under the smaller one
    (``np.minimum.at``, so no cycle can form), then pointers jump to the roots; repeated until
    every edge joins one root. A root is therefore always the lowest node of its component.

    >>> p = union_edges(new_forest(6), [4, 1], [5, 2]); union_edges(p, [2], [5]).tolist()
    [0, 1, 1, 3, 1, 1]
    """
    i = np.asarray(i, dtype=np.int64).ravel()
    j = np.asarray(j, dtype=np.int64).ravel()
    if len(i) != len(j):
        raise ValueError("i and j differ in length")
    if parent.dtype != np.int64:
        raise ValueError("parent must be an int64 array (new_forest)")
    if len(i) and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= len(parent)):
        raise ValueError(f"an edge lies outside 0..{len(parent) - 1}")
    while len(i):
        ri, rj = parent[i], parent[j]
        differ = ri != rj
        if not differ.any():
            break
        i, j, ri, rj = i[differ], j[differ], ri[differ], rj[differ]
        np.minimum.at(parent, np.maximum(ri, rj), np.minimum(ri, rj))
        _compress(parent)
    return parent


def new_forest(n: int) -> np.ndarray:
    """``n`` nodes, each its own component."""
    return np.arange(n, dtype=np.int64)


def component_labels(n: int, i, j) -> np.ndarray:
    """The component of each node (its lowest node) for the edges ``(i[k], j[k])``.

    >>> component_labels(5, [3, 0], [4, 1]).tolist()
    [0, 0, 2, 3, 3]
    """
    return union_edges(new_forest(n), i, j)


def spanning_pairs(i, j) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)``: one edge from each node to the lowest node of its component, for the graph
    with edges ``(i[k], j[k])``: at most one pair per node, however many edges, and joining the
    same components (what a worker sends the driver's union-find instead of its edges).

    >>> [x.tolist() for x in spanning_pairs([7, 7, 9, 3], [9, 8, 8, 4])]
    [[4, 8, 9], [3, 7, 7]]
    """
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    if not len(i):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    nodes = np.unique(np.concatenate([i, j]))
    labels = component_labels(len(nodes), np.searchsorted(nodes, i), np.searchsorted(nodes, j))
    moved = labels != np.arange(len(nodes))
    return nodes[moved], nodes[labels[moved]]


# --------------------------------------------------------------------------------------------
# batches


def component_batches(labels: np.ndarray, min_size: int, batch_nodes: int) -> np.ndarray:
    """``batch_of``: the batch of every node (-1 for a node of a component smaller than
    ``min_size``). Components are taken in order of their lowest node and packed into batches
    of at most ``batch_nodes`` nodes, unless one component alone is larger.

    >>> component_batches(np.array([0, 0, 2, 2, 2, 5, 6, 6]), 2, 4).tolist()
    [0, 0, 1, 1, 1, -1, 2, 2]
    """
    if batch_nodes < 1:
        raise ValueError("batch_nodes must be >= 1")
    labels = np.asarray(labels, dtype=np.int64)
    batch_of = np.full(len(labels), -1, dtype=np.int64)
    if not len(labels):
        return batch_of
    sizes = np.bincount(labels, minlength=len(labels))
    roots = np.flatnonzero(sizes >= max(1, min_size))  # ascending: in order of lowest node
    batch_of_root = np.empty(len(roots), dtype=np.int64)
    batch, filled = 0, 0
    for k, size in enumerate(sizes[roots].tolist()):  # a loop over components, not nodes
        if filled and filled + size > batch_nodes:
            batch, filled = batch + 1, 0
        batch_of_root[k] = batch
        filled += size
    lookup = np.full(len(labels), -1, dtype=np.int64)
    lookup[roots] = batch_of_root
    return lookup[labels]


def split_pairs(pairs: np.ndarray, batch_of: np.ndarray, n_batches: int) -> list[np.ndarray]:
    """A block's pairs cut by the batch of their ends; a pair whose ends lie in two batches (or
    in none) is no edge of any batch and is dropped."""
    pairs = np.asarray(pairs, dtype=PAIR_DTYPE)
    bi, bj = batch_of[pairs["i"]], batch_of[pairs["j"]]
    keep = (bi == bj) & (bi >= 0)
    pairs, b = pairs[keep], bi[keep]
    order = np.argsort(b, kind="stable")
    pairs, b = pairs[order], b[order]
    cuts = np.searchsorted(b, np.arange(n_batches + 1))
    return [pairs[cuts[k] : cuts[k + 1]] for k in range(n_batches)]


# --------------------------------------------------------------------------------------------
# groups


@dataclass
class Groups:
    """Groups as flat arrays: group ``g`` is ``members[offsets[g]:offsets[g + 1]]``, its target
    first, then its references ascending (all indices into the corpus)."""

    offsets: np.ndarray  # int64, len = groups + 1
    members: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @staticmethod
    def empty() -> Groups:
        return Groups(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64))

    @staticmethod
    def of(pairs: list[tuple[int, list[int]]]) -> Groups:
        """From ``(target, references)`` per group."""
        sizes = [1 + len(refs) for _, refs in pairs]
        offsets = np.zeros(len(pairs) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(sizes, dtype=np.int64)
        members = np.fromiter((m for t, refs in pairs for m in (t, *refs)), dtype=np.int64, count=int(offsets[-1]))
        return Groups(offsets, members)

    @staticmethod
    def concat(parts: list[Groups]) -> Groups:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Groups.empty()
        sizes = np.concatenate([np.diff(p.offsets) for p in parts])
        offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(sizes)
        return Groups(offsets, np.concatenate([p.members for p in parts]))

    def take(self, order: np.ndarray) -> Groups:
        sizes = np.diff(self.offsets)[order]
        offsets = np.zeros(len(order) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(sizes)
        starts = self.offsets[:-1][order]
        index = np.repeat(starts - offsets[:-1], sizes) + np.arange(offsets[-1])
        return Groups(offsets, self.members[index])

    def pairs(self) -> list[tuple[int, list[int]]]:
        """``(target, references)`` per group, as Python ints."""
        m = self.members.tolist()
        o = self.offsets.tolist()
        return [(m[o[g]], m[o[g] + 1 : o[g + 1]]) for g in range(len(self))]


def groups_of_edges(i, j, emb: np.ndarray, min_size: int, max_size: int) -> Groups:
    """The repeated maximum cliques of the graph with edges ``(i[k], j[k])`` (corpus indices,
    each edge once or more), a target per group
    (:func:`weaverdata.refs.grouping.choose_target` on ``emb``), in no particular order
    (:func:`order_groups` orders them). Components by union-find, neighbour bitsets per
    component straight from the edge arrays: no Python set per node, so a dense graph costs its
    edge arrays and one bit per pair of a component's nodes."""
    if min_size < 2:
        raise ValueError(f"a group has a target and at least one reference: min_size must be >= 2, got {min_size}")
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    if not len(i):
        return Groups.empty()
    nodes = np.unique(np.concatenate([i, j]))  # ascending: local order == global order
    li, lj = np.searchsorted(nodes, i), np.searchsorted(nodes, j)
    labels = component_labels(len(nodes), li, lj)
    by_comp = np.argsort(labels, kind="stable")  # each component's nodes, ascending
    comp_starts = np.searchsorted(labels[by_comp], np.arange(len(nodes) + 1))
    edge_order = np.argsort(labels[li], kind="stable")
    li, lj = li[edge_order], lj[edge_order]
    edge_starts = np.searchsorted(labels[li], np.arange(len(nodes) + 1))
    out = []
    sizes = np.diff(comp_starts)
    for root in np.flatnonzero(sizes >= min_size).tolist():
        comp = by_comp[comp_starts[root] : comp_starts[root + 1]]
        ci = np.searchsorted(comp, li[edge_starts[root] : edge_starts[root + 1]])
        cj = np.searchsorted(comp, lj[edge_starts[root] : edge_starts[root + 1]])
        nbr = grouping.bitsets_from_edges(len(comp), ci, cj)
        for clique in grouping.repeated_cliques(nbr, min_size, max_size):
            out.append(grouping.choose_target(nodes[comp[list(clique)]].tolist(), emb))
    return Groups.of(out)


def batch_groups(parts: list[np.ndarray], emb: np.ndarray, low: float, high: float, min_size: int, max_size: int) -> Groups:
    """The groups of one batch: its pairs (from every block) merged once each with their highest
    score, kept when ``low <= score <= high``, then :func:`groups_of_edges`."""
    pairs = concat_pairs(*parts) if parts else np.empty(0, dtype=PAIR_DTYPE)
    edges, _, _ = band_split(pairs, low, high)
    return groups_of_edges(edges["i"], edges["j"], emb, min_size, max_size)


def order_groups(groups: Groups) -> Groups:
    """Groups in the order :func:`weaverdata.refs.grouping.repeated_max_cliques_graph` emits
    them for the whole graph: largest first, then by their sorted members."""
    n = len(groups)
    if n == 0:
        return groups
    sizes = np.diff(groups.offsets)
    width = int(sizes.max())
    table = np.full((n, width), -1, dtype=np.int64)  # each group's members, sorted, padded
    for size in np.unique(sizes).tolist():
        rows = np.flatnonzero(sizes == size)
        index = groups.offsets[rows][:, None] + np.arange(size)
        table[rows, :size] = np.sort(groups.members[index], axis=1)
    keys = [table[:, c] for c in range(width - 1, -1, -1)] + [-sizes]
    return groups.take(np.lexsort(keys))
