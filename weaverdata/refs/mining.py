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

Everything except :func:`mine_corpus` (and :func:`mine_stored`, which reads embeddings and
calls it) is a plain function of numpy arrays, without Ray. No Python loop runs over rows or
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
from typing import Any, Literal

import numpy as np

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

    from weaverdata.config import RuntimeConfig
    from weaverdata.runtime import check_fits, connect

    t0 = time.perf_counter()
    e = l2_normalize(emb)
    n = len(e)
    kk = min(k + 1, n)  # +1: each item finds itself
    if kk < 2:
        empty = np.empty(0, dtype=PAIR_DTYPE)
        return empty, empty
    if low > high:
        raise ValueError(f"low {low} is above high {high}")

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

    remote = ray.remote(num_cpus=task_cpus, max_retries=2)(_search_task)
    parts: list[np.ndarray | None] = [None] * len(blocks)
    pending: dict[Any, int] = {}
    next_block = 0
    while next_block < len(blocks) or pending:
        while next_block < len(blocks) and len(pending) < parallelism:
            ref = remote.remote(index_ref, emb_ref, blocks[next_block], kk, threads)
            pending[ref] = next_block
            next_block += 1
        done, _ = ray.wait(list(pending), num_returns=1)
        b = pending.pop(done[0])
        parts[b] = ray.get(done[0])
        log.debug("mine_corpus: block %d/%d done (%d pairs)", b + 1, len(blocks), len(parts[b]))
    del emb_ref, index_ref
    t_searched = time.perf_counter()

    in_band, negatives = merge_block_pairs(parts, low, high, hard_negative_min)
    t_merged = time.perf_counter()
    if stats is not None:
        stats.update(
            blocks=len(blocks),
            query_block=query_block,
            parallelism=parallelism,
            build_s=t_built - t0,
            put_s=t_put - t_built,
            search_s=t_searched - t_put,
            merge_s=t_merged - t_searched,
            block_pairs=int(sum(len(p) for p in parts)),
        )
    return in_band, negatives


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
