"""One row of a results file's "summary" block, from the per-repeat seconds of a baseline and a variant.

Every benchmark compares a weaverdata component (the *variant*) with the raw engine it wraps (the
*baseline*) doing the same work, repeated R times and paired by repeat. A row reports the
variant's throughput relative to the baseline's, as a ratio of throughputs: with the same work
on both sides, a throughput ratio is baseline seconds / variant seconds (above 1: the variant is
faster). The row carries the median and the mean of that ratio, its spread over the repeats, and
whether a target is met, which requires the median and the mean both to reach it: a median
alone can hide a minority of slow repeats.

Keys of a row (the table generator and the docs check read exactly these):

    benchmark  id of the benchmark ("writer", "clip", ...)
    name       what is compared, in words
    metric     what the ratio is a ratio of ("MB/s ratio", "images/s ratio", ...)
    median     median variant throughput / median baseline throughput
    mean       mean baseline seconds / mean variant seconds (total work over total time)
    min, max   smallest and largest per-repeat ratio (baseline_s[i] / variant_s[i])
    repeats    number of paired repeats
    target     the ratio the variant must reach, or None (informative row)
    met        median and mean both reach the target; None without a target
    date       ISO 8601 date-time of the run, UTC
    command    the command line that produced the figures

Ratios are rounded to 3 decimals, and `met` is decided on the rounded figures, so that anyone
re-checking a row from its own numbers gets the same answer.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

DECIMALS = 3


def met(median: float, mean: float, target: float | None, higher_is_better: bool = True) -> bool | None:
    """Whether a target is met: the median and the mean both reach it (None without a target).

    With `higher_is_better` False the target is an upper bound instead (both at most `target`).

    >>> met(0.82, 0.43, 0.8)
    False
    >>> met(0.82, 0.81, 0.8)
    True
    >>> met(0.82, 0.81, None) is None
    True
    >>> met(1.4, 1.2, 1.5, higher_is_better=False)
    True
    """
    if target is None:
        return None
    if higher_is_better:
        return bool(median >= target and mean >= target)
    return bool(median <= target and mean <= target)


def summary_row(
    benchmark: str,
    name: str,
    metric: str,
    baseline_seconds: Sequence[float],
    variant_seconds: Sequence[float],
    target: float | None,
    date: str,
    command: str,
    higher_is_better: bool = True,
) -> dict:
    """The summary row of one comparison from per-repeat wall seconds, paired by index.

    `baseline_seconds[i]` and `variant_seconds[i]` are the two sides of repeat i, each doing the
    same work, so a throughput ratio is baseline seconds / variant seconds. `median` is the
    ratio of the median throughputs (for an odd number of repeats: median baseline seconds /
    median variant seconds), `mean` the ratio of the mean throughputs over all the work (mean
    baseline seconds / mean variant seconds), `min`/`max` the extremes of the per-repeat paired
    ratios. `target` (None: informative row) is met when the median and the mean both reach it,
    as rounded in the row (see `met`; `higher_is_better` False: both at most `target`).

    >>> row = summary_row("writer", "writer vs tarfile", "MB/s ratio", [0.22, 0.22, 0.22], [0.26, 0.27, 0.73], 0.8,
    ...                   date="2026-12-01T02:23:32+00:00", command="python -m benchmarks.bench_writer")
    >>> row["median"], row["mean"], row["min"], row["max"], row["repeats"], row["met"]
    (0.815, 0.524, 0.301, 0.846, 3, False)
    >>> summary_row("writer", "tar path", "MB/s ratio", [0.2], [0.1], None, "2026-12-01T02:23:32+00:00", "cmd")["met"] is None
    True
    """
    base = [float(s) for s in baseline_seconds]
    var = [float(s) for s in variant_seconds]
    if not base or len(base) != len(var):
        raise ValueError(f"{benchmark} {name!r}: {len(base)} baseline and {len(var)} variant repeats; need the same number, at least 1")
    if not all(math.isfinite(s) and s > 0 for s in base + var):
        raise ValueError(f"{benchmark} {name!r}: seconds must be finite and positive: {base} / {var}")
    paired = [b / v for b, v in zip(base, var)]
    # throughputs in units of work per second (the work cancels in the ratio)
    median = statistics.median([1 / v for v in var]) / statistics.median([1 / b for b in base])
    mean = statistics.fmean(base) / statistics.fmean(var)
    return make_row(benchmark, name, metric, median, mean, paired, target, date, command, higher_is_better)


def make_row(benchmark: str, name: str, metric: str, median: float, mean: float, spread: list[float], target: float | None, date: str, command: str,
             higher_is_better: bool = True) -> dict:
    """A summary row: median and mean rounded, min/max and repeats from the per-repeat `spread`,
    `met` decided on the rounded figures. Every row of every results file is made here."""
    median, mean = round(float(median), DECIMALS), round(float(mean), DECIMALS)
    return {
        "benchmark": benchmark,
        "name": name,
        "metric": metric,
        "median": median,
        "mean": mean,
        "min": round(float(min(spread)), DECIMALS),
        "max": round(float(max(spread)), DECIMALS),
        "repeats": len(spread),
        "target": target,
        "met": met(median, mean, target, higher_is_better),
        "date": date,
        "command": command,
    }
