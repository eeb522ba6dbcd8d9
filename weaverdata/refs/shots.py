"""Video: shot boundaries and which frames pair inside a shot (WeGen-style consistency pairs).

Pure functions over frames (numpy arrays), signatures and timestamps; no decoding here.

**Signature.** :func:`frame_signature` downscales a frame to at most 64 px on its long side
(block mean) and takes three HSV histograms: hue (16 bins, plus one "achromatic" bin for
pixels whose saturation or value is under 0.1, whose hue is meaningless), saturation (8 bins)
and value (16 bins). Each histogram is normalised to sum 1/3, so the whole signature sums to 1
and :func:`signature_distance` (total variation, half the L1 distance) lies in [0, 1]: 0 for
identical colour distributions, 1 for disjoint ones. Global histograms ignore where things are,
so panning, camera shake and moving objects inside one shot barely change them, while a cut to
another scene changes them a lot.

**Cut rule** (:func:`detect_cuts`). Let ``d[i]`` be the distance between frames ``i-1`` and
``i``. Frame ``i`` starts a new shot when

1. ``d[i] > threshold`` (absolute content change), and
2. ``d[i] >= ratio * median(d[i-window .. i+window] without d[i])`` (adaptive: the change
   stands out from the local level; fast motion, a flickering light or a noisy encode raise
   every ``d`` in the neighbourhood and so raise the bar, while a real cut is one isolated
   spike). ``ratio=None`` disables this and keeps the plain threshold rule.
3. When ``min_shot > 1``, candidates are accepted strongest first and a candidate that would
   leave a shot shorter than ``min_shot`` frames (between two cuts, or between a cut and either
   end of the video) is dropped (a single flash frame gives two spikes; only one survives).

Gradual transitions (dissolves, fades) spread the change over many frames and are not cuts
under this rule; a dissolve frame pairs with frames on its own side only if it stays in one
shot, which is what :func:`pair_frames` guarantees.

**Pairs** (:func:`pair_frames`). Inside one shot, a target frame ``t`` gets references at the
wanted times ``times[t] - k * interval_s`` for ``k = 1 .. max_refs``: the frame of the shot
nearest each wanted time (ties: the earlier frame), kept only when within ``tolerance_s`` of
it. References are collected for ``k = 1, 2, ...`` and stop at the first wanted time that has
no frame in tolerance (so the references are always the nearest consecutive intervals). A
target without any reference is skipped; after a target is emitted the next one is at least
``stride`` frames later. Every index returned lies inside the shot: no pair crosses a cut.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SIGNATURE_MAX_SIDE = 64
HUE_BINS = 16
SAT_BINS = 8
VAL_BINS = 16
ACHROMATIC = 0.1  # saturation or value below this: hue is meaningless, counted in its own bin
SIGNATURE_SIZE = HUE_BINS + 1 + SAT_BINS + VAL_BINS

DEFAULT_CUT_THRESHOLD = 0.12  # bikes.mp4: in-shot distances <= 0.08, its five cuts 0.155 .. 0.47
DEFAULT_WINDOW = 8
DEFAULT_RATIO = 3.0

Pair = tuple[tuple[int, ...], int]


# --------------------------------------------------------------------------------------------
# signatures


def _downscale(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Block-mean downscale so that the longer side is at most ``max_side`` (float64)."""
    h, w = rgb.shape[:2]
    step = max(1, -(-max(h, w) // max_side))
    if step == 1:
        return rgb.astype(np.float64)
    hh, ww = (h // step) * step, (w // step) * step
    if hh == 0 or ww == 0:  # a very thin frame: sample rows/columns instead of averaging
        return rgb[::step, ::step].astype(np.float64)
    blocks = rgb[:hh, :ww].astype(np.float64).reshape(hh // step, step, ww // step, step, -1)
    return blocks.mean(axis=(1, 3))


def _rgb_to_hsv(rgb01: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HSV of an (..., 3) float array in [0, 1]; hue in [0, 1)."""
    r, g, b = rgb01[..., 0], rgb01[..., 1], rgb01[..., 2]
    v = rgb01.max(axis=-1)
    c = v - rgb01.min(axis=-1)
    s = np.where(v > 0, c / np.where(v > 0, v, 1.0), 0.0)
    safe_c = np.where(c > 0, c, 1.0)
    h = np.where(
        v == r,
        ((g - b) / safe_c) % 6.0,
        np.where(v == g, (b - r) / safe_c + 2.0, (r - g) / safe_c + 4.0),
    )
    h = np.where(c > 0, h / 6.0, 0.0) % 1.0
    return h, s, v


def frame_signature(rgb: np.ndarray) -> np.ndarray:
    """Colour signature of one frame: HSV histograms of a downscaled copy (see module doc).

    :param rgb: an (H, W, 3) RGB frame, uint8 (0..255) or float (0..1); an (H, W) gray frame is
        accepted as its own three channels.
    :returns: a float64 vector of length :data:`SIGNATURE_SIZE` summing to 1.
    """
    a = np.asarray(rgb)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] < 3 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"expected an (H, W, 3) frame, got shape {a.shape}")
    a = a[..., :3]
    scale = 255.0 if np.issubdtype(a.dtype, np.integer) else 1.0
    small = np.clip(_downscale(a, SIGNATURE_MAX_SIDE) / scale, 0.0, 1.0)
    h, s, v = _rgb_to_hsv(small)
    h, s, v = h.ravel(), s.ravel(), v.ravel()
    chromatic = (s >= ACHROMATIC) & (v >= ACHROMATIC)
    hue_bins = np.minimum((h * HUE_BINS).astype(np.int64), HUE_BINS - 1)
    hue_bins = np.where(chromatic, hue_bins, HUE_BINS)  # the extra achromatic bin
    hue_hist = np.bincount(hue_bins, minlength=HUE_BINS + 1)
    sat_hist = np.bincount(np.minimum((s * SAT_BINS).astype(np.int64), SAT_BINS - 1), minlength=SAT_BINS)
    val_hist = np.bincount(np.minimum((v * VAL_BINS).astype(np.int64), VAL_BINS - 1), minlength=VAL_BINS)
    n = float(h.size)
    return np.concatenate([hue_hist, sat_hist, val_hist]).astype(np.float64) / (3.0 * n)


def signature_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance between two signatures, in [0, 1]."""
    return float(0.5 * np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).sum())


def frame_distances(signatures) -> np.ndarray:
    """``d`` of length n-1 with ``d[i-1]`` the distance between frames ``i-1`` and ``i``."""
    sig = np.asarray(signatures, dtype=np.float64)
    if sig.ndim != 2:
        raise ValueError(f"signatures must be (n_frames, dim), got shape {sig.shape}")
    if len(sig) < 2:
        return np.zeros(0, dtype=np.float64)
    return 0.5 * np.abs(np.diff(sig, axis=0)).sum(axis=1)


# --------------------------------------------------------------------------------------------
# cuts and shots


def detect_cuts(
    signatures,
    threshold: float = DEFAULT_CUT_THRESHOLD,
    *,
    window: int = DEFAULT_WINDOW,
    ratio: float | None = DEFAULT_RATIO,
    min_shot: int = 1,
) -> list[int]:
    """Indices of the frames that start a new shot (never 0), ascending. Rule: module doc.

    :param signatures: (n_frames, dim) from :func:`frame_signature` (one row per frame).
    :param threshold: absolute distance a cut must exceed (in [0, 1]).
    :param window: frames on each side whose distances give the local median.
    :param ratio: a cut's distance must be at least ``ratio`` times the local median;
        ``None`` or 0 turns the adaptive part off.
    :param min_shot: minimum shot length in frames (1: no constraint).
    """
    if window < 1:
        raise ValueError("window must be >= 1")
    if min_shot < 1:
        raise ValueError("min_shot must be >= 1")
    d = frame_distances(signatures)
    n_frames = len(d) + 1 if len(d) else len(np.asarray(signatures))
    candidates: list[int] = []
    for pos, di in enumerate(d):
        if not di > threshold:
            continue
        if ratio:
            lo, hi = max(0, pos - window), min(len(d), pos + window + 1)
            around = np.concatenate([d[lo:pos], d[pos + 1 : hi]])
            local = float(np.median(around)) if around.size else 0.0
            if di < ratio * local:
                continue
        candidates.append(pos + 1)
    if min_shot == 1:
        return candidates
    accepted: list[int] = []
    # strongest first; equal strength: earlier frame first (deterministic)
    for cut in sorted(candidates, key=lambda c: (-d[c - 1], c)):
        if cut < min_shot or n_frames - cut < min_shot:
            continue
        if all(abs(cut - other) >= min_shot for other in accepted):
            accepted.append(cut)
    return sorted(accepted)


def shots_from_cuts(n_frames: int, cuts: Sequence[int]) -> list[range]:
    """Shots as frame ranges covering ``0 .. n_frames-1`` in order, split at each cut.

    Cuts outside ``1 .. n_frames-1`` are ignored (a cut at 0 starts the first shot anyway);
    duplicates are ignored.
    """
    if n_frames < 0:
        raise ValueError("n_frames must be >= 0")
    if n_frames == 0:
        return []
    bounds = [0, *sorted({int(c) for c in cuts if 0 < int(c) < n_frames}), n_frames]
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def shot_of(shots: Sequence[range], frame: int) -> int:
    """Index of the shot holding ``frame``."""
    for i, shot in enumerate(shots):
        if frame in shot:
            return i
    raise ValueError(f"frame {frame} is in no shot")


# --------------------------------------------------------------------------------------------
# pairs


def pair_frames(
    shot: range,
    times,
    interval_s: float,
    tolerance_s: float,
    max_refs: int = 1,
    stride: int = 1,
) -> list[Pair]:
    """(reference indices, target index) pairs inside one shot. Rule: module doc.

    :param shot: the frames of the shot (a step-1 range of frame indices).
    :param times: timestamps in seconds of all frames of the video (indexed by frame index);
        non-decreasing inside the shot.
    :param interval_s: wanted time between a target and its nearest reference (> 0).
    :param tolerance_s: how far from a wanted time a reference may be (>= 0).
    :param max_refs: at most this many references (at 1, 2, ... intervals before the target).
    :param stride: the next target is at least this many frames after the previous one.
    :returns: ``[((ref, ...), target), ...]``, references oldest first, targets ascending.
    """
    if interval_s <= 0:
        raise ValueError("interval_s must be > 0")
    if tolerance_s < 0:
        raise ValueError("tolerance_s must be >= 0")
    if max_refs < 1 or stride < 1:
        raise ValueError("max_refs and stride must be >= 1")
    if shot.step != 1:
        raise ValueError("shot must be a step-1 range")
    if len(shot) < 2:
        return []
    t_all = np.asarray(times, dtype=np.float64)
    if shot.start < 0 or shot.stop > len(t_all):
        raise ValueError(f"shot {shot} is outside the {len(t_all)} timestamps")
    t = t_all[shot.start : shot.stop]
    if np.any(np.diff(t) < 0):
        raise ValueError("timestamps decrease inside the shot")
    pairs: list[Pair] = []
    next_target = 0
    for local in range(1, len(t)):
        if local < next_target:
            continue
        refs: list[int] = []
        for k in range(1, max_refs + 1):
            wanted = t[local] - k * interval_s
            j = _nearest(t, local, wanted)
            if j is None or abs(t[j] - wanted) > tolerance_s:
                break
            if refs and j >= refs[-1]:  # same frame as the previous reference: no new frame
                break
            refs.append(j)
        if refs:
            pairs.append((tuple(shot.start + j for j in reversed(refs)), shot.start + local))
            next_target = local + stride
    return pairs


def _nearest(t: np.ndarray, end: int, wanted: float) -> int | None:
    """Index in ``t[:end]`` (sorted) nearest ``wanted``; ties go to the earlier index."""
    if end <= 0:
        return None
    pos = int(np.searchsorted(t[:end], wanted, side="left"))
    best = None
    for j in (pos - 1, pos):
        if 0 <= j < end and (best is None or abs(t[j] - wanted) < abs(t[best] - wanted)):
            best = j
    # leftmost among equal timestamps at the same distance
    while best is not None and best > 0 and t[best - 1] == t[best]:
        best -= 1
    return best


def mine_video_pairs(
    signatures,
    times,
    *,
    interval_s: float,
    tolerance_s: float,
    max_refs: int = 1,
    stride: int = 1,
    threshold: float = DEFAULT_CUT_THRESHOLD,
    window: int = DEFAULT_WINDOW,
    ratio: float | None = DEFAULT_RATIO,
    min_shot: int = 1,
) -> tuple[list[range], list[Pair]]:
    """Cuts, shots and pairs of one video in one call: ``(shots, pairs)``."""
    sig = np.asarray(signatures, dtype=np.float64)
    if len(sig) != len(times):
        raise ValueError(f"{len(sig)} signatures but {len(times)} timestamps")
    cuts = detect_cuts(sig, threshold, window=window, ratio=ratio, min_shot=min_shot)
    shots = shots_from_cuts(len(sig), cuts)
    pairs = [p for shot in shots for p in pair_frames(shot, times, interval_s, tolerance_s, max_refs, stride)]
    return shots, pairs
