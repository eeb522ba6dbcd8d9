"""Embedding helpers shared by the grouping and neighbour search: L2 normalisation."""

from __future__ import annotations

import numpy as np


def l2_normalize(emb, *, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm, as a C-contiguous float32 2-D array.

    A zero row stays zero (its cosine to everything is 0). A 1-D input is one row.

    :raises ValueError: when the array is not 1-D/2-D or holds NaN/inf.
    """
    x = np.asarray(emb, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (n, d), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings hold NaN or inf")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, eps), dtype=np.float32)
