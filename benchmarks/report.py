"""Helpers the benchmarks share for their "summary" block, besides `benchmarks.summary`.

`benchmarks.summary.summary_row` builds a row from the seconds of a baseline and a variant
(a throughput ratio). Some benchmarks report figures that are not such a ratio (documents/s,
a share of the wall time); `value_row` builds a row with the same keys from per-repeat values.

Every benchmark prints its rows on stdout as `BENCH-SUMMARY-ROW {json}` lines (`emit`), whether
or not it saves its results file, so `python -m benchmarks.run --quick` can show a table for
runs that save nothing.
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
from datetime import datetime, timezone

ROW_MARK = "BENCH-SUMMARY-ROW "
ROW_KEYS = ("benchmark", "name", "metric", "median", "mean", "min", "max", "repeats", "target", "met", "date", "command")


def value_row(
    benchmark: str,
    name: str,
    metric: str,
    values: list[float],
    target: float | None,
    date: str,
    command: str,
    mean: float | None = None,
) -> dict:
    """A summary row from per-repeat values of a figure that is not a seconds ratio.

    `mean` is the figure over the whole work (e.g. total documents / total seconds) when the
    caller can compute it; otherwise the arithmetic mean of `values`. min/max are the spread of
    `values`. Rounded like `benchmarks.summary.summary_row`, and `met` decided on the rounded
    figures.
    """
    from benchmarks.summary import make_row

    if not values:
        raise ValueError(f"{benchmark} {name!r}: no values")
    return make_row(benchmark, name, metric, statistics.median(values), statistics.fmean(values) if mean is None else mean, values, target, date, command)


def now() -> str:
    """The run's date as the summary rows carry it (ISO 8601, UTC, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def command_line(module: str, argv: list[str] | None) -> str:
    """`python -m benchmarks.<module> ARGS` as this process was called (argv None: sys.argv)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", "-m", f"benchmarks.{module}", *(shlex.quote(a) for a in args)])


def emit(rows: list[dict]) -> None:
    """Print the rows for `benchmarks.run` (one marked JSON line each) and readably."""
    for row in rows:
        target = "informative" if row["target"] is None else f"target {row['target']}: {'met' if row['met'] else 'NOT MET'}"
        print(
            f"summary: {row['benchmark']} {row['name']}: {row['metric']} median {row['median']:.3g}, mean {row['mean']:.3g}"
            f" (min {row['min']:.3g}, max {row['max']:.3g}, {row['repeats']} repeats); {target}"
        )
        print(ROW_MARK + json.dumps(row, sort_keys=True), flush=True)


def parse_row(line: str) -> dict | None:
    """The row of a line printed by `emit`, else None."""
    if not line.startswith(ROW_MARK):
        return None
    return json.loads(line[len(ROW_MARK) :])
