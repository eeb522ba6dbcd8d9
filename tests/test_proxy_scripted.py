"""build-proxy's document logic with a deterministic scripted engine (replies fixed here): where
proxies go, how requests are built, weaving order, refinement, validation and repair, and the
three target shapes. No Ray, no model: `TextRound` runs the real Captioner on a scripted backend;
the sources' per-unit functions are called as a unit's text task calls them."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from weaverdata.config import ProxyConfig
from weaverdata.engines.captioner import Captioner
from weaverdata.engines.requests import RawGeneration
from weaverdata.proxy.format import Tags, check_proxies, segments
from weaverdata.proxy.rounds import TextRound, finish
from weaverdata.recipes.proxy.documents import plan_documents, same_subject_links
from weaverdata.recipes.proxy.image_group import group_indices, plan_groups
from weaverdata.recipes.proxy.single_image import plan_single_images
from weaverdata.recipes.proxy.text_seed import plan_seeds

T = Tags()


class Scripted:
    """reply(request) -> text; every reply ends normally ("stop")."""

    name = "scripted"

    def __init__(self, reply):
        self.reply = reply

    def close(self):
        pass

    def generate(self, requests, keys, sampling):
        for r, k in zip(requests, keys):
            text = self.reply(r)
            yield RawGeneration(key=k, text=text, finish_reason="stop", prompt_tokens=10, completion_tokens=len(text.split()), image_tokens=len(r.images) or None)


def jpeg(color) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (300, 200), color).save(b, "JPEG")
    return b.getvalue()


def image_row(i: int) -> dict:
    data = jpeg((200, 8 * i, 30))  # distinct pixels: the result cache answers identical images once
    return {"id": f"img{i}", "unit": "00000", "locator": f"p{i}.jpg", "data": data, "ext": "jpg", "width": 300, "height": 200, "sha256": f"{i:064x}"}


def user_text(req) -> str:
    return next(p["text"] for m in req.messages if m["role"] == "user" for p in m["content"] if p.get("type") == "text")


def desc_for(req) -> str:
    return f"a photo numbered {req.id.split(':')[0]} with red tones and soft light"


@pytest.fixture
def cfg(tmp_path):
    return ProxyConfig.model_validate({"engine": {"model": "scripted", "retries_on_failed_check": 0}, "text": {"description_min_words": 3},
                                       "output": {"path": str(tmp_path / "out")}})


def rounds(cfg, reply):
    return TextRound(cfg, Captioner(cfg.engine, cache_url=None, backend=Scripted(reply)))


def test_single_image_shapes_requests_and_answer(cfg):
    cfg = cfg.model_copy(update={"input_image_share": 0.34})
    images = [image_row(i) for i in range(30)]

    def reply(req):
        if req.task == "dense_description":
            return desc_for(req)
        if req.task == "request":
            return "Show me something red."
        assert req.task == "answer" and req.images == []
        desc = re.search(r"DESCRIPTION is: (.*)$", user_text(req), re.S).group(1).strip()
        assert req.regex and re.fullmatch(req.regex, "Here it is. " + T.proxy(desc))  # the constraint admits the answer
        return "Here it is. " + T.proxy(desc)

    r = rounds(cfg, reply)
    drafts, failed = plan_single_images(images, cfg, r)
    assert not failed and len(drafts) == 30
    assert [len(x) for x in r.log] == [60, sum(1 for d in drafts if d.expected == 1 and "Here it is" in d.assistant)]
    recs, failed2, _ = finish(drafts, cfg.model_copy(update={"dedup": False}), T)
    shapes = {rec["record"]["shape"] for rec in recs}
    assert shapes == {"text", "proxy", "text_proxy"}
    for rec in recs:
        rd = rec["record"]
        if rd["shape"] == "text":
            assert rd["messages"][0]["content"].startswith("<image:0>") and rec["input_images"] == ["img" + rd["images"][0]["source"][1:-4]]
        else:
            assert segments(rd["messages"][1]["content"])[-1].text == rd["images"][0]["description"]


def test_groups_are_woven_in_order_then_refined(cfg):
    images = [image_row(i) for i in range(5)]
    emb = np.array([[1, 0, 0], [1, 0.01, 0], [0, 1, 0], [1, 0.02, 0], [0, 0, 1]], dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)

    def reply(req):
        if req.task == "dense_description":
            return desc_for(req)
        if req.task == "request":
            return "Tell me a story."
        descs = re.findall(r"^\d+\. (.*)$", user_text(req), re.M) if req.task == "narrative" else [s.text for s in segments(user_text(req).split("\n\n", 1)[1]) if s.kind == "proxy"]
        woven = "Once. " + " Then. ".join(T.proxy(d) for d in descs) + " The end."
        assert re.fullmatch(req.regex, woven), (req.regex, woven)
        return woven.replace("Once.", "Refined once.") if req.task == "refinement" else woven

    r = rounds(cfg, reply)
    groups = group_indices(emb, cfg)
    assert groups == [[0, 1, 3]]  # img2 and img4 are in no group (the driver rejects them no_group)
    drafts, failed = plan_groups(images, groups, cfg, r)
    assert not failed
    (d,) = drafts
    assert d.inputs == ["img0", "img1", "img3"]  # input order
    assert [t.task for t in r.log[1]] == ["narrative"] and [t.task for t in r.log[2]] == ["refinement"]
    assert d.assistant.startswith("Refined once.")
    assert [s.text for s in segments(d.assistant) if s.kind == "proxy"] == [im["description"] for im in d.images]
    assert [im["source"] for im in d.images] == ["p0.jpg", "p1.jpg", "p3.jpg"]


def test_a_weave_that_breaks_the_format_is_rejected_and_a_certain_slip_repaired(cfg):
    cfg = cfg.model_copy(update={"text": cfg.text.model_copy(update={"constrain": False, "refine": False})})
    images = [image_row(i) for i in range(4)]
    emb = np.array([[1, 0], [1, 0.01], [0, 1], [0.01, 1]], dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)

    def reply(req):
        if req.task == "dense_description":
            return desc_for(req)
        if req.task == "request":
            return "Tell me."
        descs = re.findall(r"^\d+\. (.*)$", user_text(req), re.M)
        if "img0" in descs[0]:  # forgets the <BOI> after each proxy: certain repair
            return "A. " + " B. ".join(f"{T.open}{d}{T.close}" for d in descs)
        return f"A. {T.open}{descs[0]} and never closed"  # unbalanced: rejected

    drafts, failed = plan_groups(images, group_indices(emb, cfg), cfg, rounds(cfg, reply))
    recs, failed2, repairs = finish(drafts, cfg, T)
    assert len(recs) == 1 and repairs == {"missing_boi": 1}
    assert check_proxies(recs[0]["record"]["messages"][1]["content"], expected=2).ok
    assert {k: v[0] for k, v in failed2.items()} == {"img2": "proxy_unbalanced", "img3": "proxy_unbalanced"}


def test_documents_place_proxies_and_describe_a_repeated_subject_consistently(cfg):
    doc = {"title": "Red things", "items": [{"text": "Opening words about red."}, {"image": 0}, {"text": "Middle words."}, {"image": 1}, {"text": "Closing words."}], "dropped_images": {}}
    doc_rows = [{"id": "doc1", "unit": "00000", "locator": "d.html", "text": json.dumps(doc)}]
    ims = [{**image_row(0), "id": "d0", "parent": "doc1", "position": 0}, {**image_row(1), "id": "d1", "parent": "doc1", "position": 1}]
    emb_of = {"d0": np.array([1.0, 0.0]), "d1": np.array([1.0, 0.0])}  # the same subject twice
    prompts = {}

    def reply(req):
        prompts[req.id] = user_text(req)
        return desc_for(req)

    r = rounds(cfg, reply)
    first_of = same_subject_links({"doc1": ["d0", "d1"]}, emb_of, cfg.documents.same_subject_cosine)
    assert first_of == {"d1": "d0"}
    drafts, failed = plan_documents(doc_rows, {"doc1": ims}, first_of, cfg, r)
    assert not failed and [len(x) for x in r.log] == [1, 1]  # round 2 waits for the first description
    assert "Text before the image: Opening words about red." in prompts["d0:description"]
    assert desc_for(type("R", (), {"id": "d0:x"})) in prompts["d1:description"]  # the earlier description is in the prompt
    full, cut = drafts
    # the user turn is the title as a request plus the opening; the assistant continues after it
    assert full.user == 'Write an illustrated article titled "Red things". It begins:\n\nOpening words about red.'
    assert [s.kind for s in segments(full.assistant)] == ["proxy", "text", "proxy", "text"]
    assert "Opening words" not in full.assistant and "Red things" not in full.assistant
    assert cut.assistant.endswith(T.boi) and [s.kind for s in segments(cut.assistant)] == ["proxy"]
    recs, _, _ = finish(drafts, cfg.model_copy(update={"dedup": False}), T)
    assert sorted(rec["record"]["shape"] for rec in recs) == ["proxy", "text"]


def test_text_seeds_accept_one_to_max_proxies(cfg):
    seeds = [{"id": f"s{i}", "unit": "00000", "locator": f"seeds.jsonl#line={i}", "text": f"Topic {i}"} for i in range(3)]
    d = "a wide photograph of a quiet harbour at dawn with boats"
    replies = {"s0": f"Intro. {T.proxy(d)} Outro.", "s1": "No pictures at all.", "s2": " ".join(T.proxy(x) for x in ("a red bicycle leaning on a brick wall", "two cats asleep in a basket", "snowy mountain peaks under blue sky", "a bowl of ramen with chopsticks"))}

    def reply(req):
        assert req.regex and "Topic" in user_text(req)
        return replies[req.id.split(":")[0]]

    drafts, failed = plan_seeds(seeds, cfg, rounds(cfg, reply))
    recs, failed2, _ = finish(drafts, cfg.model_copy(update={"dedup": False}), T)
    assert [rec["record"]["messages"][0]["content"] for rec in recs] == ["Topic 0"]
    assert not failed and {k: v[0] for k, v in failed2.items()} == {"s1": "proxy_count", "s2": "proxy_count"}
