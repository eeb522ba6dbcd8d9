"""Corpus-scale pair mining: one faiss index, query blocks searched in parallel Ray tasks.

:func:`weaverdata.refs.knn.mine_pairs` searches every item of a corpus against the corpus in
one process. :func:`mine_corpus` gives exactly the same ``(pairs_in_band, hard_negatives)``
(same index kind and parameters), with the searching spread over a Ray cluster:

1. **Build once.** The embeddings are L2-normalised and the faiss index is built once, in the
   driver (or passed in already built). The index is serialised to a ``uint8`` numpy array
   (``faiss.serialize_index``) and put in the Ray object store once, beside the normalised
   embeddings: every task reads the same two objects (zero-copy for the embeddings), nothing
   is rebuilt or resent per task.
2. **Search blocks in parallel.** The queries (the corpus rows) are cut into blocks
   (:func:`plan_blocks`). Each block is one Ray task (``num_cpus=task_cpus``, faiss OpenMP
   threads set to the same count) that deserialises the index once, searches its block for the
   ``k + 1`` nearest rows (each row finds itself) and returns its block's unique pairs
   (:func:`weaverdata.refs.knn.unique_pairs` with the block's row ids). At most
   ``parallelism`` tasks are in flight, so at most that many index copies live in workers.
   For an IVF index the rows are taken in the order of its inverted lists, so the queries of a
   block share their nearest cells and the lists they scan stay in cache; the order changes
   no result (each query's search is independent of the others).
3. **Merge.** :func:`merge_block_pairs` concatenates the blocks' pairs and deduplicates them
   (:func:`weaverdata.refs.knn.concat_pairs`): a pair found from both ends in two blocks
   (A→B in one, B→A in another) is kept once, ``i < j``, with its highest score, exactly as
   :func:`~weaverdata.refs.knn.mine_pairs` keeps it; then the band split of ``mine_pairs``.

:func:`group_corpus` uses the same search for the grouping of a corpus too large for one
process: the blocks' pairs stay in the object store, the driver folds them one block at a time
into a union-find (a node array), and the repeated maximum cliques are found per batch of
connected components in Ray tasks (the pure steps are :mod:`weaverdata.refs.components`); the
groups equal those of the single-process grouping of the same pairs.

Everything except :func:`mine_corpus`, :func:`group_corpus` (and :func:`mine_stored`, which
reads embeddings and calls :func:`mine_corpus`) is a plain function of numpy arrays, without Ray. No Python loop runs over rows or
pairs; only over blocks (and, to order an IVF index's rows, over its lists).

Why blocks have a minimum size (:func:`min_query_block`): faiss computes a flat index's (and
an IVF quantizer's) inner products with BLAS when ``queries × d`` reaches
``faiss.cvar.distance_compute_blas_threshold`` and with its own SIMD loop below; the two differ
in the last bit. When the whole corpus would be searched with BLAS, every block is made large
enough to be searched with BLAS too, so each score is the bit-identical float of a
single-process search (BLAS's per-element result does not depend on how many query rows share
the product; checked for the OpenBLAS that faiss-cpu and numpy ship). 1000 rows at ``d=128``,
250 at ``d=512`` with faiss 1.15's defaults.

Memory: the driver holds the normalised embeddings and the serialised index until they are in
the object store (the index itself is freed once serialised, unless the caller holds it); the
store then holds both (about twice the embeddings for ``flat`` and ``ivf``); each running task
holds one deserialised index (for ``flat`` and ``ivf``, about the size of the embeddings) plus
its block's neighbour table. ``hnsw`` graphs built with several threads depend on thread
timing, so two builds of the same data may differ: pass the same prebuilt ``index`` to compare runs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

from weaverdata.refs.components import Groups, batch_groups, component_batches, new_forest, order_groups, spanning_pairs, split_pairs, union_edges
from weaverdata.refs.grouping import block_rows, similarity_block
from weaverdata.refs.knn import (
    PAIR_DTYPE,
    IndexKind,
    _faiss,
    band_split,
    brute_force_knn,
    build_index,
    concat_pairs,
    search,
    unique_pairs,
)
from weaverdata.refs.vectors import l2_normalize

log = logging.getLogger(__name__)

MIN_QUERY_BLOCK = 64
"""Smallest query block whatever the index (see :func:`min_query_block`)."""

MineKind = IndexKind | Literal["numpy"]


# --------------------------------------------------------------------------------------------
# pure parts


def min_query_block(n: int, d: int, uses_faiss: bool = True) -> int:
    """The fewest queries a block may hold so that its scores are bit-identical to one search
    of all ``n`` rows of dimension ``d`` (see the module doc)."""
    if not uses_faiss:
        return MIN_QUERY_BLOCK
    threshold = int(_faiss().cvar.distance_compute_blas_threshold)
    if n * d < threshold:  # the single search uses faiss's own loop, and so does any block
        return MIN_QUERY_BLOCK
    return max(MIN_QUERY_BLOCK, math.ceil(threshold / max(1, d)))


def plan_blocks(n: int, query_block: int, order: np.ndarray | None = None) -> list[np.ndarray]:
    """The query rows of each block: ``max(1, n // query_block)`` blocks of balanced sizes
    (they differ by at most one row, and each holds at least ``query_block`` rows when ``n``
    does), taking the rows in ``order`` (a permutation of ``range(n)``; row order by default)."""
    if query_block < 1:
        raise ValueError(f"query_block must be >= 1 (got {query_block})")
    rows = np.arange(n, dtype=np.int64) if order is None else np.asarray(order, dtype=np.int64)
    if len(rows) != n:
        raise ValueError(f"order holds {len(rows)} rows for a corpus of {n}")
    if n == 0:
        return []
    return np.array_split(rows, max(1, n // query_block))


def ivf_row_order(index: Any) -> np.ndarray | None:
    """The row ids of an IVF index list after list (each row is stored in its nearest cell,
    the first cell its own search scans), or ``None`` for an index without inverted lists."""
    faiss = _faiss()
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return None
    invlists = ivf.invlists
    parts = []
    for lst in range(ivf.nlist):
        size = invlists.list_size(lst)
        if size:
            ptr = invlists.get_ids(lst)
            parts.append(faiss.rev_swig_ptr(ptr, size).astype(np.int64))
            invlists.release_ids(lst, ptr)
    if not parts:
        return np.empty(0, dtype=np.int64)
    return np.concatenate(parts)


def serialize_index(index: Any) -> np.ndarray:
    """A faiss index as a ``uint8`` array (what goes into the object store), written in
    chunks: no second full-size copy on the way, unlike ``faiss.serialize_index``."""
    faiss = _faiss()
    buf = bytearray()
    writer = faiss.PyCallbackIOWriter(buf.extend)
    faiss.write_index(index, writer)
    del writer
    return np.frombuffer(buf, dtype=np.uint8)


def deserialize_index(buf: np.ndarray) -> Any:
    """The index of :func:`serialize_index`, read in 1 MiB chunks straight from ``buf`` (which
    may be a read-only, zero-copy array from the object store)."""
    faiss = _faiss()
    view = memoryview(np.ascontiguousarray(buf, dtype=np.uint8)).cast("B")
    pos = 0

    def read(size: int) -> bytes:
        nonlocal pos
        chunk = view[pos : pos + size].tobytes()
        pos += len(chunk)
        return chunk

    reader = faiss.PyCallbackIOReader(read, 1 << 20)
    try:
        return faiss.read_index(reader)
    finally:
        del reader


def search_block(index: Any, emb: np.ndarray, rows: np.ndarray, kk: int) -> np.ndarray:
    """Unique pairs between the corpus rows ``rows`` and their ``kk`` nearest rows of ``emb``
    (normalised), searched in ``index`` (faiss, holding ``emb``) or, when ``index`` is
    ``None``, by :func:`~weaverdata.refs.knn.brute_force_knn`."""
    queries = emb[rows]
    if index is None:
        scores, ids = brute_force_knn(emb, kk, queries)
    else:
        scores, ids = search(index, queries, kk)
    return unique_pairs(ids, scores, query_ids=rows)


def merge_block_pairs(
    parts: list[np.ndarray], low: float, high: float, hard_negative_min: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(pairs_in_band, hard_negatives)`` from the blocks' pairs: merged once each (highest
    score), then split as :func:`~weaverdata.refs.knn.mine_pairs` splits them."""
    pairs = concat_pairs(*parts)
    in_band, below, _above = band_split(pairs, low, high)
    if hard_negative_min is not None:
        below = below[below["score"] >= hard_negative_min]
    return in_band, below


# --------------------------------------------------------------------------------------------
# the Ray task


def _search_task(index_buf: np.ndarray | None, emb: np.ndarray, rows: np.ndarray, kk: int, threads: int) -> np.ndarray:
    """One block, in a Ray worker: deserialise the index once, search, return unique pairs."""
    index = None
    if index_buf is not None:
        _faiss().omp_set_num_threads(threads)
        index = deserialize_index(index_buf)
    return search_block(index, emb, rows, kk)


# --------------------------------------------------------------------------------------------
# Ray edge


def _search_blocks(
    emb,
    k: int,
    *,
    kind: MineKind,
    index: Any,
    query_block: int | None,
    parallelism: int | None,
    task_cpus: float,
    order_by_cell: bool,
    info: dict[str, Any],
    index_kwargs: dict[str, Any],
) -> Iterator[tuple[int, Any]]:
    """Steps 1-2 of the module doc: ``(block number, ObjectRef of its unique pairs)`` as the
    blocks finish, at most ``parallelism`` in flight. ``info`` is filled with ``n``, ``kk``,
    ``blocks``, ``query_block``, ``parallelism``, ``build_s`` and ``put_s`` before the first
    block is searched; nothing is yielded when the corpus is too small for a pair."""
    import ray

    from weaverdata.config import RuntimeConfig
    from weaverdata.runtime import check_fits, connect

    t0 = time.perf_counter()
    e = l2_normalize(emb)
    n = len(e)
    kk = min(k + 1, n)  # +1: each item finds itself
    info.update(n=n, kk=kk, blocks=0)
    if kk < 2:
        return

    if not ray.is_initialized():
        connect(RuntimeConfig(progress=False))
    check_fits("mine_corpus", task_cpus)
    if parallelism is None:
        parallelism = max(1, int(ray.cluster_resources().get("CPU", 1.0) / task_cpus))
    if parallelism < 1:
        raise ValueError("parallelism must be >= 1")
    if query_block is None:
        query_block = n // (2 * parallelism)
    query_block = max(query_block, min_query_block(n, e.shape[1], index is not None or kind != "numpy"))
    threads = max(1, int(task_cpus))

    order = None
    if index is not None or kind != "numpy":
        if index is None:
            index = build_index(e, kind, **index_kwargs)
        elif index.ntotal != n:
            raise ValueError(f"the index holds {index.ntotal} rows, the corpus {n}")
        if order_by_cell:
            order = ivf_row_order(index)
    blocks = plan_blocks(n, query_block, order)
    del order
    t_built = time.perf_counter()
    # into the object store, freeing the driver's copies as soon as they are there: at most
    # the embeddings + the index, or the index + its serialised form, at once
    emb_ref = ray.put(e)
    del e
    index_ref = None
    if index is not None:
        index_buf = serialize_index(index)
        index = None
        index_ref = ray.put(index_buf)
        del index_buf
    t_put = time.perf_counter()
    info.update(blocks=len(blocks), query_block=query_block, parallelism=parallelism, build_s=t_built - t0, put_s=t_put - t_built)

    remote = ray.remote(num_cpus=task_cpus, max_retries=2)(_search_task)
    info["search_start"] = time.perf_counter()
    pending: dict[Any, int] = {}
    next_block = 0
    while next_block < len(blocks) or pending:
        while next_block < len(blocks) and len(pending) < parallelism:
            ref = remote.remote(index_ref, emb_ref, blocks[next_block], kk, threads)
            pending[ref] = next_block
            next_block += 1
        done, _ = ray.wait(list(pending), num_returns=1)
        yield pending.pop(done[0]), done[0]


def mine_corpus(
    emb,
    k: int,
    low: float,
    high: float,
    *,
    kind: MineKind = "ivf",
    index: Any = None,
    query_block: int | None = None,
    hard_negative_min: float | None = None,
    parallelism: int | None = None,
    task_cpus: float = 1.0,
    order_by_cell: bool = True,
    stats: dict[str, Any] | None = None,
    **index_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """``(pairs_in_band, hard_negatives)`` among each item's ``k`` nearest other items,
    searched in parallel Ray tasks; the same arrays as
    :func:`weaverdata.refs.knn.mine_pairs` with the same ``kind`` and index parameters.

    Joins the running Ray, or starts a local one (:func:`weaverdata.runtime.connect`).

    :param kind: the faiss index built once in the driver (:func:`~weaverdata.refs.knn.build_index`
        with ``index_kwargs``: ``nlist``, ``nprobe``, ``hnsw_m``, ...), or ``"numpy"`` for exact
        neighbours by :func:`~weaverdata.refs.knn.brute_force_knn` in each task. Ignored when
        ``index`` (a faiss index already holding ``emb``, row ``r`` with id ``r``) is given.
    :param query_block: queries per task, raised to :func:`min_query_block` if below it;
        default: the corpus cut in ``2 * parallelism`` blocks, so each worker deserialises the
        index about twice while a slow worker delays the end by half a share at most.
    :param hard_negative_min: when set, negatives must score at least this.
    :param parallelism: tasks in flight at once (each holds one copy of the index); default:
        the cluster's CPUs divided by ``task_cpus``.
    :param task_cpus: CPUs each task asks Ray for; faiss uses as many OpenMP threads (at least 1).
    :param order_by_cell: for an IVF index, take the rows list after list (faster, same result).
    :param stats: when given, filled with ``blocks``, ``query_block`` (as used),
        ``parallelism``, ``build_s`` (normalise, build, plan), ``put_s`` (serialise, put),
        ``search_s`` (tasks, from first submission to last result), ``merge_s``,
        ``block_pairs`` (the blocks' unique pairs, before merging across blocks).
    """
    import ray

    if min(k + 1, len(emb)) < 2:
        empty = np.empty(0, dtype=PAIR_DTYPE)
        return empty, empty
    if low > high:
        raise ValueError(f"low {low} is above high {high}")
    info: dict[str, Any] = {}
    parts: dict[int, np.ndarray] = {}
    for b, ref in _search_blocks(emb, k, kind=kind, index=index, query_block=query_block, parallelism=parallelism, task_cpus=task_cpus,
                                 order_by_cell=order_by_cell, info=info, index_kwargs=index_kwargs):
        parts[b] = ray.get(ref)
        log.debug("mine_corpus: block %d/%d done (%d pairs)", b + 1, info["blocks"], len(parts[b]))
    t_searched = time.perf_counter()
    ordered = [parts[b] for b in range(info["blocks"])]
    in_band, negatives = merge_block_pairs(ordered, low, high, hard_negative_min)
    t_merged = time.perf_counter()
    if stats is not None:
        stats.update(
            blocks=info["blocks"],
            query_block=info["query_block"],
            parallelism=info["parallelism"],
            build_s=info["build_s"],
            put_s=info["put_s"],
            search_s=t_searched - info["search_start"],
            merge_s=t_merged - t_searched,
            block_pairs=int(sum(len(p) for p in ordered)),
        )
    return in_band, negatives


# --------------------------------------------------------------------------------------------
# grouping by components: the Ray edge of weaverdata.refs.components


def _split_task(pairs: np.ndarray, batch_of: np.ndarray, n_batches: int) -> list[np.ndarray]:
    return split_pairs(pairs, batch_of, n_batches)


def _cliques_task(emb: np.ndarray, low: float, high: float, min_size: int, max_size: int, *parts: np.ndarray) -> Groups:
    return batch_groups(list(parts), emb, low, high, min_size, max_size)


def _forest_task(pairs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """A block's pairs at or above the threshold, as one pair per node for the union-find."""
    hit = pairs[pairs["score"] >= threshold]
    return spanning_pairs(hit["i"], hit["j"])


def _all_pairs_task(e: np.ndarray, start: int, stop: int, threshold: float) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Rows ``start:stop`` against all rows: the block's edges, and its pairs for the union-find."""
    i, j, score = similarity_block(e, start, stop, threshold)
    pairs = np.empty(len(i), dtype=PAIR_DTYPE)
    pairs["i"], pairs["j"], pairs["score"] = i, j, score
    return pairs, spanning_pairs(i, j)


def group_corpus(
    emb,
    k: int,
    threshold: float,
    min_size: int,
    max_size: int,
    *,
    kind: MineKind | Literal["exact"] = "ivf",
    index: Any = None,
    query_block: int | None = None,
    parallelism: int | None = None,
    task_cpus: float = 1.0,
    order_by_cell: bool = True,
    batch_nodes: int | None = None,
    stats: dict[str, Any] | None = None,
    **index_kwargs: Any,
) -> list[tuple[int, list[int]]]:
    """``(target, references)`` per group: the repeated maximum cliques of a graph over
    ``emb``, each with its target (:func:`weaverdata.refs.grouping.choose_target` on ``emb``),
    in the order of :func:`weaverdata.refs.grouping.repeated_max_cliques_graph`; the same groups
    as the single-process grouping of the same edges, without any process holding all edges.

    The edges: with ``kind="exact"`` every pair at or above ``threshold``
    (:func:`weaverdata.refs.grouping.similarity_block` over row blocks of
    :func:`weaverdata.refs.grouping.block_rows`, in Ray tasks); otherwise the pairs of :func:`mine_corpus`
    (``emb``, ``k``, band ``[threshold, 1]``, the same index), searched in Ray tasks.

    1. each block of edges is made by a Ray task (all pairs of a row block, or a neighbour
       search) and stays in the object store; the driver folds one pair per node of each block
       (:func:`weaverdata.refs.components.spanning_pairs`) into a union-find
       (:func:`weaverdata.refs.components.union_edges`: a node array), never the edges;
    2. the components are packed into batches of about ``batch_nodes`` nodes
       (:func:`~weaverdata.refs.components.component_batches`; default: the corpus over
       ``2 x parallelism``, between 1,000 and 100,000);
    3. a Ray task per block cuts its pairs by batch, and a Ray task per batch merges its pairs,
       keeps the edges and finds its cliques and targets
       (:func:`~weaverdata.refs.components.batch_groups`);
    4. the driver orders all groups (:func:`~weaverdata.refs.components.order_groups`).

    ``stats``, when given, gets ``blocks``, ``batches``, ``components`` (of at least
    ``min_size`` nodes), ``largest_component`` and ``groups``.
    """
    import ray

    from weaverdata.config import RuntimeConfig
    from weaverdata.runtime import check_fits, connect

    parent = new_forest(len(emb))
    forests: list[Any] = []
    if kind == "exact":
        if len(emb) < 2:
            return []
        if not ray.is_initialized():
            connect(RuntimeConfig(progress=False))
        check_fits("group_corpus", task_cpus)
        if parallelism is None:
            parallelism = max(1, int(ray.cluster_resources().get("CPU", 1.0) / task_cpus))
        high = math.inf  # every pair at or above the threshold is an edge (a cosine may round above 1)
        e_ref = ray.put(l2_normalize(emb))
        rows = block_rows(len(emb))
        block = ray.remote(num_cpus=task_cpus, max_retries=2, num_returns=2)(_all_pairs_task)
        block_refs = []
        for start in range(0, len(emb), rows):
            pairs_ref, forest_ref = block.remote(e_ref, start, start + rows, threshold)
            block_refs.append(pairs_ref)
            forests.append(forest_ref)
            if len(forests) >= parallelism:  # fold as they come: at most `parallelism` blocks ahead
                a, b = ray.get(forests.pop(0))
                union_edges(parent, a, b)
        del e_ref
    else:
        high = 1.0
        info: dict[str, Any] = {}
        found: dict[int, Any] = {}
        forest = ray.remote(num_cpus=task_cpus, max_retries=2)(_forest_task)
        for b, ref in _search_blocks(emb, k, kind=kind, index=index, query_block=query_block, parallelism=parallelism, task_cpus=task_cpus,
                                     order_by_cell=order_by_cell, info=info, index_kwargs=index_kwargs):
            # any pair at or above the threshold in any block: a superset of the merged edges, so
            # components can only be joined, never split (refs/components.py)
            found[b] = ref
            forests.append(forest.remote(ref, threshold))
        if info["kk"] < 2:
            return []
        parallelism = info["parallelism"]
        block_refs = [found[b] for b in range(info["blocks"])]
        del found
    for ref in forests:  # the blocks' edges stay in the object store; the driver sees one pair per node
        a, b = ray.get(ref)
        union_edges(parent, a, b)
    del forests
    if batch_nodes is None:
        batch_nodes = min(100_000, max(1_000, math.ceil(len(emb) / (2 * parallelism))))
    batch_of = component_batches(parent, min_size, batch_nodes)
    n_batches = int(batch_of.max()) + 1 if len(batch_of) else 0
    if stats is not None:
        sizes = np.bincount(parent, minlength=len(parent))
        big = sizes[sizes >= min_size]
        stats.update(blocks=len(block_refs), batches=n_batches, components=len(big), largest_component=int(big.max()) if len(big) else 0, groups=0)
    del parent
    if n_batches == 0:
        return []
    if n_batches == 1:  # nothing to cut: the batch task keeps the edges of its components
        per_batch = [block_refs]
    else:
        batch_ref = ray.put(batch_of)
        split = ray.remote(num_cpus=task_cpus, max_retries=2, num_returns=n_batches)(_split_task)
        cut = [split.remote(r, batch_ref, n_batches) for r in block_refs]
        per_batch = [[c[b] for c in cut] for b in range(n_batches)]
        del cut, batch_ref
    del block_refs, batch_of
    emb_ref = ray.put(np.asarray(emb))
    cliques = ray.remote(num_cpus=task_cpus, max_retries=2)(_cliques_task)
    results = [cliques.remote(emb_ref, threshold, high, min_size, max_size, *parts) for parts in per_batch]
    del per_batch
    groups = order_groups(Groups.concat(ray.get(results)))
    del results, emb_ref
    if stats is not None:
        stats["groups"] = len(groups)
    return groups.pairs()


def mine_stored(url: str, k: int, low: float, high: float, **kwargs: Any) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(ids, pairs_in_band, hard_negatives)`` for embeddings stored by
    :func:`weaverdata.models.clip.write_embeddings` (``.parquet``, or ``.npy`` + ``.ids.txt``):
    pair fields ``i`` and ``j`` are positions in ``ids``. ``kwargs`` go to :func:`mine_corpus`."""
    from weaverdata.models.clip import read_embeddings

    ids, emb = read_embeddings(url)
    if len(ids) != len(emb):
        raise ValueError(f"{url}: {len(ids)} ids for {len(emb)} embeddings")
    in_band, negatives = mine_corpus(emb, k, low, high, **kwargs)
    return ids, in_band, negatives
