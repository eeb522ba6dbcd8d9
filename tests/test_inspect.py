"""`weaverdata inspect`: the HTML report of an output folder. Pure parts (plots, sample cards)
without Ray; the report of real build-refs and build-proxy outputs, opened in a real headless
Chromium (Debian's `chromium`, driven by Playwright): no console errors, every image loads, and a
screenshot is saved."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run_cli
from weaverdata.io.storage import Location
from weaverdata.report.build import Thumbs, proxy_card, refs_card
from weaverdata.report.plots import bins_for, histogram_counts, histogram_svg

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def png(color, size=(40, 30)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, color).save(b, "PNG")
    return b.getvalue()


def test_histogram_bins_and_counts():
    edges = bins_for([1, 2, 2, 3, 3, 3], integer=True)
    assert edges == [0.5, 1.5, 2.5, 3.5]
    assert histogram_counts([1, 2, 2, 3, 3, 3], edges) == [1, 2, 3]
    edges = bins_for([0.0, 0.5, 1.0], bins=2)
    assert histogram_counts([0.0, 0.5, 1.0], edges) == [1, 2]  # the top value falls in the last bin
    svg = histogram_svg([0.9, 0.95, 0.97], "CLIP <cosine>", "cosine", bins=4)
    assert svg.count('class="bar"') == 4 and "CLIP &lt;cosine&gt;" in svg and "(n=3)" in svg
    assert "no values" in histogram_svg([], "empty", "x")


def test_proxy_card_puts_the_original_image_beside_each_span(tmp_path):
    thumbs = Thumbs(Location.of(str(tmp_path)))
    (tmp_path / "thumbs").mkdir()
    record = {
        "tags": {"open": "<imagine>", "close": "</imagine>", "boi": "<BOI>"},
        "images": [
            {"slot": 0, "role": "input", "sha256": "a" * 64, "source": "in.png"},
            {"slot": 1, "role": "output", "sha256": "b" * 64, "source": "cat.png"},
            {"slot": 2, "role": "output", "sha256": "c" * 64, "source": "dog.png"},
        ],
        "input_images": [{"bytes": png("red"), "path": "x.input0.png"}],
        "messages": [
            {"role": "user", "content": "<image:0>\nwrite <b>a story</b>"},
            {"role": "assistant", "content": "Once <imagine>a grey cat</imagine><BOI> then <imagine>a dog & a ball</imagine><BOI> end"},
        ],
    }
    page = proxy_card(record, thumbs, {"b" * 64: png("gray")})  # the dog's original is not found
    assert "&lt;b&gt;a story&lt;/b&gt;" in page, "text is escaped"
    assert page.count("<img ") == 2 and "input image 0" in page
    assert "a grey cat" in page and "a dog &amp; a ball" in page
    assert page.index("cat.png") < page.index("a grey cat") < page.index("dog.png") < page.index("a dog")
    assert "no preview: original image not in the output" in page
    assert len(list((tmp_path / "thumbs").glob("*.jpg"))) == 2


def test_refs_card_shows_references_then_target_with_scores(tmp_path):
    (tmp_path / "thumbs").mkdir()
    thumbs = Thumbs(Location.of(str(tmp_path)))
    record = {
        "references": [{"clip_cosine": 0.8123, "phash_distance": 22}],
        "reference_images": [{"bytes": png("blue"), "path": "r.png"}],
        "target": {"width": 40, "height": 30},
        "target_image": {"bytes": png("green"), "path": "t.png"},
        "instruction": "Put the <cup> on the table",
    }
    page = refs_card(record, thumbs)
    assert page.index("reference 1") < page.index("target")
    assert "CLIP 0.812" in page and "pHash 22" in page and "40x30" in page
    assert "Put the &lt;cup&gt; on the table" in page


def test_inspect_refuses_a_folder_that_is_not_an_output(tmp_path):
    proc = run_cli("inspect", str(tmp_path))
    assert proc.returncode == 2 and "no summary.json" in proc.stderr
    proc = run_cli("inspect", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium: installed here if missing (root and apt-get), else the test is skipped."""
    if not Path(CHROMIUM).exists():
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip(f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get): apt-get install chromium")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
        proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
            proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0 or not Path(CHROMIUM).exists():
            pytest.skip(f"could not install Debian's chromium: {proc.stderr.strip()[-500:]}")
    return CHROMIUM


def open_in_chromium(executable: str, page_path: Path, screenshot: Path) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
            title = page.title()
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"problems": problems, "images": images, "title": title}


def check_report(chromium: str, out: Path, report: Path, tmp_path: Path) -> dict:
    proc = run_cli("inspect", str(out), "--report", str(report), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    page = report / "index.html"
    assert result["path"] == str(page) and page.is_file()
    seen = open_in_chromium(chromium, page, tmp_path / "screenshot.png")
    assert seen["problems"] == [], seen["problems"]
    assert seen["images"], "the report shows images"
    assert all(ok and width > 0 for _, ok, width in seen["images"]), [i for i in seen["images"] if not (i[1] and i[2] > 0)]
    assert {src for src, _, _ in seen["images"]} == {f"thumbs/{p.name}" for p in (report / "thumbs").iterdir()}
    assert not re.search(r'(src|href)="(https?:)?//', page.read_text()), "the report is offline: nothing fetched from a network"
    shot = Image.open(tmp_path / "screenshot.png")
    assert shot.width == 1300 and shot.height > 900 and len(set(shot.convert("L").resize((64, 64)).getdata())) > 10  # not a blank page
    return result


@pytest.mark.ray
def test_report_of_a_build_refs_output_in_chromium(chromium, refs_shards, tmp_path):
    summary = json.loads((refs_shards / "summary.json").read_text())
    result = check_report(chromium, refs_shards, tmp_path / "report", tmp_path)
    assert result["samples_shown"] == min(48, summary["samples"])
    assert result["rejects_shown"] == min(48, summary["rejected"])
    html = (tmp_path / "report" / "index.html").read_text()
    assert "CLIP similarity, reference to target" in html and "references per sample" in html
    assert html.count("<b>target</b>") == result["samples_shown"]


@pytest.mark.ray
def test_report_of_a_build_proxy_output_in_chromium(chromium, proxy_shards, tmp_path):
    summary = json.loads((proxy_shards / "summary.json").read_text())
    result = check_report(chromium, proxy_shards, tmp_path / "report", tmp_path)
    assert result["samples_shown"] == min(48, summary["samples"])
    html = (tmp_path / "report" / "index.html").read_text()
    assert "images per document" in html and "description length" in html
    spans = html.count('class="proxy"')
    assert spans > 0
    # every <imagine> span shows its original image (found in the output's work/ folder)
    assert html.count('<span class="proxy"><figure class="thumb inline"><img') == spans
    assert result["missing_previews"] == {}


def test_progress_names_the_stage_and_shows_counts_rate_and_eta(capsys):
    from weaverdata.runtime import Progress, UnitOutcome

    with Progress(4, label="build-refs prepare: units") as bar:
        for k in range(4):
            bar.advance(UnitOutcome(f"{k:05d}", stats={"accepted": 10, "rejected": 2}))
    err = capsys.readouterr().err
    assert "build-refs prepare: units" in err and "4/4" in err
    assert "40 samples, 8 rejected" in err and "inputs/s" in err and "eta" in err


def test_samples_and_rejects_are_taken_from_each_group_in_turn():
    from weaverdata.report.build import in_turn

    groups = {"b": [1, 2, 3], "a": ["x"]}
    assert in_turn(groups, 3) == ["x", 1, 2]  # the small group shows before a big one shows twice
    assert in_turn(groups, 10) == ["x", 1, 2, 3]
    assert in_turn({}, 5) == []
