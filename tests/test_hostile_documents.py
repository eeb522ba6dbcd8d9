"""build-proxy documents on a corpus of hostile and broken web pages, a real run (Ray, vLLM with
the tiny RANDOM-WEIGHT VLM, open_clip): the run completes, `validate` passes, no byte of a file
outside the input root reaches any output, and each bad reference has its own reason.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import cli_sets, run_cli
from tests.corpus import bomb_png, image_bytes, photo
from weaverdata.demo import proxy_overrides, wiki_articles

pytestmark = pytest.mark.slow

PAGES = {
    # page: (what is wrong with it, the reason expected: for a left-out image, or for the page)
    "abs-path.html": "outside_input",
    "file-url.html": "outside_input",
    "symlink.html": "outside_input",
    "traversal.html": "outside_input",
    "loopback.html": "fetch_refused_address",
    "link-local.html": "fetch_refused_address",
    "bomb.html": "decompression_bomb",
    "truncated.html": "decode_error:truncated",
    "svg.html": "not_an_image",
}
PAGE_REJECTS = {"binary.html": "not_html", "long.html": "too_many_words", "many-images.html": "too_many_images"}


def page(title: str, paragraphs: list[str], images: list[str]) -> str:
    body = "".join(f"<p>{p}</p>" + (f'<img src="{images[k]}">' if k < len(images) else "") for k, p in enumerate(paragraphs))
    return f"<html><head><title>{title}</title></head><body><nav><a href='/'>Home</a></nav><article><h1>{title}</h1>{body}</article></body></html>"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("hostile")
    root = base / "input"
    (root / "pages" / "img").mkdir(parents=True)
    rng = np.random.default_rng(7)
    secret = image_bytes(Image.fromarray(rng.integers(0, 255, (320, 320, 3), dtype=np.uint8)), "PNG")  # noise: no compressor shrinks it
    (base / "secret.png").write_bytes(secret)
    good = image_bytes(Image.fromarray(photo("coffee")), "JPEG", quality=90)
    (root / "pages" / "img" / "good.jpg").write_bytes(good)
    (root / "pages" / "img" / "bomb.png").write_bytes(bomb_png())
    (root / "pages" / "img" / "truncated.jpg").write_bytes(good[: len(good) * 6 // 10])
    (root / "pages" / "img" / "drawing.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg' width='400' height='400'><circle r='100'/></svg>")
    (root / "pages" / "img" / "link.png").symlink_to(base / "secret.png")
    texts = [t for _, t in wiki_articles(4)]
    words = " ".join(texts).split()
    paras = [" ".join(words[i : i + 50]) for i in range(0, 400, 50)]
    bad_refs = {
        "abs-path.html": str(base / "secret.png"),
        "file-url.html": f"file://{base / 'secret.png'}",
        "symlink.html": "img/link.png",
        "traversal.html": "../../secret.png",
        "loopback.html": "http://127.0.0.1:9/secret.png",
        "link-local.html": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "bomb.html": "img/bomb.png",
        "truncated.html": "img/truncated.jpg",
        "svg.html": "img/drawing.svg",
    }
    for k, (name, ref) in enumerate(bad_refs.items()):
        (root / "pages" / name).write_text(page(f"Page {k}", paras[k % 4 : k % 4 + 3], ["img/good.jpg", ref]))
    # a UTF-16 page (with its byte-order mark) with text outside ASCII
    utf16 = page("Café crème", ["Le café crème se boit le matin, avec une tartine beurrée et un journal déplié sur la table du bistrot.", paras[5]], ["img/good.jpg"])
    (root / "pages" / "utf16.html").write_bytes(utf16.encode("utf-16"))
    (root / "pages" / "script-title.html").write_text(page("<script>alert('title')</script>Scripted", paras[6:8], ["img/good.jpg"]))
    (root / "pages" / "long.html").write_text(page("Long", [" ".join(words[:400])] * 8, ["img/good.jpg"]))
    (root / "pages" / "many-images.html").write_text(page("Many", [paras[0]] + ["Picture."] * 200, ["img/good.jpg"] * 201))
    (root / "pages" / "binary.html").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return {"root": root, "secret": secret, "outside": [base / "secret.png"]}


@pytest.fixture(scope="module")
def run_output(corpus, tiny_models, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("hostile-out") / "out"
    sets = {**proxy_overrides(tiny_models, "documents"), "runtime.progress": False, "dedup": False, "input.fetch_remote": True, "input.fetch_retries": 0}
    proc = run_cli("build-proxy", "--config", "pipelines/proxy-documents.yaml", "--input", str(corpus["root"]), "--output", str(out), "--json", *cli_sets(sets), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, "summary": json.loads(proc.stdout)}


def test_the_run_completes_and_validates(run_output):
    out, summary = run_output["out"], run_output["summary"]
    assert summary["status"] == "complete" and summary["samples"] > 0
    assert summary["inputs"] == summary["accepted"] + summary["rejected"] == len(PAGES) + len(PAGE_REJECTS) + 2  # + utf16, script-title
    assert run_cli("validate", str(out)).returncode == 0


def test_no_byte_of_a_file_outside_the_root_reaches_any_output(corpus, run_output):
    secret = corpus["secret"]
    probes = [secret[k : k + 64] for k in (len(secret) // 4, len(secret) // 2, 3 * len(secret) // 4)]  # noise pixels, not PNG chunk names
    for f in run_output["out"].rglob("*"):
        if not f.is_file():
            continue
        raw = f.read_bytes()
        assert not any(p in raw for p in probes), f
        if f.suffix == ".parquet":  # compressed: look at the values too
            table = pq.read_table(f)
            for col in table.columns:
                if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
                    assert not any(v is not None and (v == secret or probes[0] in v) for v in col.to_pylist()), f


def test_each_bad_reference_and_page_has_its_own_reason(run_output):
    out = run_output["out"]
    rejects = {r["source"]: r for p in out.glob("rejects/*.parquet") for r in pq.read_table(p).to_pylist()}
    for name, reason in PAGE_REJECTS.items():
        assert rejects[f"pages/{name}"]["reason"] == reason, rejects.get(f"pages/{name}")
    prep = pa.concat_tables([pq.read_table(p, columns=["kind", "parent", "locator", "reason", "detail"]) for p in out.glob("work/prep/*.parquet")]).to_pylist()
    docs = {r["locator"]: r for r in prep if r["kind"] == "document"}
    left_out = {}
    for r in prep:
        if r["kind"] == "doc_image" and r["reason"]:
            page_name = next(loc for loc, d in docs.items() if d is not None and _did(loc) == r["parent"])
            left_out[page_name.removeprefix("pages/")] = (r["reason"], r["detail"])
    for name, reason in PAGES.items():
        assert left_out.get(name, ("none",))[0] == reason, (name, left_out.get(name))
    assert "secret.png" in left_out["abs-path.html"][1] and "169.254.169.254" in left_out["link-local.html"][1]
    assert run_output["summary"]["details"]["document_images_left_out"]["outside_input"] == 4
    assert run_output["summary"]["details"]["page_assets"] == 5  # good.jpg, bomb.png, truncated.jpg, drawing.svg, link.png


def test_pages_are_read_in_their_encoding_and_titles_are_text(run_output):
    recs = [r for p in sorted(run_output["out"].glob("data/*/*.parquet")) for r in pq.read_table(p, columns=["source", "messages"]).to_pylist()]
    by_source = {}
    for r in recs:
        by_source.setdefault(r["source"], []).append(r)
    utf16 = by_source["pages/utf16.html"][0]
    assert "Le café crème se boit le matin" in utf16["messages"][0]["content"] + utf16["messages"][1]["content"]
    assert "Café crème" in utf16["messages"][0]["content"]
    assert "pages/script-title.html" in by_source  # a script in the title is text in a request, nothing runs


def _did(locator: str) -> str:
    from weaverdata.items import sample_id

    return sample_id(locator)
