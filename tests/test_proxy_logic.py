"""Pure logic of build-proxy: proxy format, validation and repair, target shapes, document
parsing and filters, near-duplicate detection, the training mix."""

from __future__ import annotations

import random

import numpy as np
import pytest

from weaverdata.proxy.dedup import MinHasher, exact_key, find_duplicates, jaccard_estimate
from weaverdata.proxy.documents import DocumentError, context_around, document_verdict, from_html, from_mmc4, from_obelics, image_verdict
from weaverdata.proxy.format import Segment, Tags, check_or_repair, check_proxies, cut_after_proxy, join, repair, segments, shape_of
from weaverdata.proxy.mix import mix_counts, mix_plan

T = Tags()
DESC = "a tabby cat asleep on a sunlit wooden windowsill, soft morning light, shallow depth of field"
P = T.proxy(DESC)


# -- format -------------------------------------------------------------------------------------


def test_proxy_round_trips_through_segments():
    text = f"Here is the cat. {P} And here it wakes up. {T.proxy('the same cat stretching on the windowsill in morning light')}"
    segs = segments(text)
    assert [s.kind for s in segs] == ["text", "proxy", "text", "proxy"]
    assert segs[1].text == DESC
    assert segments(join(segs)) == segs
    assert check_proxies(text).ok


def test_custom_tags():
    tags = Tags("<img_desc>", "</img_desc>", "<start_of_image>")
    text = f"Look: {tags.proxy(DESC)}"
    assert check_proxies(text, tags).ok and check_proxies(text).ok is not False  # default tags see no proxy: fine text
    assert segments(text, tags)[1] == Segment("proxy", DESC)


@pytest.mark.parametrize(
    "text,reason",
    [
        (f"x <imagine>{DESC}. The cat sat.", "proxy_unbalanced"),
        (f"x {DESC}</imagine><BOI>", "proxy_unbalanced"),
        (f"<imagine>a <imagine>{DESC}</imagine><BOI>", "proxy_nested"),
        ("<imagine>   </imagine><BOI>", "proxy_empty"),
        ("<imagine>a cat</imagine><BOI>", "proxy_too_short"),
        ("<imagine>" + " ".join(["word"] * 200) + "</imagine><BOI>", "proxy_too_long"),
        (f"text <BOI> more {P}", "proxy_stray_boi"),
        (f"{P} and then <image> here", "proxy_placeholder_left"),
        (f"{P} and <image:2>", "proxy_placeholder_left"),
        (f"{P} [IMAGE 3]", "proxy_placeholder_left"),
        (f"{P} <|image_pad|>", "proxy_placeholder_left"),
    ],
)
def test_malformed_proxies_are_named(text, reason):
    v = check_proxies(text)
    assert not v.ok and v.reason == reason, v


def test_count_is_checked():
    assert check_proxies(f"{P} x {P}", expected=2).ok
    assert check_proxies(f"{P} x", expected=2).reason == "proxy_count"


@pytest.mark.parametrize(
    "broken,fix",
    [
        (f"Look. <imagine>{DESC}</imagine> Then.", "missing_boi"),
        (f"Look. <imagine>{DESC}</imagine> <BOI> Then.", "whitespace_before_boi"),
        (f"Look. <imagine>{DESC}</imagine><BOI><BOI> Then.", "doubled_boi"),
        (f"Look. <imagine>  {DESC}  </imagine><BOI> Then.", "description_whitespace"),
    ],
)
def test_certain_repairs_make_a_valid_text(broken, fix):
    assert check_proxies(broken).ok == (fix == "description_whitespace")
    fixed, verdict, fixes = check_or_repair(broken)
    assert verdict.ok and fix in fixes
    assert fixed == f"Look. {P} Then."


@pytest.mark.parametrize("text", [f"x <imagine>{DESC}. The cat sat.", f"{P} <image>", f"<imagine>a <imagine>{DESC}</imagine><BOI>"])
def test_uncertain_problems_are_not_repaired(text):
    out, verdict, fixes = check_or_repair(text)
    assert not verdict.ok and out == text and fixes == []


def test_repair_never_changes_a_valid_text():
    text = f"A. {P} B. {P}"
    assert repair(text) == (text, [])


def test_shapes_and_cuts():
    assert shape_of("Just words.") == "text"
    assert shape_of(P) == "proxy"
    assert shape_of(f"Words then {P}") == "text_proxy"
    assert shape_of(f"{P} then words") == "text"
    doc = f"Intro. {P} Middle. {P} End."
    assert cut_after_proxy(doc, 1) == f"Intro. {P}" and shape_of(cut_after_proxy(doc, 1)) == "text_proxy"
    with pytest.raises(ValueError):
        cut_after_proxy(doc, 3)


# -- documents ----------------------------------------------------------------------------------


def test_obelics_and_mmc4_rows():
    doc = from_obelics({"texts": ["Intro text here.", None, "After."], "images": [None, "a.jpg", None], "url": "u"})
    assert [i.kind for i in doc.items] == ["text", "image", "text"] and doc.meta == {"url": "u"}
    with pytest.raises(DocumentError) as e:
        from_obelics({"texts": ["a"], "images": []})
    assert e.value.reason == "invalid_document"
    m = from_mmc4({"text_list": ["One.", "Two."], "image_info": [{"image_name": "x.jpg", "matched_text_index": 0}]})
    assert [(i.kind, i.text or i.image) for i in m.items] == [("text", "One."), ("image", "x.jpg"), ("text", "Two.")]
    with pytest.raises(DocumentError):
        from_mmc4({"text_list": ["One."], "image_info": [{"image_name": "x.jpg", "matched_text_index": 5}]})


def test_html_reading_order_skips_scripts_and_navigation():
    html = """<html><head><title>Cats  of Rome</title><style>p{}</style></head><body>
    <nav>Home | About</nav><h1>Cats</h1><p>Rome has <b>many</b> cats.</p><img src="img/a.jpg">
    <script>var x = 1;</script><p>They sleep in ruins.</p><figure><img src="b.png"><figcaption>A cat.</figcaption></figure></body></html>"""
    doc = from_html(html)
    assert doc.title == "Cats of Rome"
    assert [(i.kind, i.text or i.image) for i in doc.items] == [
        ("text", "Cats"), ("text", "Rome has many cats."), ("image", "img/a.jpg"), ("text", "They sleep in ruins."), ("image", "b.png"), ("text", "A cat."),
    ]
    before, after = context_around(doc, 0)
    assert before.endswith("many cats.") and after.startswith("They sleep")


def test_published_filters():
    assert image_verdict(150, 150).ok and image_verdict(149, 400).reason == "too_small"
    assert image_verdict(800, 300).reason == "bad_aspect"
    doc = from_obelics({"texts": ["word " * 12, None], "images": [None, "a.jpg"]})
    assert document_verdict(doc).ok
    assert document_verdict(from_obelics({"texts": ["word " * 12], "images": [None]})).reason == "too_few_images"
    assert document_verdict(from_obelics({"texts": ["few words", None], "images": [None, "a.jpg"]})).reason == "too_few_words"
    many = from_obelics({"texts": ["word " * 20] + [None] * 31, "images": [None] + ["a.jpg"] * 31})
    assert document_verdict(many).reason == "too_many_images"


# -- dedup --------------------------------------------------------------------------------------


def _text(rng, words, n=300):
    return " ".join(rng.choice(words) for _ in range(n))


def test_exact_and_near_duplicates_keep_the_first():
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(5)) for _ in range(500)]
    base = _text(rng, words)
    near = base.replace(base.split()[10], "changed", 1)
    other = _text(rng, words)
    assert exact_key(base) == exact_key(base.upper().replace(" ", "  "))
    h = MinHasher()
    assert jaccard_estimate(h.signature(base), h.signature(near)) > 0.9
    assert jaccard_estimate(h.signature(base), h.signature(other)) < 0.1
    dropped = find_duplicates([base, near, other, base.upper()])
    assert dropped == {1: ("duplicate_near", 0), 3: ("duplicate_exact", 0)}


def test_minhash_is_deterministic():
    h = MinHasher()
    assert (h.signature("the quick brown fox jumps over the lazy dog") == MinHasher().signature("the quick brown fox jumps over the lazy dog")).all()


# -- mix ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_gen,n_und,ratio", [(100, 1000, 5.0), (103, 1000, 5.0), (100, 7, 5.0), (10, 10, 1.0), (0, 5, 5.0), (50, 0, 5.0)])
def test_mix_has_the_ratio_within_one_sample_and_is_seeded(n_gen, n_und, ratio):
    plan = mix_plan(n_gen, n_und, ratio, seed=3)
    g = sum(1 for k, _ in plan if k == "generation")
    u = len(plan) - g
    assert abs(g - ratio * u) <= ratio  # within one understanding sample of the ratio
    assert abs(u - g / ratio) <= 1
    assert len({i for k, i in plan if k == "generation"}) == g and len({i for k, i in plan if k == "understanding"}) == u
    assert plan == mix_plan(n_gen, n_und, ratio, seed=3)
    if g > 5 and u > 1:
        assert plan != mix_plan(n_gen, n_und, ratio, seed=4)


def test_mix_counts_use_all_generation_samples_when_understanding_is_plenty():
    assert mix_counts(100, 1000, 5.0) == (100, 20)
    gen, und = mix_counts(100, 7, 5.0)
    assert und == 7 and round(gen / 5) == 7


def test_pages_are_decoded_in_their_own_charset():
    from weaverdata.proxy.documents import DocumentError, decode_html

    page = "<html><head><title>Crème brûlée</title></head><body><p>Ein Straßencafé in Köln, à côté de la gare.</p></body></html>"
    for codec in ("utf-16", "utf-16-be", "utf-32", "utf-8-sig"):  # each with its byte-order mark
        data = page.encode(codec) if codec != "utf-16-be" else b"\xfe\xff" + page.encode("utf-16-be")
        assert decode_html(data)[0] == page, codec
    declared = page.replace("<head>", '<head><meta charset="windows-1252">').encode("cp1252")
    assert decode_html(declared) == (page.replace("<head>", '<head><meta charset="windows-1252">'), "cp1252")
    http_equiv = page.replace("<head>", '<head><meta http-equiv="Content-Type" content="text/html; charset=ISO-8859-1">')
    assert decode_html(http_equiv.encode("latin-1"))[0] == http_equiv
    undeclared = ("<html><body>" + "<p>Les élèves étudient à l'école près de la forêt, où les arbres sont très âgés.</p>" * 20 + "</body></html>")
    assert "élèves" in decode_html(undeclared.encode("latin-1"))[0]  # no BOM, no charset, not UTF-8: detected
    with pytest.raises(DocumentError) as info:
        decode_html(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert info.value.reason == "not_html"


def test_main_content_leaves_site_chrome_out_and_keeps_images_in_place():
    from weaverdata.demo import SITE_CHROME, site_page

    paras = [" ".join(f"word{k}x{i}" for i in range(40)) + "." for k in range(4)]
    article = f"<p>{paras[0]}</p><img src='a.jpg'><p>{paras[1]}</p><figure><img src='b.jpg'></figure><p>{paras[2]}</p><p>{paras[3]}</p><img src='c.jpg'>"
    doc = from_html(site_page("Cats of Rome", article, prev="Dogs", next_="Birds"))
    assert doc.meta["extractor"] == "trafilatura" and doc.title == "Cats of Rome"
    text = " ".join(i.text for i in doc.items)
    assert not [c for c in SITE_CHROME if c in text] and all(p[:-1] in text for p in paras)
    assert [i.kind if i.kind == "image" else "text" for i in doc.items if i.kind == "image" or i.text != "Cats of Rome"] == \
        ["text", "image", "text", "image", "text", "text", "image"]
    assert [i.image for i in doc.images] == ["a.jpg", "b.jpg", "c.jpg"]
    whole = from_html(site_page("Cats of Rome", article), main_content=False)  # the whole page, as before
    assert whole.meta["extractor"] == "html" and "All rights reserved" in " ".join(i.text for i in whole.items)
