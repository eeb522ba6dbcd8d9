"""From accepted images and their embeddings to candidate reference samples: pure planning.

Input: one :class:`ImageMeta` per accepted image (decoded, passed the quality filters) and the
images' unit-norm CLIP embeddings, aligned by position. Output: :class:`SamplePlan` rows (a
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
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from weaverdata.refs import grouping, knn
from weaverdata.refs.band import Thresholds
from weaverdata.refs.shots import pair_frames

# why an accepted image is in no sample
NO_PAIR = "no_pair"  # video: no frame at the wanted interval inside its shot
NO_GROUP = "no_group"  # collection / document: in no clique of at least min_size images


@dataclass(frozen=True)
class ImageMeta:
    id: str
    source: str  # "video" | "collection" | "document"
    scope: str  # video file, document id, or "" (the whole collection)
    phash: str
    time_s: float = 0.0  # video frames
    shot: int = -1  # video frames: shot number inside the video


@dataclass
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


def video_candidates(images: list[ImageMeta], *, interval_s: float, tolerance_s: float, max_refs: int, stride: int) -> list[tuple[list[int], int, str]]:
    """(reference indices, target index, group) pairs inside shots of every video."""
    by_shot: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, im in enumerate(images):
        if im.source == "video":
            by_shot[(im.scope, im.shot)].append(i)
    out = []
    for (scope, shot), members in sorted(by_shot.items()):
        members.sort(key=lambda i: (images[i].time_s, i))
        times = [images[i].time_s for i in members]
        for refs, target in pair_frames(range(len(members)), times, interval_s, tolerance_s, max_refs, stride):
            out.append(([members[r] for r in refs], members[target], f"{scope}#shot={shot}"))
    return out


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
) -> list[tuple[list[int], int, str]]:
    """Groups of ``indices`` by repeated maximum cliques; the least similar member is the target.

    Up to ``exact_max_images`` the graph has every pair at or above ``edge_threshold``; above,
    its edges are the pairs among each image's ``knn_k`` approximate neighbours
    (``neighbour_pairs(emb, k, low, high, kind=...)``: :func:`weaverdata.refs.knn.mine_pairs`, or
    the Ray-parallel :func:`weaverdata.refs.mining.mine_corpus`, which gives the same pairs)."""
    if len(indices) < min_size:
        return []
    sub = emb[indices]
    if len(indices) <= exact_max_images:
        adj = grouping.similarity_graph(sub, edge_threshold)
    else:
        pairs, _ = neighbour_pairs(sub, knn_k, edge_threshold, 1.0, kind=knn_index)
        adj = grouping.adjacency_from_pairs(len(indices), pairs)
    out = []
    for g, members in enumerate(grouping.repeated_max_cliques_graph(adj, min_size, max_size)):
        target, refs = grouping.choose_target(members, sub)
        out.append(([indices[r] for r in refs], indices[target], f"{group_prefix}clique-{g}"))
    return out


# -- band and plans ---------------------------------------------------------------------------


@dataclass
class Plan:
    samples: list[SamplePlan]
    unused_reason: dict[int, tuple[str, str]]  # image index -> (reason, detail) for images in no sample
    dropped: Counter  # candidate samples dropped, by reason
    thresholds: Thresholds
    candidates: int


def plan_samples(
    images: list[ImageMeta],
    emb: np.ndarray,
    candidates: list[tuple[list[int], int, str]],
    thresholds: Thresholds,
    *,
    text_to_image: str = "none",
    quantile_sample: int = 100_000,
) -> Plan:
    """Apply the band to every candidate, then add text-to-image samples; say why the rest is unused."""
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
    used: set[int] = set()
    for (refs, target, group), cosines in zip(candidates, cos_of):
        kept, kept_cos, kept_ph = [], [], []
        first_drop = None
        for r, c in zip(refs, cosines):
            dist = phash_distance(images[r].phash, images[target].phash) if images[r].phash and images[target].phash else None
            verdict = thresholds.verdict(c, dist)
            if verdict.ok:
                kept.append(r)
                kept_cos.append(round(c, 6))
                kept_ph.append(int(dist) if dist is not None else 64)
            else:
                first_drop = first_drop or (verdict.reason, verdict.detail)
                last_reason[r] = (verdict.reason, f"as reference of {images[target].id}: {verdict.detail}")
        if not kept:
            dropped[first_drop[0]] += 1
            last_reason[target] = (first_drop[0], f"as target: its references failed the band ({first_drop[1]})")
            continue
        kind = images[target].source
        task = "video_dynamics" if kind == "video" else ("single_reference" if len(kept) == 1 else "multi_reference")
        times = [images[r].time_s for r in kept] + [images[target].time_s] if kind == "video" else []
        samples.append(
            SamplePlan(
                id=sample_id(kind, images[target].id, [images[r].id for r in kept]),
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
        used.update(kept)
        used.add(target)
    if text_to_image != "none":
        for i, im in enumerate(images):
            if text_to_image == "all" or i not in used:
                samples.append(SamplePlan(id=sample_id("t2i", im.id, []), task="text_to_image", kind=im.source, target=i, refs=[], group=im.scope or "collection"))
                used.add(i)
    unused: dict[int, tuple[str, str]] = {}
    in_candidate = {i for refs, t, _ in candidates for i in (*refs, t)}
    for i, im in enumerate(images):
        if i in used:
            continue
        if i in last_reason:
            unused[i] = last_reason[i]
        elif i in in_candidate:
            unused[i] = ("no_group", "its group lost every reference")
        elif im.source == "video":
            unused[i] = (NO_PAIR, f"in no pair of shot {im.shot}: not a target (shots.stride, or no frame at the wanted interval before it) nor a target's reference")
        else:
            unused[i] = (NO_GROUP, "similar to no other image above the edge threshold")
    return Plan(samples, unused, dropped, thresholds, len(candidates))


def drop_samples(plan: Plan, failed: dict[str, tuple[str, str]], images: list[ImageMeta]) -> Plan:
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
