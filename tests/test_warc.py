"""WARC files (Common Crawl, `wget --warc-file`) as input: pages are documents whose images are
looked up in the same archive; what the archive lacks is remote and follows the input policy."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from tests.corpus import image_bytes, photo
from weaverdata.config import InputConfig, ProxyConfig
from weaverdata.demo import SITE_CHROME, site_page, wiki_articles
from weaverdata.io.sources import plan_units, read_unit
from weaverdata.recipes.proxy.documents import prepare_documents


def write_warc(path: Path, records: list[tuple[str, str, bytes]]) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for uri, ctype, body in records:
            if ctype == "request":
                writer.write_record(writer.create_warc_record(uri, "request", payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n")))
                continue
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(uri, "response", payload=io.BytesIO(body), http_headers=headers))


@pytest.fixture()
def crawl(tmp_path: Path) -> dict:
    root = tmp_path / "crawl"
    root.mkdir()
    photo_jpg = image_bytes(Image.fromarray(photo("coffee")), "JPEG", quality=90)
    (tmp_path / "outside.png").write_bytes(b"OUTSIDE")
    title, text = wiki_articles(1)[0]
    words = text.split()
    article = (f"<p>{' '.join(words[:60])}</p><img src='img/coffee.jpg'><p>{' '.join(words[60:120])}</p>"
               f"<img src='http://elsewhere.example/b.jpg'><img src='/abs/c.jpg'><img src='file://{tmp_path / 'outside.png'}'><p>{' '.join(words[120:180])}</p>")
    records = [
        ("http://site.example/wiki/page.html", "request", b""),
        ("http://site.example/wiki/page.html", "text/html; charset=utf-8", site_page(title, article).encode()),
        ("http://site.example/wiki/img/coffee.jpg", "image/jpeg", photo_jpg),
        ("http://site.example/style.css", "text/css", b"p { color: red }"),
        ("http://site.example/short.html", "text/html", b"<html><head><title>Short</title></head><body><p>Too short.</p></body></html>"),
    ]
    write_warc(root / "crawl.warc.gz", records)
    return {"root": root, "photo": photo_jpg, "title": title}


def proxy_cfg(root: Path) -> ProxyConfig:
    return ProxyConfig(recipe="documents", input={"path": str(root)}, output={"path": str(root.parent / "out")}, engine={"model": "tiny"})


def test_a_warc_file_is_one_unit_of_its_own_kind(crawl):
    units = plan_units(InputConfig(path=str(crawl["root"])))
    assert [(u.kind, u.path) for u in units] == [("warc", "crawl.warc.gz")]
    items = list(read_unit(units[0], InputConfig(path=str(crawl["root"]))))
    kinds = ["image" if "image" in i.payload else i.payload["row"]["url"] for i in items]
    assert kinds == ["http://site.example/wiki/page.html", "image", "http://site.example/short.html"]  # no request, no CSS
    assert items[1].payload["image"] == crawl["photo"] and items[1].payload["meta"]["url"].endswith("coffee.jpg")
    assert all(i.locator.startswith("crawl.warc.gz@") for i in items) and len({i.locator for i in items}) == 3


def test_pages_of_a_warc_find_their_images_in_the_archive_and_nowhere_else(crawl):
    cfg = proxy_cfg(crawl["root"])
    [unit] = plan_units(cfg.input)
    rows = prepare_documents(unit, cfg)
    docs = {r["locator"]: r for r in rows if r["kind"] == "document"}
    assert len(docs) == 2
    page, short = sorted(docs.values(), key=lambda r: r["reason"])
    assert page["reason"] == "" and short["reason"] == "too_few_images"
    doc = json.loads(page["text"])
    assert doc["title"] == crawl["title"] and [list(i) for i in doc["items"]].count(["image"]) == 1
    text = " ".join(i.get("text", "") for i in doc["items"])
    assert not [c for c in SITE_CHROME if c in text]
    kept = [r for r in rows if r["kind"] == "doc_image" and not r["reason"]]
    assert [r["data"] for r in kept] == [crawl["photo"]]  # from the archive, bytes unchanged
    left_out = sorted((r["locator"], r["reason"]) for r in rows if r["kind"] == "doc_image" and r["reason"])
    assert left_out == sorted([("http://elsewhere.example/b.jpg", "remote_not_fetched"), ("/abs/c.jpg", "remote_not_fetched"),
                               (f"file://{crawl['root'].parent / 'outside.png'}", "outside_input")])
    assert not any(r["data"] == b"OUTSIDE" for r in rows)
    assets = [r for r in rows if r["kind"] == "asset"]
    assert len(assets) == 1 and "coffee.jpg" in assets[0]["detail"]


def test_a_broken_warc_is_a_reject_not_a_crash(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "broken.warc.gz").write_bytes(b"\x1f\x8b\x08\x00garbage, not a gzip member or a WARC record")
    cfg = proxy_cfg(root)
    [unit] = plan_units(cfg.input)
    rows = prepare_documents(unit, cfg)
    assert [(r["kind"], r["reason"]) for r in rows] == [("document", "warc_error")]
