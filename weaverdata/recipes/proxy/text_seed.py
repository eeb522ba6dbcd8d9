"""Proxy source ``text_seed``: a seed (a title, a keyword, a topic), the LLM writes the whole
illustrated answer, 1 to ``seed_max_images`` proxies with descriptions of its own. No image
stands behind these proxies, so a sample's ``images`` list is empty."""

from __future__ import annotations

from typing import Any

from weaverdata.config import ProxyConfig
from weaverdata.io.layout import OutputLayout
from weaverdata.io.sources import WorkUnit, read_unit, sample_id
from weaverdata.proxy.rounds import Draft, TextRound, free_proxies_regex, ok_text
from weaverdata.recipes.proxy.base import prep_row, read_unit_prep

SEED_FIELDS = ("seed", "title", "keyword", "label", "category", "text")


class TextSeed:
    name = "text_seed"

    def prepare(self, unit: WorkUnit, cfg: ProxyConfig) -> list[dict[str, Any]]:
        return prepare_seeds(unit, cfg)

    def is_input(self, row: dict[str, Any]) -> bool:
        return True

    def plan(self, cfg: ProxyConfig, units: list[WorkUnit], layout: OutputLayout) -> dict[str, Any]:
        return {}

    def drafts(self, unit: WorkUnit, cfg: ProxyConfig, rounds: TextRound, layout: OutputLayout) -> tuple[list[Draft], dict[str, tuple[str, str]]]:
        return plan_seeds(read_unit_prep(layout, unit.unit, ("seed",)), cfg, rounds)


def prepare_seeds(unit: WorkUnit, cfg: ProxyConfig) -> list[dict[str, Any]]:
    rows = []
    for item in read_unit(unit, cfg.input):
        if item.error:
            rows.append(prep_row(unit.unit, item.id, item.locator, "seed", reason=item.error[0], stage="read", detail=item.error[1]))
            continue
        row = item.payload.get("row")
        if row is None:
            rows.append(prep_row(unit.unit, item.id, item.locator, "seed", reason="not_a_seed", stage="read", detail="text seeds are rows of JSON Lines, Parquet or HF datasets"))
            continue
        name = cfg.seed_field or next((k for k in SEED_FIELDS if isinstance(row.get(k), str) and row[k].strip()), None)
        seed = row.get(name) if name else None
        if not isinstance(seed, str) or not seed.strip():
            rows.append(prep_row(unit.unit, item.id, item.locator, "seed", reason="missing_field", stage="read", detail=f"no seed text (tried {cfg.seed_field or ', '.join(SEED_FIELDS)})"))
        else:
            rows.append(prep_row(unit.unit, item.id, item.locator, "seed", text=" ".join(seed.split())[:500]))
    return rows


def plan_seeds(seeds: list[dict], cfg: ProxyConfig, rounds: TextRound) -> tuple[list[Draft], dict[str, tuple[str, str]]]:
    regex = free_proxies_regex(rounds.tags, cfg.seed_max_images, cfg.text.text_max_chars) if cfg.text.constrain else ""
    reqs = [rounds.request(f"{s['id']}:answer", cfg.text.seed_prompt, [], regex=regex, seed=s["text"], max_images=cfg.seed_max_images) for s in seeds]
    res = rounds.run(reqs)
    drafts, failed = [], {}
    for s in seeds:
        text, err = ok_text(res, f"{s['id']}:answer")
        if err:
            failed[s["id"]] = err
            continue
        d = Draft(sample_id(f"proxy|text_seed|{s['id']}"), [s["id"]], s["unit"], s["locator"], user=s["text"], assistant=text)
        d.expected = None  # any count from 1 to seed_max_images; no real image behind a proxy, so `images` stays empty
        drafts.append(d)
    return drafts, failed
