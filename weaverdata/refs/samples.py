"""From accepted images and their embeddings to candidate reference samples: pure planning.

Input: the accepted images (decoded, passed the quality filters) as :class:`Images`, columns
of per-image fields (numpy arrays, no object per image; a list of :class:`ImageMeta` is turned
into columns by :meth:`Images.of`), and the images' unit-norm CLIP embeddings, aligned by
position. Output: :class:`SamplePlan` rows (a
target, its references and the scores each reference was kept on) and, for every image that
ended in no plan, the reason why. No I/O, no Ray, no models: the recipe
(:mod:`weaverdata.recipes.build_refs`) reads, embeds, captions and writes around this.

Candidates by source:

* ``video``: per video, the sampled frames are cut into shots (their ``shot`` numbers, from
  :func:`weaverdata.refs.shots.detect_cuts` on every decoded frame); inside a shot,
  :func:`weaverdata.refs.shots.pair_frames` pairs a target with the frames ``interval_s``
  (and 2 x, ... up to ``max_refs``) before it. A pair never crosses a cut.
* ``collection``: all images of the run form one similarity graph (all pairs when small, the
  approximate neighbours of :mod:`weaverdata.refs.knn` otherwise); groups are repeated maximum
  cliques of 2 to 6 images, and the member least similar to the others is the target.
* ``documents``: the same, inside each document only.

Every reference then passes the similarity band (:mod:`weaverdata.refs.band`): cosine to the
target in [low, high] and pHash distance above ``phash_min``. A candidate left without a
reference is dropped; its reason is the first failing reference's.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from weaverdata.refs import grouping, knn
from weaverdata.refs.band import Thresholds
from weaverdata.refs.components import groups_of_edges, order_groups
from weaverdata.refs.shots import pair_frames

# why an accepted image is in no sample
NO_PAIR = "no_pair"  # video: no frame at the wanted interval inside its shot
NO_GROUP = "no_group"  # collection / document: in no clique of at least min_size images


SOURCES = ("video", "collection", "document")


@dataclass(frozen=True)
class ImageMeta:
    id: str
    source: str  # "video" | "collection" | "document"
    scope: str  # video file, document id, or "" (the whole collection)
    phash: str
    time_s: float = 0.0  # video frames
    shot: int = -1  # video frames: shot number inside the video


@dataclass
class Images:
    """Per-image fields as columns, row ``i`` being image ``i`` (a few dozen bytes per image,
    no Python object per image)."""

    ids: np.ndarray  # str (fixed width)
    source: np.ndarray  # int8: index into SOURCES
    scope: np.ndarray  # int32: index into scopes
    scopes: list[str]  # distinct scopes
    phash: np.ndarray  # uint64 (0 when missing)
    has_phash: np.ndarray  # bool
    time_s: np.ndarray  # float64
    shot: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def of(images: Images | Sequence[ImageMeta]) -> Images:
        """Columns from a list of :class:`ImageMeta` (an :class:`Images` is returned as is)."""
        if isinstance(images, Images):
            return images
        return Images.from_columns([m.id for m in images], [m.source for m in images], [m.scope for m in images],
                                   [m.phash for m in images], [m.time_s for m in images], [m.shot for m in images])

    @staticmethod
    def from_columns(ids, source, scope, phash, time_s, shot, *, chunk: int = 1 << 16) -> Images:
        """Columns from sequences or Arrow arrays of the :class:`ImageMeta` fields; converted
        ``chunk`` rows at a time, so no list of the whole column is ever made."""
        import pyarrow as pa
        import pyarrow.compute as pc

        def arrow(x, typ):
            return x if isinstance(x, (pa.Array, pa.ChunkedArray)) else pa.array(x, typ)

        ids_a, src_a, scope_a, ph_a = arrow(ids, pa.string()), arrow(source, pa.string()), arrow(scope, pa.string()), arrow(phash, pa.string())
        n = len(ids_a)
        bad = pc.invert(pc.is_in(src_a, value_set=pa.array(SOURCES)))
        if n and pc.any(bad).as_py():
            raise ValueError(f"unknown image source {pc.filter(src_a, bad)[0].as_py()!r} (one of {', '.join(SOURCES)})")
        code = pc.index_in(src_a, value_set=pa.array(SOURCES))
        enc = pc.dictionary_encode(scope_a)
        enc = enc.combine_chunks() if isinstance(enc, pa.ChunkedArray) else enc
        width = max(1, pc.max(pc.utf8_length(ids_a)).as_py() or 1) if n else 1
        id_col = np.empty(n, dtype=f"<U{width}")
        ph = np.zeros(n, dtype=np.uint64)
        has = np.zeros(n, dtype=bool)
        for start in range(0, n, chunk):
            part = ids_a.slice(start, chunk)
            id_col[start : start + len(part)] = part.to_numpy(zero_copy_only=False)
            hexes = ph_a.slice(start, chunk).to_pylist()
            ph[start : start + len(hexes)] = [int(h, 16) if h else 0 for h in hexes]
            has[start : start + len(hexes)] = [bool(h) for h in hexes]
        return Images(
            ids=id_col,
            source=np.asarray(code.to_numpy(zero_copy_only=False), dtype=np.int8) if n else np.zeros(0, np.int8),
            scope=np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int32) if n else np.zeros(0, np.int32),
            scopes=enc.dictionary.to_pylist() if n else [],
            phash=ph,
            has_phash=has,
            time_s=np.asarray(arrow(time_s, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64),
            shot=np.asarray(arrow(shot, pa.int32()).to_numpy(zero_copy_only=False), dtype=np.int32),
        )

    def take(self, rows) -> Images:
        rows = np.asarray(rows, dtype=np.int64)
        return Images(self.ids[rows], self.source[rows], self.scope[rows], self.scopes, self.phash[rows], self.has_phash[rows], self.time_s[rows], self.shot[rows])

    def source_of(self, i: int) -> str:
        return SOURCES[int(self.source[i])]

    def scope_of(self, i: int) -> str:
        return self.scopes[int(self.scope[i])]

    def indices_of(self, source: str) -> np.ndarray:
        return np.flatnonzero(self.source == SOURCES.index(source))


@dataclass(slots=True)
class SamplePlan:
    id: str
    task: str  # text_to_image | single_reference | multi_reference | video_dynamics
    kind: str  # video | collection | document
    target: int  # index into the image list
    refs: list[int]  # indices, oldest / most similar order as mined
    cosines: list[float] = field(default_factory=list)
    phash_distances: list[int] = field(default_factory=list)
    group: str = ""  # shot id, clique id or document id
    times_s: list[float] = field(default_factory=list)  # video: references then target


def phash_distance(a: str, b: str) -> int:
    """Hamming distance of two 16-hex-digit (64-bit) perceptual hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def sample_id(kind: str, target_id: str, ref_ids: list[str]) -> str:
    """Stable id of a sample from its members (never equal to an image id: another hash input)."""
    h = hashlib.blake2b(("refs|" + kind + "|" + target_id + "|" + ",".join(ref_ids)).encode(), digest_size=12)
    return "s" + h.hexdigest()


# -- candidates ------------------------------------------------------------------------------


def video_candidates(images: Images | Sequence[ImageMeta], *, interval_s: float, tolerance_s: float, max_refs: int, stride: int) -> list[tuple[list[int], int, str]]:
    """(reference indices, target index, group) pairs inside shots of every video, shot after
    shot in order of (video, shot)."""
    im = Images.of(images)
    video = im.indices_of("video")
    if not len(video):
        return []
    scope_rank = np.empty(len(im.scopes), dtype=np.int64)
    scope_rank[sorted(range(len(im.scopes)), key=im.scopes.__getitem__)] = np.arange(len(im.scopes))
    rank, shot, time = scope_rank[im.scope[video]], im.shot[video], im.time_s[video]
    video = video[np.lexsort((video, time, shot, rank))]  # by (video, shot), then (time, index)
    rank, shot = scope_rank[im.scope[video]], im.shot[video]
    starts = np.flatnonzero(np.r_[True, (rank[1:] != rank[:-1]) | (shot[1:] != shot[:-1])])
    out = []
    for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(video)]):
        members = video[a:b].tolist()
        times = im.time_s[members].tolist()
        group = f"{im.scope_of(members[0])}#shot={int(im.shot[members[0]])}"
        for refs, target in pair_frames(range(len(members)), times, interval_s, tolerance_s, max_refs, stride):
            out.append(([members[r] for r in refs], members[target], group))
    return out


LOCAL_MAX_IMAGES = 2048
"""Up to this many images (or ``exact_max_images``, if lower) a grouping runs in this process;
above, in the ``grouper`` given (Ray tasks), if any."""


def clique_candidates(
    emb: np.ndarray,
    indices: list[int],
    *,
    edge_threshold: float,
    min_size: int,
    max_size: int,
    exact_max_images: int,
    knn_k: int,
    knn_index: str,
    group_prefix: str,
    neighbour_pairs: Callable[..., tuple[np.ndarray, np.ndarray]] = knn.mine_pairs,
    grouper: Callable[..., list[tuple[int, list[int]]]] | None = None,
) -> list[tuple[list[int], int, str]]:
    """Groups of ``indices`` by repeated maximum cliques; the least similar member is the target.

    Up to ``exact_max_images`` the graph has every pair at or above ``edge_threshold``
    (:func:`weaverdata.refs.grouping.similarity_edges`); above, its edges are the pairs among
    each image's ``knn_k`` approximate neighbours (``neighbour_pairs(emb, k, low, high,
    kind=...)``: :func:`weaverdata.refs.knn.mine_pairs`, or the Ray-parallel
    :func:`weaverdata.refs.mining.mine_corpus`, which gives the same pairs). Either graph is
    grouped from its edge arrays (:func:`weaverdata.refs.components.groups_of_edges`).

    Above :data:`LOCAL_MAX_IMAGES` images (or ``exact_max_images``, if lower) a ``grouper`` may
    do the whole grouping instead: ``grouper(emb, k, threshold, min_size, max_size, kind=...)``
    with ``kind`` ``"exact"`` (all pairs) or ``knn_index``, returning ``(target, references)``
    per group in the order of :func:`weaverdata.refs.grouping.repeated_max_cliques_graph`
    (:func:`weaverdata.refs.mining.group_corpus`: components of the graph, cliques per batch of
    components in Ray tasks, so no process holds all edges); the groups are the same."""
    if len(indices) < min_size:
        return []
    sub = emb[indices]
    exact = len(indices) <= exact_max_images
    if grouper is not None and len(indices) > min(exact_max_images, LOCAL_MAX_IMAGES):
        groups = grouper(sub, knn_k, edge_threshold, min_size, max_size, kind="exact" if exact else knn_index)
    else:
        if exact:
            edges = list(grouping.similarity_edges(sub, edge_threshold))
            i = np.concatenate([e[0] for e in edges]) if edges else np.zeros(0, np.int64)
            j = np.concatenate([e[1] for e in edges]) if edges else np.zeros(0, np.int64)
        else:
            pairs, _ = neighbour_pairs(sub, knn_k, edge_threshold, 1.0, kind=knn_index)
            i, j = pairs["i"], pairs["j"]
        groups = order_groups(groups_of_edges(i, j, sub, min_size, max_size)).pairs()
    return [([indices[r] for r in refs], indices[target], f"{group_prefix}clique-{g}") for g, (target, refs) in enumerate(groups)]


# -- band and plans ---------------------------------------------------------------------------


@dataclass
class Plan:
    samples: list[SamplePlan]
    unused_reason: dict[int, tuple[str, str]]  # image index -> (reason, detail) for images in no sample
    dropped: Counter  # candidate samples dropped, by reason
    thresholds: Thresholds
    candidates: int


def plan_samples(
    images: Images | Sequence[ImageMeta],
    emb: np.ndarray,
    candidates: list[tuple[list[int], int, str]],
    thresholds: Thresholds,
    *,
    text_to_image: str = "none",
    quantile_sample: int = 100_000,
) -> Plan:
    """Apply the band to every candidate, then add text-to-image samples; say why the rest is unused."""
    im = Images.of(images)
    e = np.asarray(emb, dtype=np.float32)
    cos_of = [[float(e[r] @ e[t]) for r in refs] for refs, t, _ in candidates]
    if not thresholds.resolved:
        flat = np.array([c for cs in cos_of for c in cs], dtype=np.float64)
        if flat.size == 0:
            thresholds = Thresholds.absolute(-1.0, 1.0, thresholds.phash_min)  # nothing to judge
        else:
            rng = np.random.default_rng(0)
            sample = flat if flat.size <= quantile_sample else rng.choice(flat, quantile_sample, replace=False)
            thresholds = thresholds.resolve(sample)
    samples: list[SamplePlan] = []
    dropped: Counter = Counter()
    last_reason: dict[int, tuple[str, str]] = {}
    used = np.zeros(len(im), dtype=bool)
    in_candidate = np.zeros(len(im), dtype=bool)
    ph, has = im.phash, im.has_phash
    for (refs, target, group), cosines in zip(candidates, cos_of):
        in_candidate[refs] = True
        in_candidate[target] = True
        kept, kept_cos, kept_ph = [], [], []
        first_drop = None
        for r, c in zip(refs, cosines):
            dist = (int(ph[r]) ^ int(ph[target])).bit_count() if has[r] and has[target] else None
            verdict = thresholds.verdict(c, dist)
            if verdict.ok:
                kept.append(r)
                kept_cos.append(round(c, 6))
                kept_ph.append(int(dist) if dist is not None else 64)
            else:
                first_drop = first_drop or (verdict.reason, verdict.detail)
                last_reason[r] = (verdict.reason, f"as reference of {im.ids[target]}: {verdict.detail}")
        if not kept:
            dropped[first_drop[0]] += 1
            last_reason[target] = (first_drop[0], f"as target: its references failed the band ({first_drop[1]})")
            continue
        kind = im.source_of(target)
        task = "video_dynamics" if kind == "video" else ("single_reference" if len(kept) == 1 else "multi_reference")
        times = [float(im.time_s[r]) for r in kept] + [float(im.time_s[target])] if kind == "video" else []
        samples.append(
            SamplePlan(
                id=sample_id(kind, str(im.ids[target]), [str(im.ids[r]) for r in kept]),
                task=task,
                kind=kind,
                target=target,
                refs=kept,
                cosines=kept_cos,
                phash_distances=kept_ph,
                group=group,
                times_s=times,
            )
        )
        used[kept] = True
        used[target] = True
    if text_to_image != "none":
        for i in (range(len(im)) if text_to_image == "all" else np.flatnonzero(~used).tolist()):
            samples.append(SamplePlan(id=sample_id("t2i", str(im.ids[i]), []), task="text_to_image", kind=im.source_of(i), target=i, refs=[], group=im.scope_of(i) or "collection"))
            used[i] = True
    unused: dict[int, tuple[str, str]] = {}
    for i in np.flatnonzero(~used).tolist():
        if i in last_reason:
            unused[i] = last_reason[i]
        elif in_candidate[i]:
            unused[i] = ("no_group", "its group lost every reference")
        elif im.source[i] == SOURCES.index("video"):
            unused[i] = (NO_PAIR, f"in no pair of shot {int(im.shot[i])}: not a target (shots.stride, or no frame at the wanted interval before it) nor a target's reference")
        else:
            unused[i] = (NO_GROUP, "similar to no other image above the edge threshold")
    return Plan(samples, unused, dropped, thresholds, len(candidates))


def drop_samples(plan: Plan, failed: dict[str, tuple[str, str]], images: Images | Sequence[ImageMeta] | None = None) -> Plan:
    """Remove samples whose text failed (sample id -> (reason, detail)); images left in no sample
    take that reason."""
    keep = [s for s in plan.samples if s.id not in failed]
    still_used = {i for s in keep for i in (*s.refs, s.target)}
    unused = dict(plan.unused_reason)
    dropped = Counter(plan.dropped)
    for s in plan.samples:
        if s.id in failed:
            reason, detail = failed[s.id]
            dropped[reason] += 1
            for i in (*s.refs, s.target):
                if i not in still_used:
                    unused[i] = (reason, f"sample {s.id}: {detail}")
    return Plan(keep, unused, dropped, plan.thresholds, plan.candidates)
