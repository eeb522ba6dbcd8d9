"""Per-image quality checks for reference samples: size, aspect ratio, blur, exposure.

:func:`quality_verdict` returns keep, or drop with the first reason that applies, in this
order (cheap header checks first, pixel checks last):

=================  =========================================================================
reason             when
=================  =========================================================================
``too_small``      the shorter side is under ``min_side`` px (MMC4: 150)
``bad_aspect``     ``width / height`` outside ``aspect_range`` (MMC4: 0.5 .. 2)
``blurry``         variance of the Laplacian of the gray image under ``blur_min``
``underexposed``   mean luminance under ``exposure_range[0]``, or more than ``max_clipped``
                   of the pixels at or under ``clip_margin`` (crushed blacks)
``overexposed``    mean luminance over ``exposure_range[1]``, or more than ``max_clipped``
                   of the pixels at or over ``255 - clip_margin`` (blown highlights)
=================  =========================================================================

Gray images are on the 0..255 scale (uint8, or float already scaled). The variance of the
Laplacian depends on resolution and content; compute it on images resized to one fixed size
(for example 512 px on the long side) so that one ``blur_min`` fits a whole run, and prefer
a quantile of the run's own values to a fixed number (as for the similarity band).
"""

from __future__ import annotations

import numpy as np

from weaverdata.engines.checks import Verdict

DEFAULT_MIN_SIDE = 150
DEFAULT_ASPECT_RANGE = (0.5, 2.0)
DEFAULT_CLIP_MARGIN = 5


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an (H, W, 3) RGB image, float64 on the input's scale (a 2-D input is
    returned as float64)."""
    a = np.asarray(rgb, dtype=np.float64)
    if a.ndim == 2:
        return a
    if a.ndim != 3 or a.shape[-1] < 3:
        raise ValueError(f"expected (H, W) or (H, W, 3), got {a.shape}")
    return a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian over the interior pixels (0 for images under
    3x3). Sharp edges give large values, blur small ones."""
    g = np.asarray(gray, dtype=np.float64)
    if g.ndim != 2:
        raise ValueError(f"expected a 2-D gray image, got {g.shape}")
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def exposure_stats(gray: np.ndarray, clip_margin: int = DEFAULT_CLIP_MARGIN) -> tuple[float, float, float]:
    """``(mean luminance, share of pixels <= clip_margin, share >= 255 - clip_margin)``."""
    g = np.asarray(gray, dtype=np.float64)
    if g.size == 0:
        raise ValueError("empty image")
    return float(g.mean()), float((g <= clip_margin).mean()), float((g >= 255 - clip_margin).mean())


def quality_verdict(
    width: int,
    height: int,
    min_side: int | None = DEFAULT_MIN_SIDE,
    aspect_range: tuple[float, float] | None = DEFAULT_ASPECT_RANGE,
    gray: np.ndarray | None = None,
    blur_min: float | None = None,
    exposure_range: tuple[float, float] | None = None,
    *,
    max_clipped: float | None = None,
    clip_margin: int = DEFAULT_CLIP_MARGIN,
) -> Verdict:
    """Keep, or drop with the first failing reason (module doc). Pixel checks run only when
    ``gray`` is given and their threshold is set; ``None`` turns any check off."""
    if width <= 0 or height <= 0:
        return Verdict.drop("too_small", f"{width}x{height}")
    if min_side is not None and min(width, height) < min_side:
        return Verdict.drop("too_small", f"{width}x{height}, shorter side under {min_side}")
    if aspect_range is not None:
        lo, hi = aspect_range
        aspect = width / height
        if not lo <= aspect <= hi:
            return Verdict.drop("bad_aspect", f"aspect {aspect:.3f} outside {lo}..{hi}")
    if gray is None:
        return Verdict.keep()
    if blur_min is not None:
        var = laplacian_variance(gray)
        if var < blur_min:
            return Verdict.drop("blurry", f"Laplacian variance {var:.1f} < {blur_min}")
    if exposure_range is not None or max_clipped is not None:
        mean, dark, bright = exposure_stats(gray, clip_margin)
        if exposure_range is not None:
            lo, hi = exposure_range
            if mean < lo:
                return Verdict.drop("underexposed", f"mean luminance {mean:.1f} < {lo}")
            if mean > hi:
                return Verdict.drop("overexposed", f"mean luminance {mean:.1f} > {hi}")
        if max_clipped is not None:
            if bright > max_clipped and bright >= dark:
                return Verdict.drop("overexposed", f"{bright:.1%} of pixels blown out")
            if dark > max_clipped:
                return Verdict.drop("underexposed", f"{dark:.1%} of pixels crushed black")
            if bright > max_clipped:
                return Verdict.drop("overexposed", f"{bright:.1%} of pixels blown out")
    return Verdict.keep()
