"""`weaverdata build-proxy` end to end, through the CLI, for each of its four recipes, on real
inputs (scikit-image photos, titles and text of the Wikipedia articles gensim ships, HTML pages
and OBELICS rows built from them), with the real vLLM engine (ray.data.llm) and open_clip on
tiny RANDOM-WEIGHT models.

Random weights write gibberish and seldom stop, so (as in `weaverdata.demo.tiny_model_overrides`)
free generations stop at the first "y" or "w"; generations that must hold proxies are held to
the format by vLLM structured outputs (`text.constrain`, the production default), which works
on any model. Descriptions are short, so the minimum description length is one word here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import cli_sets, run_cli
from weaverdata.demo import SITE_CHROME, proxy_inputs, proxy_overrides
from weaverdata.proxy.format import Tags, check_proxies, segments

pytestmark = [pytest.mark.ray]

@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return proxy_inputs(tmp_path_factory.mktemp("proxy-inputs"))


def args_for(recipe: str, inp: Path, out: Path, tiny_models, *extra: str) -> list[str]:
    sets = {**proxy_overrides(tiny_models, recipe), "runtime.progress": False}
    flat = cli_sets(sets)
    return ["build-proxy", "--config", f"pipelines/proxy-{recipe}.yaml", "--input", str(inp), "--output", str(out), "--json", *flat, *extra]


def run(args) -> dict:
    proc = run_cli(*args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def records(out: Path) -> list[dict]:
    rows = []
    for p in sorted(out.glob("data/*/*.parquet")):
        rows += pq.read_table(p, columns=["id", "recipe", "shape", "messages", "images", "tags", "source"]).to_pylist()
    return rows


def rejects(out: Path) -> list[dict]:
    return [r for p in sorted(out.glob("rejects/*.parquet")) for r in pq.read_table(p).to_pylist()]


def check_common(out: Path, summary: dict) -> list[dict]:
    """Every output is a well-formed proxy document; accounting holds; validate and HF datasets agree."""
    import datasets

    recs = records(out)
    assert summary["status"] == "complete" and summary["samples"] == len(recs) > 0
    assert summary["inputs"] == summary["accepted"] + summary["rejected"]
    tags = Tags()
    for r in recs:
        user, assistant = r["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant" and user["content"] and assistant["content"]
        assert check_proxies(assistant["content"], tags, min_words=1).ok, assistant["content"]
        proxies = [s.text for s in segments(assistant["content"]) if s.kind == "proxy"]
        outputs = [im for im in r["images"] if im["role"] == "output"]
        if r["recipe"] != "text_seed":
            assert proxies == [im["description"] for im in outputs]
        assert r["shape"] == ("text" if not proxies or segments(assistant["content"])[-1].kind == "text" else ("proxy" if len(segments(assistant["content"])) == 1 else "text_proxy"))
    assert run_cli("validate", str(out)).returncode == 0
    for group in sorted(p.name for p in (out / "data").iterdir()):
        ds = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in (out / "data" / group).glob("*.parquet")), split="train")
        tar = datasets.load_dataset("webdataset", data_files=sorted(str(p) for p in (out / "data" / group).glob("*.tar")), split="train")
        assert ds["id"] == tar["__key__"] and len(ds) == summary["samples_by_group"][group]
    return recs


def test_single_image(inputs, tmp_path, tiny_models):
    out = tmp_path / "out"
    summary = run(args_for("single-image", inputs["single-image"], out, tiny_models, "--set", "input_image_share=0.3"))
    recs = check_common(out, summary)
    assert {r["shape"] for r in recs} == {"text", "proxy", "text_proxy"}
    for r in recs:
        if r["shape"] == "text":  # the image shown as a real input, referenced by slot
            assert r["messages"][0]["content"].startswith("<image:0>") and r["images"][0]["role"] == "input"
    reasons = {x["reason"] for x in rejects(out)}
    # the random model writes the same text whatever the photo: the duplicates are caught
    assert reasons & {"duplicate_exact", "duplicate_near"}
    used = {im["source"] for r in recs for im in r["images"]}
    assert len(used) + len(rejects(out)) == summary["inputs"]


def test_image_group(inputs, tmp_path, tiny_models):
    inp = inputs["image-group"]
    out = tmp_path / "out"
    summary = run(args_for("image-group", inp, out, tiny_models, "--set", "dedup=false"))
    recs = check_common(out, summary)
    for r in recs:
        assert r["recipe"] == "image_group" and 2 <= len(r["images"]) <= 4
        assert [im["slot"] for im in r["images"]] == list(range(len(r["images"])))
    assert summary["details"]["captioning"]["requests"] > 0
    files = {p.name for p in inp.iterdir()}
    used = {im["source"] for r in recs for im in r["images"]}
    assert used | {x["source"] for x in rejects(out)} == files


def test_text_seed(inputs, tmp_path, tiny_models):
    inp = inputs["text-seed"]
    titles = [json.loads(line)["title"] for line in inp.read_text().splitlines() if "title" in line]
    out = tmp_path / "out"
    summary = run(args_for("text-seed", inp, out, tiny_models, "--set", "dedup=false"))
    recs = check_common(out, summary)
    assert {r["messages"][0]["content"] for r in recs} <= set(titles)
    assert all(r["images"] == [] for r in recs)
    reasons = [x["reason"] for x in rejects(out)]
    assert "missing_field" in reasons and summary["inputs"] == len(titles) + 1


def test_documents_html_and_obelics(inputs, tmp_path, tiny_models):
    inp = inputs["documents"]
    titles = {p.read_text().split("<title>")[1].split("</title>")[0] for p in (inp / "pages").glob("page*.html")}
    out = tmp_path / "out"
    summary = run(args_for("documents", inp, out, tiny_models, "--set", "dedup=false"))
    recs = check_common(out, summary)
    shapes = {r["shape"] for r in recs}
    assert "text" in shapes and "text_proxy" in shapes
    by_reason = {}
    for x in rejects(out):
        by_reason.setdefault(x["reason"], []).append(x["source"])
    assert by_reason.get("too_few_images") == ["pages/no-images.html"]
    assert by_reason.get("too_few_words") and "not_a_document" not in by_reason  # the image files are the pages' assets, not inputs
    assert summary["details"]["page_assets"] == len(list((inp / "pages" / "img").iterdir()))
    pages = [r for r in recs if r["source"].startswith("pages/page")]
    assert {r["source"] for r in pages} == {f"pages/page{k}.html" for k in range(3)}
    for r in pages:
        user, assistant = r["messages"][0]["content"], r["messages"][1]["content"]
        # the article, not the site around it: no navigation, breadcrumbs, contents, pager or footer
        assert not [c for c in SITE_CHROME if c in user + assistant], r["source"]
        # the user turn is the title as a request plus the opening; the assistant continues after it
        assert any(user.startswith(f'Write an illustrated article titled "{t}". It begins:') for t in titles)
        opening = user.split("It begins:", 1)[1].strip()
        assert opening and opening not in assistant and user not in assistant
        if r["shape"] == "text":  # the proxies sit where the images were
            kinds = [s.kind for s in segments(assistant)]
            assert kinds == ["text", "proxy", "text", "proxy", "text"], kinds


@pytest.mark.parametrize("recipe", ["documents", "single-image", "image-group", "text-seed"])
def test_recipes_load_and_need_a_model(recipe, tmp_path):
    proc = run_cli("build-proxy", "--config", f"pipelines/proxy-{recipe}.yaml", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--set", "engine.model=null")
    assert proc.returncode == 2 and "engine.model" in proc.stderr
