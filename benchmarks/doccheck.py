"""Checks that the documentation's figures agree with the benchmark results files.

Four kinds of check, each returning `Problem`s (empty: all good):

  check_block     benchmarks/README.md's results block equals the table rendered from the
                  results files' summary rows (`benchmarks.table`); a differing row is reported
                  by its benchmark and name.
  check_rows      every summary row has exactly the agreed keys, an ISO date, a command, and a
                  `met` consistent with its median, mean and target.
  check_current   every results file's stored summary is what its benchmark's `summary_rows`
                  derives from the file's raw data today (nobody edited a figure in a JSON file
                  by hand, and the summaries were re-derived after a change of the code).
  check_claims    figures in prose (`CLAIMS`): a regex in a document captures a figure, which must
                  be the value at a path in a results file, rounded as written.
  check_citations every `results/<name>.json` that a document cites exists.

Add a claim for a figure kept in prose by appending a `Claim` to `CLAIMS`.

    python -m benchmarks.doccheck          # prints the problems; exit 1 if there are any
"""

from __future__ import annotations

import importlib
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from benchmarks import table
from benchmarks.report import ROW_KEYS

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "benchmarks/README.md", "docs/*.md")  # globs, relative to the repository
# the function that derives a results file's summary rows from its raw data, per benchmark id
SUMMARISERS = {
    "writer": "benchmarks.bench_writer:summary_rows",
    "clip": "benchmarks.bench_clip:summary_rows",
    "captioning": "benchmarks.bench_captioning:summary_rows",
    "proxy": "benchmarks.bench_proxy:summary_rows",
    "train": "benchmarks.bench_train:summary_rows",
    "mining": "benchmarks.bench_mining:summary_rows",
    "scale": "benchmarks.bench_scale:summary_rows",
}


@dataclass(frozen=True)
class Problem:
    where: str  # file, and row or claim
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class Claim:
    """A figure in a document that must come from a results file.

    `pattern` is a regex over the document's text with one group capturing the figure (digits,
    an optional decimal point; thousands separators are allowed); it must match exactly once. A
    space in it matches any run of whitespace, so a phrase may wrap across lines.
    `path` is a dotted path into the results file's JSON (`summary.0.median`,
    `bare.median_images_per_s`); list indexes are integers. The figure passes when it equals
    the JSON value times `scale`, rounded to the figure's own decimals.
    """

    document: str  # relative to the repository
    pattern: str
    results: str  # relative to the repository
    path: str
    scale: float = 1.0

    def regex(self) -> re.Pattern:
        return re.compile(self.pattern.replace(" ", r"\s+"))

    def __str__(self) -> str:
        return f"{self.document} /{self.pattern}/ <- {self.results}:{self.path}"


R = "benchmarks/results/"
B = "benchmarks/README.md"
CLAIMS: list[Claim] = [
    Claim(B, r"\| 10,000 \| ([\d.]+) \|", R + "mining.json", "results.0.mining_seconds"),
    Claim(B, r"\| 100,000 \| ([\d.]+) \|", R + "mining.json", "results.1.mining_seconds"),
    Claim(B, r"\| 1,000,000 \| ([\d.]+) \|", R + "mining.json", "results.2.mining_seconds"),
    Claim(B, r"\| 10,000 \| [\d.]+ \| ([\d.,]+) \(measured", R + "mining.json", "results.0.brute_force_products.seconds"),
    Claim(B, r"\| 100,000 \| [\d.]+ \| ([\d.,]+) \(extrapolated", R + "mining.json", "results.1.brute_force_products.seconds"),
    Claim(B, r"\| 1,000,000 \| [\d.]+ \| ([\d.,]+) \(extrapolated", R + "mining.json", "results.2.brute_force_products.seconds"),
    Claim(B, r"\| 10,000 \|(?: [^|]+ \|){2} ([\d.]+) \|", R + "mining.json", "results.0.cpu_ratio"),
    Claim(B, r"\| 100,000 \|(?: [^|]+ \|){2} ([\d.]+) \|", R + "mining.json", "results.1.cpu_ratio"),
    Claim(B, r"\| 1,000,000 \|(?: [^|]+ \|){2} ([\d.]+) \|", R + "mining.json", "results.2.cpu_ratio"),
    Claim(B, r"\| 10,000 \|(?: [^|]+ \|){3} ([\d.]+) \|", R + "mining.json", "results.0.recall.recall"),
    Claim(B, r"\| 100,000 \|(?: [^|]+ \|){3} ([\d.]+) \|", R + "mining.json", "results.1.recall.recall"),
    Claim(B, r"\| 1,000,000 \|(?: [^|]+ \|){3} ([\d.]+) \|", R + "mining.json", "results.2.recall.recall"),
    Claim(B, r"\| 10,000 \|(?: [^|]+ \|){4} ([\d.]+) GiB", R + "mining.json", "results.0.memory.peak_pss_bytes", 2**-30),
    Claim(B, r"\| 100,000 \|(?: [^|]+ \|){4} ([\d.]+) GiB", R + "mining.json", "results.1.memory.peak_pss_bytes", 2**-30),
    Claim(B, r"\| 1,000,000 \|(?: [^|]+ \|){4} ([\d.]+) GiB", R + "mining.json", "results.2.memory.peak_pss_bytes", 2**-30),
]

# the scale section: run table, stage seconds, tree peaks, projection (results/scale.json)
S = R + "scale.json"
for _i, (_recipe, _size) in enumerate([("build-refs collection", "1,000"), ("build-proxy single_image", "1,000"), ("build-refs collection", "4,000"),
                                      ("build-proxy single_image", "4,000"), ("build-refs collection", "16,000")]):
    _row = rf"\| {_recipe} \| {_size} \|"
    CLAIMS += [
        Claim(B, _row + r" ([\d.]+) \|", S, f"runs.{_i}.s_per_input", 1000.0),
        Claim(B, _row + r" [\d.]+ \| ([\d.]+) \|", S, f"runs.{_i}.driver_peak_bytes", 2**-20),
        Claim(B, _row + r" [\d.]+ \| [\d.]+ \| ([\d.]+) \|", S, f"runs.{_i}.engine_starts"),
        Claim(B, _row + r"(?: [\d.]+ \|){3} ([\d.]+) \|", S, f"runs.{_i}.engine_busy_fraction"),
    ]
CLAIMS += [
    Claim(B, r"4,000 inputs took ([\d.]+) s on the engine pool", R + "scale-naive.json", "runs.0.wall_s"),
    Claim(B, r"\(1 engine start\) and ([\d.]+) s with the code of 9731bfd", R + "scale-naive.json", "runs.1.wall_s"),
    Claim(B, r"\(([\d.]+) engine starts, one per round\)", R + "scale-naive.json", "runs.1.engine_starts"),
    Claim(B, r"one per round\): ([\d.]+) times as long", R + "scale-naive.json", "summary.0.median"),
    Claim(B, r"The pool's 4k run in `results/scale.json` took ([\d.]+) s", S, "runs.3.wall_s"),
    Claim("docs/architecture.md", r"took ([\d.]+) times as long as the pool", R + "scale-naive.json", "summary.0.median"),
    Claim(B, r"build-refs spends ([\d.]+) s planning", S, "runs.4.stage_seconds.plan"),
    Claim(B, r"planning \(CLIP embedding, the kNN graph and grouping\) and ([\d.]+) s in", S, "runs.4.stage_seconds.text"),
    Claim(B, r"in the text stage, of ([\d.]+) s\.", S, "runs.4.wall_s"),
    Claim(B, r"\(([\d.]+) GiB at 1k to [\d.]+ GiB at 16k", S, "runs.0.tree_peak_bytes", 2**-30),
    Claim(B, r"GiB at 1k to ([\d.]+) GiB at 16k", S, "runs.4.tree_peak_bytes", 2**-30),
]
for _recipe, _key in (("build-refs collection \\(4k -> 16k\\)", "refs-collection"), ("build-proxy single_image \\(1k -> 4k\\)", "proxy-single-image")):
    _row = rf"\| {_recipe} \|"
    CLAIMS += [
        Claim(B, _row + r" ([\d,]+) \|", S, f"projection.{_key}.driver_bytes_per_input"),
        Claim(B, _row + r" [\d,]+ \| ([\d.]+) GB", S, f"projection.{_key}.at.1000000.driver_peak_gb"),
        Claim(B, _row + r" [\d,]+ \| [\d.]+ GB \| ([\d.]+) GB", S, f"projection.{_key}.at.10000000.driver_peak_gb"),
        Claim(B, _row + r" [\d,]+ \| [\d.]+ GB \| [\d.]+ GB \| ([\d.]+) \|", S, f"projection.{_key}.at.1000000.node_hours_here"),
        Claim(B, _row + r" [\d,]+ \| [\d.]+ GB \| [\d.]+ GB \| [\d.]+ \| ([\d.]+) \|", S, f"projection.{_key}.at.10000000.node_hours_here"),
    ]


# -- the results block ----------------------------------------------------------------------


def _first_cell(line: str) -> str:
    cells = line.strip().strip("|").split(" | ")
    return cells[0].strip() if cells else line


def check_block(readme_text: str, results_dir: Path = table.RESULTS_DIR, where: str = "benchmarks/README.md") -> list[Problem]:
    """The README's results block against the table rendered from the results files, row by row."""
    found = table.extract_block(readme_text)
    if found is None:
        return [Problem(where, f"no single {table.BEGIN} ... {table.END} block")]
    expected = table.render(table.collect(results_dir)).split("\n")
    lines = found.split("\n")
    problems = []
    for i in range(max(len(lines), len(expected))):
        have = lines[i] if i < len(lines) else None
        want = expected[i] if i < len(expected) else None
        if have == want:
            continue
        if want is None:
            problems.append(Problem(f"{where}, results row {_first_cell(have)!r}", f"not in any results file: {have}"))
        elif have is None:
            problems.append(Problem(f"{where}, results row {_first_cell(want)!r}", f"missing; the results files give: {want}"))
        else:
            problems.append(Problem(f"{where}, results row {_first_cell(want)!r}", f"README has {have!r}; the results files give {want!r}"))
    if problems:
        problems.append(Problem(where, "regenerate the block with: python -m benchmarks.run --table"))
    return problems


# -- the summary rows -------------------------------------------------------------------------


def consistent_met(row: dict) -> bool:
    """`met` is None without a target; with one, it is what the median and the mean give, both at
    least the target or, for a lower-is-better row, both at most it (a row does not say which;
    `check_current` re-derives it exactly)."""
    if row["target"] is None:
        return row["met"] is None
    at_least = row["median"] >= row["target"] and row["mean"] >= row["target"]
    at_most = row["median"] <= row["target"] and row["mean"] <= row["target"]
    return row["met"] in (at_least, at_most)


def check_rows(results_dir: Path = table.RESULTS_DIR) -> list[Problem]:
    """Every summary row: the agreed keys, a date, a command, a consistent `met`."""
    problems = []
    for path in table.result_files(results_dir):
        data = json.loads(path.read_text())
        rows = data.get("summary")
        if not isinstance(rows, list) or not rows:
            problems.append(Problem(f"results/{path.name}", "no summary rows"))
            continue
        for i, row in enumerate(rows):
            where = f"results/{path.name}, summary row {i} ({row.get('name', '?')!r})"
            if tuple(sorted(row)) != tuple(sorted(ROW_KEYS)):
                problems.append(Problem(where, f"keys {sorted(row)} are not {sorted(ROW_KEYS)}"))
                continue
            try:
                datetime.fromisoformat(row["date"])
            except (TypeError, ValueError):
                problems.append(Problem(where, f"date {row['date']!r} is not ISO 8601"))
            if not isinstance(row["command"], str) or not row["command"].strip():
                problems.append(Problem(where, "no command"))
            for key in ("median", "mean", "min", "max"):
                if not isinstance(row[key], (int, float)) or not math.isfinite(row[key]):
                    problems.append(Problem(where, f"{key} {row[key]!r} is not a finite number"))
            if problems and problems[-1].where == where:
                continue
            if not isinstance(row["met"], (bool, type(None))) or not consistent_met(row):
                problems.append(Problem(where, f"met is {row['met']!r}, which median {row['median']} and mean {row['mean']} do not give for target {row['target']}"))
            if not isinstance(row["repeats"], int) or row["repeats"] < 1:
                problems.append(Problem(where, f"repeats {row['repeats']!r}"))
            if row["min"] > row["max"]:
                problems.append(Problem(where, f"min {row['min']} > max {row['max']}"))
    return problems


def benchmark_of(path: Path) -> str | None:
    for bench in table.ORDER:
        if path.stem == bench or path.stem.startswith(bench + "-"):
            return bench
    return None


def summariser(bench: str):
    module, func = SUMMARISERS[bench].split(":")
    return getattr(importlib.import_module(module), func)


def check_current(results_dir: Path = table.RESULTS_DIR) -> list[Problem]:
    """Every results file's summary block equals what its benchmark's code derives from its raw data."""
    problems = []
    for path in table.result_files(results_dir):
        bench = benchmark_of(path)
        if bench is None:
            problems.append(Problem(f"results/{path.name}", f"belongs to no benchmark of {table.ORDER}"))
            continue
        data = json.loads(path.read_text())
        derived = summariser(bench)(data)
        stored = data.get("summary")
        if stored != derived:
            for i in range(max(len(stored or []), len(derived))):
                s = stored[i] if stored and i < len(stored) else None
                d = derived[i] if i < len(derived) else None
                if s != d:
                    problems.append(Problem(f"results/{path.name}, summary row {i}", f"stored {s!r}; {SUMMARISERS[bench]} derives {d!r}"))
    if problems:
        problems.append(Problem("benchmarks/results", "re-derive the summary blocks with: python -m benchmarks.run --resummarise"))
    return problems


# -- claims in prose --------------------------------------------------------------------------


def json_path(data, path: str):
    for part in path.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def decimals(figure: str) -> int:
    return len(figure.split(".")[1]) if "." in figure else 0


def check_claim(claim: Claim, text: str, repo: Path = REPO) -> list[Problem]:
    where = f"{claim.document} (claim /{claim.pattern}/)"
    matches = list(claim.regex().finditer(text))
    if len(matches) != 1:
        return [Problem(where, f"the pattern matches {len(matches)} times, not once")]
    written = matches[0].group(1).replace(",", "")
    results = repo / claim.results
    if not results.exists():
        return [Problem(where, f"{claim.results} does not exist")]
    try:
        value = float(json_path(json.loads(results.read_text()), claim.path)) * claim.scale
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        return [Problem(where, f"{claim.results}:{claim.path}: {type(exc).__name__}: {exc}")]
    places = decimals(written)
    if abs(float(written) - value) > 0.5 * 10**-places + 1e-9:
        return [Problem(where, f"says {written}; {claim.results}:{claim.path} is {value:.{places}f} ({value!r})")]
    return []


def check_claims(claims: list[Claim] | None = None, repo: Path = REPO, texts: dict[str, str] | None = None) -> list[Problem]:
    """Each claim against its results file; `texts` overrides a document's text (for tests)."""
    problems = []
    for claim in CLAIMS if claims is None else claims:
        text = (texts or {}).get(claim.document)
        if text is None:
            text = (repo / claim.document).read_text()
        problems += check_claim(claim, text, repo)
    return problems


# -- citations --------------------------------------------------------------------------------


def documents(repo: Path = REPO) -> list[Path]:
    out = []
    for pattern in DOCS:
        out += sorted(repo.glob(pattern))
    return out


CITATION = re.compile(r"results/([\w.-]+\.json)")


def check_citations(repo: Path = REPO) -> list[Problem]:
    """Every `results/<name>.json` a document names exists in benchmarks/results/."""
    problems = []
    for doc in documents(repo):
        for m in CITATION.finditer(doc.read_text()):
            if not (repo / "benchmarks" / "results" / m.group(1)).exists():
                problems.append(Problem(str(doc.relative_to(repo)), f"cites results/{m.group(1)}, which does not exist"))
    return problems


def check_all(repo: Path = REPO) -> list[Problem]:
    results_dir = repo / "benchmarks" / "results"
    return (
        check_block((repo / "benchmarks" / "README.md").read_text(), results_dir)
        + check_rows(results_dir)
        + check_current(results_dir)
        + check_claims(repo=repo)
        + check_citations(repo)
    )


def main() -> int:
    problems = check_all()
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
