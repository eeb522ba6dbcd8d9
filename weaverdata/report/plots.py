"""Plots as inline SVG: pure functions from numbers to markup, so a report needs no plotting
library, no JavaScript and no network to show them."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

WIDTH, HEIGHT = 420, 200
PAD_L, PAD_R, PAD_T, PAD_B = 44, 10, 26, 34


def bins_for(values: Sequence[float], bins: int = 20, integer: bool = False) -> list[float]:
    """Bin edges covering the values (integer data: one bin per value up to `bins` values)."""
    lo, hi = min(values), max(values)
    if integer:
        span = int(hi - lo) + 1
        step = max(1, math.ceil(span / bins))
        return [lo - 0.5 + k * step for k in range(math.ceil(span / step) + 1)]
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    step = (hi - lo) / bins
    return [lo + k * step for k in range(bins + 1)]


def histogram_counts(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    counts = [0] * (len(edges) - 1)
    for v in values:
        k = 0
        while k < len(counts) - 1 and v >= edges[k + 1]:
            k += 1
        counts[k] += 1
    return counts


def _fmt(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 or float(x).is_integer() else f"{x:.2f}"


def histogram_svg(values: Sequence[float], title: str, xlabel: str, bins: int = 20, integer: bool = False) -> str:
    """A histogram of `values` with its title, axis label, count range and n."""
    head = f'<figure class="plot"><figcaption>{html.escape(title)} <span class="n">(n={len(values)})</span></figcaption>'
    if not values:
        return head + '<p class="empty">no values</p></figure>'
    edges = bins_for(values, bins, integer)
    counts = histogram_counts(values, edges)
    top = max(counts) or 1
    plot_w, plot_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B
    bar_w = plot_w / len(counts)
    parts = [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{html.escape(title)}">']
    for k, c in enumerate(counts):
        h = plot_h * c / top
        x, y = PAD_L + k * bar_w, PAD_T + plot_h - h
        label = f"{_fmt(edges[k])} to {_fmt(edges[k + 1])}: {c}"
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" class="bar"><title>{html.escape(label)}</title></rect>')
    axis_y = PAD_T + plot_h
    parts.append(f'<line x1="{PAD_L}" y1="{axis_y}" x2="{WIDTH - PAD_R}" y2="{axis_y}" class="axis"/>')
    parts.append(f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{axis_y}" class="axis"/>')
    parts.append(f'<text x="{PAD_L - 4}" y="{PAD_T + 4}" text-anchor="end" class="tick">{top}</text>')
    parts.append(f'<text x="{PAD_L - 4}" y="{axis_y}" text-anchor="end" class="tick">0</text>')
    first, last = (edges[0] + 0.5, edges[-1] - 0.5) if integer else (edges[0], edges[-1])  # integers: the values, not the bin edges
    parts.append(f'<text x="{PAD_L}" y="{axis_y + 14}" text-anchor="start" class="tick">{_fmt(first)}</text>')
    parts.append(f'<text x="{WIDTH - PAD_R}" y="{axis_y + 14}" text-anchor="end" class="tick">{_fmt(last)}</text>')
    parts.append(f'<text x="{PAD_L + plot_w / 2:.0f}" y="{HEIGHT - 4}" text-anchor="middle" class="label">{html.escape(xlabel)}</text>')
    parts.append("</svg>")
    return head + "".join(parts) + "</figure>"


def bars_svg(counts: dict[str, int], title: str) -> str:
    """Horizontal bars, one per key, largest first (reject reasons, groups)."""
    head = f'<figure class="plot"><figcaption>{html.escape(title)} <span class="n">(total {sum(counts.values())})</span></figcaption>'
    if not counts:
        return head + '<p class="empty">none</p></figure>'
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    row_h, label_w = 20, 190
    height = row_h * len(items) + 8
    top = max(counts.values()) or 1
    parts = [f'<svg viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" aria-label="{html.escape(title)}">']
    for k, (name, n) in enumerate(items):
        y = 4 + k * row_h
        w = (WIDTH - label_w - 50) * n / top
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" class="tick">{html.escape(name[:32])}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{max(w, 1):.1f}" height="{row_h - 6}" class="bar"><title>{html.escape(name)}: {n}</title></rect>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 14}" class="tick">{n}</text>')
    parts.append("</svg>")
    return head + "".join(parts) + "</figure>"
