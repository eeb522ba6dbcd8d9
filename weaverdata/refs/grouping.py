"""Image collections: group images of one subject by repeated maximum cliques (MetaQuery).

Recipe: build a similarity graph (an edge where the cosine of two L2-normalised embeddings is
at least ``threshold``), then repeatedly find the maximum clique (capped at ``max_size``, 6 by
default), emit it, remove its nodes, and repeat until no clique of ``min_size`` (2) remains. In
each group the image with the least mean similarity to the others is the target; the rest are
its references (:func:`choose_target`).

**Which clique, exactly.** Let ``K`` be the size of the largest clique still in the graph,
capped at ``max_size``. Among all cliques of ``K`` nodes, the one whose sorted index tuple is
lexicographically smallest is emitted (for a clique larger than ``max_size`` that is its
``max_size`` lowest indices). So the result depends only on the graph and the node numbering,
never on set iteration order.

**Search.** :func:`max_clique` is an exact branch-and-bound maximum-clique search over
Python-int bitsets: the Bron–Kerbosch recursion (R = the clique so far, P = the nodes adjacent
to all of R) without the X set, since only a *maximum* clique is wanted, and without pivoting:
children are visited in ascending node order, so cliques are met in the lexicographic order of
their sorted index tuples and the first clique found of any size is the lexicographically
smallest of that size. A branch is cut when a greedy colouring of P shows it cannot reach a
strictly larger clique (Carraghan–Pardalos / Tomita MCQ bound); a later clique of equal size
would lose the tie-break anyway. The search stops as soon as a clique of ``max_size`` nodes is
found, which is why a component of thousands of near-identical images costs no more than a
few microseconds per group. (Tomita pivoting reorders the branches, which breaks the
lexicographic order: with it the exact tie-break needs every maximal clique, and a dense
300-node graph did not finish in minutes.)

**Scale.** Cliques never span connected components, so :func:`repeated_max_cliques_graph`
works component by component (neighbour bitsets built once per component, removal is a
mask). Removing a clique changes nothing in other components, so this gives exactly the
groups of the global procedure; they are returned in the order the global procedure emits
them: largest first, then by lowest indices. Inside a component each search starts from what
the last one proved (:func:`repeated_cliques`: the last size caps the next, and the next clique
of the same size starts after the last one's first node), which gives the same cliques as a
fresh search and made a 2,667-node component 40 times faster. :func:`similarity_edges` gives the
all-pairs edges in row blocks (memory ``block × n``); for a large corpus build the graph from
approximate neighbours instead (:func:`weaverdata.refs.knn.mine_pairs`). Adjacency *sets* cost
about 100 bytes per edge: large or dense graphs are grouped from edge arrays
(:func:`bitsets_from_edges`, :func:`weaverdata.refs.components.groups_of_edges`) and, above a
few thousand images, by components in Ray tasks (:func:`weaverdata.refs.mining.group_corpus`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from weaverdata.refs.vectors import l2_normalize

Adjacency = list[set[int]]

DEFAULT_MIN_SIZE = 2
DEFAULT_MAX_SIZE = 6


# --------------------------------------------------------------------------------------------
# graph


def similarity_block(e: np.ndarray, start: int, stop: int, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i, j, cos)`` of the pairs ``i < j`` with ``i`` in rows ``start:stop`` of the
    normalised ``e`` and ``cos >= threshold`` (one block of :func:`similarity_edges`)."""
    sims = e[start:stop] @ e.T
    r, c = np.nonzero(sims >= threshold)
    score = sims[r, c]
    r = r + start
    upper = c > r
    return r[upper], c[upper], score[upper]


def block_rows(n: int, max_block_bytes: int = 32 << 20) -> int:
    """Rows per block of :func:`similarity_edges`: 2048, fewer when ``rows x n`` float32 would
    exceed ``max_block_bytes``.

    >>> block_rows(1000), block_rows(16_000), block_rows(10_000_000)
    (2048, 524, 1)
    """
    return max(1, min(2048, max_block_bytes // (4 * max(1, n))))


def similarity_edges(emb, threshold: float, *, block: int | None = None, max_block_bytes: int = 32 << 20) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(i, j, cos)`` of every pair ``i < j`` with ``cos(emb[i], emb[j]) >= threshold``, one
    row block at a time (so no process needs the edges of the whole graph at once).

    Embeddings are L2-normalised here; a block is ``block`` rows against all rows (default:
    :func:`block_rows`). Each pair is judged once, in the block of its lower index. The same
    block size and BLAS threads give the same cosines to the last bit; another block size may
    differ in the last bit (BLAS kernels depend on the matrix shape), which matters only for a
    cosine within rounding of the threshold.
    """
    e = l2_normalize(emb)
    n = len(e)
    block = block or block_rows(n, max_block_bytes)
    for start in range(0, n, block):
        yield similarity_block(e, start, start + block, threshold)


def similarity_graph(emb, threshold: float, *, block: int = 2048) -> Adjacency:
    """Adjacency sets: ``j in adj[i]`` when ``cos(emb[i], emb[j]) >= threshold`` and ``i != j``.

    Embeddings are L2-normalised here. Similarities are computed in row blocks
    (:func:`similarity_edges`; memory ``block × n`` besides the edges themselves); each pair is
    judged once (``i < j``), so the graph is symmetric whatever the floating-point rounding.
    Python sets cost about 100 bytes per edge: for a large or dense graph use
    :func:`similarity_edges` and :func:`weaverdata.refs.components.groups_of_edges`.
    """
    e = l2_normalize(emb)
    rows, cols = [], []
    for r, c, _ in similarity_edges(e, threshold, block=block):
        rows.append(r)
        cols.append(c)
    if not rows:
        return []
    return _sets_from_edges(len(e), np.concatenate(rows), np.concatenate(cols))


def _sets_from_edges(n: int, i: np.ndarray, j: np.ndarray) -> Adjacency:
    """Symmetric adjacency sets from edge arrays (self edges dropped)."""
    if n == 0:
        return []
    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    keep = i != j
    src = np.concatenate([i[keep], j[keep]])
    dst = np.concatenate([j[keep], i[keep]])
    order = np.argsort(src, kind="stable")
    counts = np.bincount(src, minlength=n)
    pieces = np.split(dst[order], np.cumsum(counts)[:-1])
    return [set(p.tolist()) for p in pieces]


def adjacency_from_pairs(n: int, pairs) -> Adjacency:
    """Adjacency sets from edges: an (m, 2) int array, a list of (i, j), or a pair array with
    fields ``i`` and ``j`` (as :func:`weaverdata.refs.knn.unique_pairs` returns)."""
    arr = np.asarray(pairs)
    if arr.dtype.names and "i" in arr.dtype.names:
        ii, jj = arr["i"].astype(np.int64), arr["j"].astype(np.int64)
    elif arr.size == 0:
        ii = jj = np.zeros(0, dtype=np.int64)
    else:
        arr = arr.reshape(-1, 2).astype(np.int64)
        ii, jj = arr[:, 0], arr[:, 1]
    bad = (ii < 0) | (ii >= n) | (jj < 0) | (jj >= n)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"edge ({ii[k]}, {jj[k]}) outside 0..{n - 1}")
    return _sets_from_edges(n, ii, jj)


def _as_sets(adj) -> Adjacency:
    if isinstance(adj, np.ndarray):
        if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
            raise ValueError(f"adjacency matrix must be square, got {adj.shape}")
        m = adj.astype(bool)
        m = m | m.T
        return [set(np.flatnonzero(row).tolist()) - {i} for i, row in enumerate(m)]
    return [set(s) for s in adj]


def connected_components(adj, nodes: Iterable[int] | None = None) -> list[list[int]]:
    """Connected components (sorted lists, ordered by lowest node) of the graph restricted to
    ``nodes`` (all nodes by default)."""
    adj = adj if isinstance(adj, list) else _as_sets(adj)
    alive = set(range(len(adj))) if nodes is None else set(nodes)
    seen: set[int] = set()
    comps: list[list[int]] = []
    for start in sorted(alive):
        if start in seen:
            continue
        seen.add(start)
        stack, comp = [start], [start]
        while stack:
            u = stack.pop()
            for v in adj[u]:
                if v in alive and v not in seen:
                    seen.add(v)
                    stack.append(v)
                    comp.append(v)
        comps.append(sorted(comp))
    return comps


# --------------------------------------------------------------------------------------------
# maximum clique


def _local_bitsets(adj: Adjacency, nodes: Sequence[int]) -> list[int]:
    """Neighbour bitsets over ``nodes`` (sorted), bit ``i`` standing for ``nodes[i]``."""
    m = len(nodes)
    if m == 0:
        return []
    loc = np.full(len(adj), -1, dtype=np.int64)
    loc[np.asarray(nodes, dtype=np.int64)] = np.arange(m)
    nbr = []
    for i, v in enumerate(nodes):
        nb = loc[np.fromiter(adj[v], dtype=np.int64, count=len(adj[v]))]
        row = np.zeros(m, dtype=bool)
        row[nb[nb >= 0]] = True
        row[i] = False
        nbr.append(int.from_bytes(np.packbits(row, bitorder="little").tobytes(), "little"))
    return nbr


def bitsets_from_edges(n: int, i, j) -> list[int]:
    """Neighbour bitsets of ``n`` nodes from edge arrays (local indices; symmetric, self edges
    dropped), without a Python set per node: one boolean row at a time.

    >>> bitsets_from_edges(3, [0, 1], [1, 2]) == [0b010, 0b101, 0b010]
    True
    """
    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    src = np.concatenate([i, j])
    dst = np.concatenate([j, i])
    order = np.argsort(src, kind="stable")
    dst = dst[order]
    ends = np.cumsum(np.bincount(src, minlength=n))
    nbr = []
    row = np.zeros(n, dtype=bool)
    start = 0
    for v in range(n):
        nb = dst[start : ends[v]]
        row[nb] = True
        row[v] = False
        nbr.append(int.from_bytes(np.packbits(row, bitorder="little").tobytes(), "little"))
        row[nb] = False
        start = ends[v]
    return nbr


def max_clique(adj, candidates: Iterable[int] | None = None, max_size: int = DEFAULT_MAX_SIZE) -> list[int]:
    """The maximum clique among ``candidates`` (all nodes by default), capped at ``max_size``,
    ties broken by lowest indices; returned as a sorted list (empty when no candidates).

    Exact branch and bound in lexicographic order (module doc). ``adj`` is a list of neighbour
    sets or a square boolean matrix.
    """
    if max_size < 1:
        raise ValueError("max_size must be >= 1")
    adj = adj if isinstance(adj, list) else _as_sets(adj)
    nodes = sorted(set(range(len(adj))) if candidates is None else set(candidates))
    nbr = _local_bitsets(adj, nodes)  # ascending, so local order == global order
    best = _clique_search(nbr, (1 << len(nodes)) - 1, max_size)
    return [nodes[i] for i in best]


def _colour_bound_exceeds(p: int, nbr: list[int], need: int) -> bool:
    """Whether a greedy colouring of ``p`` needs more than ``need`` colours (a clique inside
    ``p`` has at most as many nodes as any proper colouring has colours)."""
    colours = 0
    uncoloured = p
    while uncoloured:
        colours += 1
        if colours > need:
            return True
        q = uncoloured
        while q:
            vbit = q & -q
            uncoloured ^= vbit
            q &= ~nbr[vbit.bit_length() - 1] & ~vbit
    return False


def _clique_search(nbr: list[int], mask: int, cap: int) -> tuple[int, ...]:
    """Lexicographically smallest clique of size ``min(omega, cap)`` among the nodes of
    ``mask`` (local bit indices), as sorted local indices.

    Depth-first over cliques written as ascending sequences, children in ascending order: the
    visit order is the lexicographic order of the sequences, so the first clique found of any
    size is the lexicographically smallest of that size. A branch is cut when the greedy
    colouring of its candidates shows it cannot beat the best size so far (a later clique of
    equal size would be lexicographically larger anyway), and the search stops at ``cap``.
    Iterative (an explicit stack) so a huge clique cannot hit the recursion limit.
    """
    if mask == 0:
        return ()
    low = mask & -mask
    best: tuple[int, ...] = (low.bit_length() - 1,)
    if cap == 1:
        return best
    stack: list[list] = [[(), mask]]
    while stack:
        frame = stack[-1]
        r, p = frame
        need = len(best) - len(r)  # the branch must add more than this many nodes
        if p.bit_count() <= need or not _colour_bound_exceeds(p, nbr, need):
            stack.pop()
            continue
        vbit = p & -p
        v = vbit.bit_length() - 1
        p ^= vbit
        frame[1] = p
        new_r = (*r, v)
        if len(new_r) > len(best):
            best = new_r
            if len(best) == cap:
                return best
        new_p = p & nbr[v]
        if new_p:
            stack.append([new_r, new_p])
    return best


# --------------------------------------------------------------------------------------------
# repeated maximum cliques


def repeated_cliques(nbr: list[int], min_size: int, max_size: int) -> list[tuple[int, ...]]:
    """The repeated maximum cliques of one component given as neighbour bitsets (local
    indices), in the order they are found (largest first; within a size, lexicographically)."""
    if not 1 <= min_size <= max_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
    out: list[tuple[int, ...]] = []
    alive = (1 << len(nbr)) - 1
    cap, after = max_size, -1
    while alive.bit_count() >= min_size:
        # Removing nodes never makes a larger clique, so the last size caps the next search,
        # which stops at the first clique of that size. And the clique just removed was the
        # lexicographically first of its size, so any other clique of that size starts
        # after its first node: look there first; only when none is left, search it all
        # for the next smaller size. Same cliques as a fresh search each time, found sooner.
        clique: tuple[int, ...] = ()
        if after >= 0:
            clique = _clique_search(nbr, alive & ~((1 << (after + 1)) - 1), cap)
            if len(clique) < cap:
                clique = ()
                cap -= 1
        if cap < min_size:
            break
        if not clique:
            clique = _clique_search(nbr, alive, cap)
        if len(clique) < min_size:
            break
        cap, after = len(clique), clique[0]
        out.append(clique)
        for i in clique:
            alive &= ~(1 << i)
    return out


def repeated_max_cliques_graph(
    adj, min_size: int = DEFAULT_MIN_SIZE, max_size: int = DEFAULT_MAX_SIZE
) -> list[list[int]]:
    """Repeated maximum cliques of a graph (module doc): disjoint sorted groups of
    ``min_size .. max_size`` nodes, largest first, then by lowest indices."""
    if not 1 <= min_size <= max_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
    adj = adj if isinstance(adj, list) else _as_sets(adj)
    groups: list[list[int]] = []
    for comp in connected_components(adj):
        if len(comp) < min_size:
            continue
        nbr = _local_bitsets(adj, comp)  # built once per component; removal is a mask
        groups += [[comp[i] for i in clique] for clique in repeated_cliques(nbr, min_size, max_size)]
    groups.sort(key=lambda g: (-len(g), g))
    return groups


def repeated_max_cliques(
    emb, threshold: float, min_size: int = DEFAULT_MIN_SIZE, max_size: int = DEFAULT_MAX_SIZE
) -> list[list[int]]:
    """Groups of images by repeated maximum cliques of the similarity graph at ``threshold``."""
    return repeated_max_cliques_graph(similarity_graph(emb, threshold), min_size, max_size)


def choose_target(group: Sequence[int], emb) -> tuple[int, list[int]]:
    """``(target, references)`` of a group: the target is the member with the least mean cosine
    to the other members (ties: lowest index); references are the others, ascending.

    ``emb`` holds the embeddings of all images, indexed by the group's ids.
    """
    members = sorted(set(int(g) for g in group))
    if len(members) < 2:
        raise ValueError("a group needs at least 2 members")
    e = l2_normalize(np.asarray(emb)[members]).astype(np.float64)
    sims = e @ e.T
    mean_to_others = (sims.sum(axis=1) - np.diag(sims)) / (len(members) - 1)
    t = int(np.argmin(mean_to_others))  # first minimum: lowest index
    return members[t], members[:t] + members[t + 1 :]
