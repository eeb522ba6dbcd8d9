"""The results table of benchmarks/README.md, rendered from the summary blocks of results/*.json.

Every results file carries a "summary" list (see benchmarks/README.md, "Results"); this module
collects those rows and renders one markdown table, which README.md holds between
`<!-- results:begin -->` and `<!-- results:end -->`. Nothing in that block is written by hand:

    python -m benchmarks.table            # print the table
    python -m benchmarks.table --write    # rewrite the README block (= python -m benchmarks.run --table)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
README = HERE / "README.md"
BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"
# benchmark ids in table order; a results file belongs to the id its name starts with
ORDER = ("writer", "clip", "captioning", "proxy", "train", "mining", "scale")
HEADER = ("benchmark", "metric", "median", "mean", "spread (min-max)", "repeats", "target", "met", "date", "result file")


def result_files(results_dir: Path = RESULTS_DIR) -> list[Path]:
    """The results files in table order: per benchmark id its main file (`<id>.json`), then its
    other files (`<id>-*.json`) by name; files of no known id last, by name."""

    def key(p: Path) -> tuple:
        stem = p.stem
        for i, bench in enumerate(ORDER):
            if stem == bench:
                return (i, 0, stem)
            if stem.startswith(bench + "-"):
                return (i, 1, stem)
        return (len(ORDER), 0, stem)

    return sorted(results_dir.glob("*.json"), key=key)


def collect(results_dir: Path = RESULTS_DIR) -> list[tuple[str, dict]]:
    """(file name, row) for every summary row of every results file, in table order."""
    out = []
    for path in result_files(results_dir):
        data = json.loads(path.read_text())
        for row in data.get("summary", []):
            out.append((path.name, row))
    return out


def figure(x: float) -> str:
    """A ratio or rate as the table shows it: three significant digits, never an exponent."""
    text = f"{x:.3g}"
    if "e" in text:
        text = f"{x:.0f}" if abs(x) >= 1 else f"{x:.6f}".rstrip("0")
    return text


def direction(row: dict) -> str | None:
    """">=" or "<=": which way the row's target is meant, read from its `met` (a row does not
    store it: `met` is the figures at least the target, or at most it for a lower-is-better row);
    None when the figures cannot tell (both ways agree, or there is no target)."""
    if row["target"] is None:
        return None
    at_least = row["median"] >= row["target"] and row["mean"] >= row["target"]
    at_most = row["median"] <= row["target"] and row["mean"] <= row["target"]
    if at_least == at_most:
        return None
    return ">=" if row["met"] == at_least else "<="


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def row_cells(file: str, row: dict) -> list[str]:
    if row["target"] is None:
        target, met = "none (informative)", "-"
    else:
        sign = direction(row)
        target = f"{sign} {figure(row['target'])}" if sign else figure(row["target"])
        met = "**met**" if row["met"] else "**not met**"
    return [
        f"{row['benchmark']}: {row['name']}",
        row["metric"],
        figure(row["median"]),
        figure(row["mean"]),
        f"{figure(row['min'])}-{figure(row['max'])}",
        str(row["repeats"]),
        target,
        met,
        row["date"][:16].replace("T", " ") + " UTC",
        f"`results/{file}`",
    ]


def render(rows: list[tuple[str, dict]]) -> str:
    """The markdown table of `collect()`'s rows (no trailing newline)."""
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "| " + " | ".join("---:" if h in ("median", "mean", "repeats") else "---" for h in HEADER) + " |",
    ]
    for file, row in rows:
        lines.append("| " + " | ".join(cell(c) for c in row_cells(file, row)) + " |")
    return "\n".join(lines)


def extract_block(text: str) -> str | None:
    """What README text holds between the markers (stripped), or None without both markers."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        return None
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    if b < a:
        return None
    return text[a:b].strip("\n")


def replace_block(text: str, table: str) -> str:
    if extract_block(text) is None:
        raise ValueError(f"README must hold exactly one {BEGIN} ... {END} block")
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:a] + "\n" + table + "\n" + text[b:]


def write_readme(readme: Path = README, results_dir: Path = RESULTS_DIR) -> bool:
    """Rewrite the README block from the results files; True if the README changed."""
    text = readme.read_text()
    new = replace_block(text, render(collect(results_dir)))
    if new != text:
        readme.write_text(new)
    return new != text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help=f"rewrite the block of {README.relative_to(HERE.parent)}")
    args = ap.parse_args(argv)
    table = render(collect())
    print(table)
    if args.write:
        changed = write_readme()
        print(f"{README.relative_to(HERE.parent)}: {'rewritten' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
