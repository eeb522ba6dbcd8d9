"""Whether a reference stays next to its target: the similarity band and near-copy checks.

A reference must show the same subject as the target (cosine at least ``low``) without being a
copy of it (cosine at most ``high``, and perceptual-hash Hamming distance above ``phash_min``;
MMC4 treats a distance of 5 or less as a near-duplicate). The band is inclusive:
``low <= cos <= high`` keeps.

=========================  ====================================================================
reason                     when
=========================  ====================================================================
``too_dissimilar``         ``cos < low``: probably another subject
``near_duplicate``         ``cos > high``: the embedding says it is a copy
``near_duplicate_phash``   ``phash_dist <= phash_min``: the pixels say it is a copy (checked
                           after the cosine, so a copy that fails both gets ``near_duplicate``)
=========================  ====================================================================

Thresholds are absolute numbers or quantiles of a sample of the run's own scores
(:class:`Thresholds`): the right cosine depends on the embedding model (DataComp: CLIP B/32
0.25-0.28 against a top-30 % rule for L/14), so a quantile is more portable than a number.
A quantile-mode :class:`Thresholds` is resolved to numbers once per run with
:meth:`Thresholds.resolve`, and the resolved numbers are what the run records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from weaverdata.engines.checks import Verdict

__all__ = [
    "DEFAULT_PHASH_MIN",
    "Thresholds",
    "Verdict",
    "band_verdict",
    "quantile_thresholds",
    "reference_verdicts",
    "sample_scores",
]

DEFAULT_PHASH_MIN = 5  # MMC4: Hamming distance <= 5 of a 64-bit pHash is a near-duplicate


def band_verdict(
    cos: float,
    phash_dist: int | None,
    low: float,
    high: float,
    phash_min: int | None = DEFAULT_PHASH_MIN,
) -> Verdict:
    """Keep a reference, or drop it with ``too_dissimilar`` / ``near_duplicate`` /
    ``near_duplicate_phash`` (module doc). ``phash_dist=None`` or ``phash_min=None`` skips the
    hash check. A NaN cosine is ``too_dissimilar`` (it is not evidence of the same subject)."""
    if low > high:
        raise ValueError(f"low {low} is above high {high}")
    cos = float(cos)
    if math.isnan(cos) or cos < low:
        return Verdict.drop("too_dissimilar", f"cos {cos:.4f} < {low:.4f}")
    if cos > high:
        return Verdict.drop("near_duplicate", f"cos {cos:.4f} > {high:.4f}")
    if phash_dist is not None and phash_min is not None and int(phash_dist) <= phash_min:
        return Verdict.drop("near_duplicate_phash", f"phash distance {int(phash_dist)} <= {phash_min}")
    return Verdict.keep()


def quantile_thresholds(scores_sample, low_q: float, high_q: float) -> tuple[float, float]:
    """``(low, high)``: the ``low_q`` and ``high_q`` quantiles (linear interpolation) of a sample
    of scores. NaNs are ignored.

    :raises ValueError: for quantiles outside ``0 <= low_q <= high_q <= 1`` or an empty sample.
    """
    if not 0.0 <= low_q <= high_q <= 1.0:
        raise ValueError(f"need 0 <= low_q <= high_q <= 1, got {low_q}, {high_q}")
    s = np.asarray(scores_sample, dtype=np.float64).ravel()
    s = s[~np.isnan(s)]
    if s.size == 0:
        raise ValueError("cannot take quantiles of an empty score sample")
    low, high = np.quantile(s, [low_q, high_q])
    return float(low), float(high)


def sample_scores(scores, max_n: int = 100_000, seed: int = 0) -> np.ndarray:
    """A uniform random sample (without replacement, fixed seed) of at most ``max_n`` scores,
    for :func:`quantile_thresholds`; the scores themselves when there are few enough."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size <= max_n:
        return s
    idx = np.random.default_rng(seed).choice(s.size, size=max_n, replace=False)
    return s[np.sort(idx)]


@dataclass(frozen=True)
class Thresholds:
    """The band, absolute or as quantiles.

    In ``"absolute"`` mode ``low`` and ``high`` are cosines. In ``"quantile"`` mode they are
    quantiles in [0, 1] of the run's own score sample, and :meth:`resolve` turns them into an
    absolute :class:`Thresholds` (which remembers the quantiles and the sample size it came
    from, for the run summary).
    """

    low: float
    high: float
    mode: Literal["absolute", "quantile"] = "absolute"
    phash_min: int | None = DEFAULT_PHASH_MIN
    quantiles: tuple[float, float] | None = None  # set by resolve(): where low/high came from
    sample_size: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("absolute", "quantile"):
            raise ValueError(f"mode must be 'absolute' or 'quantile', got {self.mode!r}")
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.mode == "quantile" and not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError("quantile thresholds must lie in [0, 1]")

    @classmethod
    def absolute(cls, low: float, high: float, phash_min: int | None = DEFAULT_PHASH_MIN) -> Thresholds:
        return cls(low, high, "absolute", phash_min)

    @classmethod
    def quantile(cls, low_q: float, high_q: float, phash_min: int | None = DEFAULT_PHASH_MIN) -> Thresholds:
        return cls(low_q, high_q, "quantile", phash_min)

    @property
    def resolved(self) -> bool:
        return self.mode == "absolute"

    def resolve(self, scores_sample: Sequence[float] | np.ndarray | None = None) -> Thresholds:
        """Absolute thresholds: ``self`` in absolute mode, else the quantiles of the sample."""
        if self.mode == "absolute":
            return self
        if scores_sample is None:
            raise ValueError("quantile thresholds need a sample of scores to resolve")
        s = np.asarray(scores_sample, dtype=np.float64).ravel()
        low, high = quantile_thresholds(s, self.low, self.high)
        return replace(
            self,
            low=low,
            high=high,
            mode="absolute",
            quantiles=(self.low, self.high),
            sample_size=int(np.count_nonzero(~np.isnan(s))),
        )

    def verdict(self, cos: float, phash_dist: int | None = None) -> Verdict:
        """:func:`band_verdict` under these (resolved) thresholds."""
        if self.mode != "absolute":
            raise ValueError("resolve() quantile thresholds before judging scores")
        return band_verdict(cos, phash_dist, self.low, self.high, self.phash_min)


def reference_verdicts(
    cos: Sequence[float], phash_dists: Sequence[int | None] | None, thresholds: Thresholds
) -> list[Verdict]:
    """One verdict per reference of a target (cosines and pHash distances to the target)."""
    dists = [None] * len(cos) if phash_dists is None else list(phash_dists)
    if len(dists) != len(cos):
        raise ValueError(f"{len(cos)} cosines but {len(dists)} phash distances")
    return [thresholds.verdict(c, d) for c, d in zip(cos, dists, strict=True)]
