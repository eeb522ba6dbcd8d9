"""The documentation's benchmark figures agree with benchmarks/results/*.json (fast, no Ray).

The checks live in `benchmarks.doccheck` (also `python -m benchmarks.doccheck`); a figure kept
in prose is added there as a `Claim`.
"""

from __future__ import annotations

import json
import re

import pytest

from benchmarks import doccheck, table

README = doccheck.REPO / "benchmarks" / "README.md"


def test_readme_results_block_is_the_table_of_the_results_files():
    problems = doccheck.check_block(README.read_text())
    assert not problems, "\n".join(map(str, problems))


def test_every_summary_row_has_date_command_and_a_consistent_met():
    problems = doccheck.check_rows()
    assert not problems, "\n".join(map(str, problems))


def test_every_summary_block_is_what_the_benchmark_code_derives_from_the_raw_data():
    problems = doccheck.check_current()
    assert not problems, "\n".join(map(str, problems))


def test_figures_kept_in_prose_match_their_results_files():
    problems = doccheck.check_claims()
    assert not problems, "\n".join(map(str, problems))


def test_every_cited_results_file_exists():
    problems = doccheck.check_citations()
    assert not problems, "\n".join(map(str, problems))


def _edited(figure: str) -> str:
    """Another figure of the same look (its last digit changed)."""
    last = int(figure[-1])
    return figure[:-1] + str((last + 1) % 10)


def test_a_figure_edited_away_from_its_results_file_is_reported_with_its_row():
    text = README.read_text()
    block = table.extract_block(text)
    rows = block.split("\n")[2:]
    assert rows, "the results block has no rows"
    for i, line in enumerate(rows):
        cells = line.split(" | ")
        median = cells[2]  # | benchmark | metric | median | ...
        assert re.fullmatch(r"[\d.e+-]+", median), line
        cells[2] = _edited(median)
        edited_block = "\n".join(block.split("\n")[:2] + rows[:i] + [" | ".join(cells)] + rows[i + 1 :])
        edited = table.replace_block(text, edited_block)
        problems = doccheck.check_block(edited)
        name = line.split(" | ")[0].lstrip("| ").strip()
        assert any(name in p.where for p in problems), (name, [str(p) for p in problems])


def test_a_met_cell_edited_is_reported():
    text = README.read_text()
    assert "**not met**" in text or "**met**" in text
    edited = text.replace("**not met**", "**met**", 1) if "**not met**" in text else text.replace("**met**", "**not met**", 1)
    assert doccheck.check_block(edited)


@pytest.mark.parametrize("claim", doccheck.CLAIMS, ids=str)
def test_a_claimed_figure_edited_is_reported(claim):
    text = (doccheck.REPO / claim.document).read_text()
    m = claim.regex().search(text)
    assert m, claim
    edited = text[: m.start(1)] + _edited(m.group(1)) + text[m.end(1) :]
    problems = doccheck.check_claims([claim], texts={claim.document: edited})
    assert problems and claim.document in problems[0].where


def test_rows_with_a_wrong_met_or_missing_keys_are_reported(tmp_path):
    row = {
        "benchmark": "clip", "name": "x", "metric": "images/s ratio", "median": 0.95, "mean": 0.85, "min": 0.8,
        "max": 1.0, "repeats": 3, "target": 0.9, "met": True, "date": "2026-12-01T02:26:05+00:00", "command": "python -m benchmarks.bench_clip",
    }
    (tmp_path / "clip.json").write_text(json.dumps({"summary": [row]}))
    assert any("met is True" in p.message for p in doccheck.check_rows(tmp_path))  # mean 0.85 < 0.9 < median
    (tmp_path / "clip.json").write_text(json.dumps({"summary": [{**row, "met": False}]}))
    assert not doccheck.check_rows(tmp_path)
    no_command = {k: v for k, v in row.items() if k != "command"}
    (tmp_path / "clip.json").write_text(json.dumps({"summary": [no_command]}))
    assert any("keys" in p.message for p in doccheck.check_rows(tmp_path))


def test_a_missing_citation_is_reported(tmp_path):
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "clip.json").write_text("{}")
    (tmp_path / "README.md").write_text("see `results/clip.json` and `results/gone.json`")
    problems = doccheck.check_citations(tmp_path)
    assert [p.message for p in problems] == ["cites results/gone.json, which does not exist"]


def test_bench_runner_lists_every_benchmark_with_its_results_file(capsys):
    from benchmarks import run

    assert run.main(["--list"]) == 0
    out = capsys.readouterr().out
    for bench in run.BENCHES:
        assert f"python -m benchmarks.{bench.module}" in out and f"results/{bench.results}" in out
        assert (doccheck.REPO / "benchmarks" / f"{bench.module}.py").exists()
    assert {b.id for b in run.BENCHES} == set(table.ORDER) == set(doccheck.SUMMARISERS)


def test_the_table_shows_which_way_a_target_points():
    row = {"median": 1.1, "mean": 1.2, "target": 1.25, "met": True}
    assert table.direction(row) == "<="  # met although below the target: an at-most target
    assert table.direction({**row, "met": False}) == ">="
    assert table.direction({**row, "median": 1.3, "met": False}) is None  # straddles: both ways fail
    assert doccheck.consistent_met({**row, "median": 1.3, "met": False})
    assert not doccheck.consistent_met({**row, "median": 1.3, "met": True})
