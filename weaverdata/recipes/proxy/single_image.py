"""Proxy source ``single_image``: one image, the VLM writes the user's request and the answer.

Round 1 writes a request and a dense description of the image; round 2 an answer that leads
into the image and ends with its proxy (``text_proxy``), or the answer is the proxy alone
(``proxy``); a share of samples (``input_image_share``) shows the image as a real input in the
user turn instead (``text``). Everything stays inside one unit: a unit's task reads its images
and writes its drafts.
"""

from __future__ import annotations

from typing import Any

from weaverdata.config import ProxyConfig
from weaverdata.io.layout import OutputLayout
from weaverdata.io.sources import WorkUnit, sample_id
from weaverdata.proxy.rounds import Draft, TextRound, described_by, image_entry, ok_text, proxies_regex, share
from weaverdata.recipes.proxy.base import prepare_images, read_unit_prep


class SingleImage:
    name = "single_image"

    def prepare(self, unit: WorkUnit, cfg: ProxyConfig) -> list[dict[str, Any]]:
        return prepare_images(unit, cfg)

    def is_input(self, row: dict[str, Any]) -> bool:
        return True

    def plan(self, cfg: ProxyConfig, units: list[WorkUnit], layout: OutputLayout) -> dict[str, Any]:
        return {}

    def drafts(self, unit: WorkUnit, cfg: ProxyConfig, rounds: TextRound, layout: OutputLayout) -> tuple[list[Draft], dict[str, tuple[str, str]]]:
        return plan_single_images(read_unit_prep(layout, unit.unit, ("image",)), cfg, rounds)


def plan_single_images(images: list[dict], cfg: ProxyConfig, rounds: TextRound) -> tuple[list[Draft], dict[str, tuple[str, str]]]:
    failed: dict[str, tuple[str, str]] = {}
    r1 = []
    for im in images:
        r1.append(rounds.request(f"{im['id']}:description", cfg.text.description_prompt, [im["data"]], context=""))
        r1.append(rounds.request(f"{im['id']}:request", cfg.text.request_prompt, [im["data"]], context=""))
    res1 = rounds.run(r1)
    desc_sha = rounds.prompt(cfg.text.description_prompt).sha256
    r2, ready = [], []
    for im in images:
        desc, e1 = ok_text(res1, f"{im['id']}:description")
        request, e2 = ok_text(res1, f"{im['id']}:request")
        if e1 or e2:
            failed[im["id"]] = e1 or e2
            continue
        u = share(im["id"], cfg.seed)
        if u < cfg.input_image_share:
            mode = "input"
        elif u < cfg.input_image_share + (1 - cfg.input_image_share) / 3:
            mode = "proxy"
        else:
            mode = "text_proxy"
            regex = proxies_regex(rounds.tags, [desc], cfg.text.text_max_chars, tail=False) if cfg.text.constrain else ""
            r2.append(rounds.request(f"{im['id']}:answer", cfg.text.answer_prompt, [], regex=regex, request=request, description=desc))
        ready.append((im, desc, request, mode))
    res2 = rounds.run(r2)
    drafts = []
    for im, desc, request, mode in ready:
        d = Draft(sample_id(f"proxy|single_image|{im['id']}|{mode}"), [im["id"]], im["unit"], im["locator"], user=request)
        if mode == "input":
            d.user = f"<image:0>\n{request}"
            d.assistant = desc
            d.images = [image_entry(0, "input", im, desc, described_by(cfg, desc_sha))]
            d.input_images = [im["id"]]
        elif mode == "proxy":
            d.assistant = rounds.tags.proxy(desc)
            d.images = [image_entry(0, "output", im, desc, described_by(cfg, desc_sha))]
            d.expected = 1
        else:
            answer, err = ok_text(res2, f"{im['id']}:answer")
            if err:
                failed[im["id"]] = err
                continue
            d.assistant = answer
            d.images = [image_entry(0, "output", im, desc, described_by(cfg, desc_sha))]
            d.expected = 1
        drafts.append(d)
    return drafts, failed
