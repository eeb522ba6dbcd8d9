"""Exact and near-duplicate documents: normalised-text hashes and MinHash with LSH bands. Pure.

* Exact: sha256 of the text lower-cased with runs of whitespace and punctuation collapsed.
* Near: MinHash signatures (``num_perm`` universal hashes of word ``shingle``-grams), banded
  (``bands`` x ``rows`` = ``num_perm``) so that two documents share a bucket with probability
  ``1 - (1 - J^rows)^bands`` for Jaccard similarity ``J``; candidates in a bucket are confirmed
  by their estimated Jaccard (fraction of equal signature slots) >= ``threshold``. The defaults
  (128 = 16 x 8, threshold 0.8) are datatrove's and the FineWeb pipeline's order of magnitude.

The first document (in input order) of each duplicate cluster is kept; the others are dropped
with ``duplicate_exact`` or ``duplicate_near`` and the id of the kept one.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

_MERSENNE = np.uint64((1 << 61) - 1)
_MAX_HASH = np.uint64((1 << 32) - 1)
_WORDS = re.compile(r"\w+", re.UNICODE)


def normalise(text: str) -> str:
    return " ".join(_WORDS.findall(text.lower()))


def exact_key(text: str) -> str:
    return hashlib.sha256(normalise(text).encode()).hexdigest()


def shingles(text: str, n: int = 5) -> set[int]:
    words = normalise(text).split()
    if len(words) < n:
        grams = [" ".join(words)] if words else []
    else:
        grams = [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    return {int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest(), "little") for g in grams}


@dataclass(frozen=True)
class MinHasher:
    num_perm: int = 128
    bands: int = 16
    shingle: int = 5
    seed: int = 1

    def __post_init__(self) -> None:
        if self.num_perm % self.bands:
            raise ValueError("num_perm must be a multiple of bands")

    @property
    def rows(self) -> int:
        return self.num_perm // self.bands

    def _params(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        a = rng.integers(1, int(_MERSENNE), size=self.num_perm, dtype=np.uint64)
        b = rng.integers(0, int(_MERSENNE), size=self.num_perm, dtype=np.uint64)
        return a, b

    def signature(self, text: str) -> np.ndarray:
        sh = np.fromiter(shingles(text, self.shingle), dtype=np.uint64)
        if sh.size == 0:
            return np.full(self.num_perm, _MAX_HASH, dtype=np.uint64)
        a, b = self._params()
        # (a * x + b) mod p, in 64-bit wrap-around arithmetic then masked: a standard cheap variant
        h = (sh[:, None] * a[None, :] + b[None, :]) % _MERSENNE
        return (h & _MAX_HASH).min(axis=0)


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def fingerprint(text: str, hasher: MinHasher = MinHasher()) -> tuple[str, np.ndarray]:
    """What duplicate detection needs of a text, computed where the text is (a worker): its exact
    key and its MinHash signature (32-bit slots, ``num_perm`` of them)."""
    return exact_key(text), hasher.signature(text).astype(np.uint32)


def duplicates_of(keys: list[str], sigs: list[np.ndarray] | np.ndarray, *, threshold: float = 0.8, hasher: MinHasher = MinHasher()) -> dict[int, tuple[str, int]]:
    """``{index: (reason, index of the kept document)}`` for every dropped document, from the
    fingerprints alone (the texts need not be in this process): the first of each cluster, in
    the given order, is kept."""
    dropped: dict[int, tuple[str, int]] = {}
    first_by_key: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k in first_by_key:
            dropped[i] = ("duplicate_exact", first_by_key[k])
        else:
            first_by_key[k] = i
    survivors = [i for i in range(len(keys)) if i not in dropped]
    rows = hasher.rows
    buckets: dict[tuple[int, bytes], list[int]] = {}
    for i in survivors:
        s = sigs[i]
        for band in range(hasher.bands):
            buckets.setdefault((band, s[band * rows : (band + 1) * rows].tobytes()), []).append(i)
    for i in survivors:  # input order: the earliest of a cluster is kept
        if i in dropped:
            continue
        s = sigs[i]
        for band in range(hasher.bands):
            for j in buckets[(band, s[band * rows : (band + 1) * rows].tobytes())]:
                if j > i and j not in dropped and jaccard_estimate(s, sigs[j]) >= threshold:
                    dropped[j] = ("duplicate_near", i)
    return dropped


def find_duplicates(texts: list[str], *, threshold: float = 0.8, hasher: MinHasher = MinHasher()) -> dict[int, tuple[str, int]]:
    """``{index: (reason, index of the kept document)}`` for every dropped document."""
    prints = [fingerprint(t, hasher) for t in texts]
    return duplicates_of([k for k, _ in prints], [s for _, s in prints], threshold=threshold, hasher=hasher)
