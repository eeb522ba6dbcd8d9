"""What every proxy source shares in the text stage: a round of requests, drafts, the checks.

A source turns its inputs into :class:`Draft` samples through rounds of requests
(:class:`TextRound`: one round = one Captioner run over many requests, on the job's engines,
cached per unit). :func:`check_drafts` then holds every assistant turn to the proxy format
(repaired when certain, else rejected with its ``proxy_*`` reason) and fingerprints it for the
job-wide duplicate check. Pure, apart from :class:`TextRound`'s engine calls.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from weaverdata.config import ProxyConfig
from weaverdata.proxy.dedup import MinHasher, duplicates_of, fingerprint
from weaverdata.proxy.format import Tags, check_or_repair, segments, shape_of


@dataclass
class Draft:
    """A sample being built: its input ids, user turn, assistant turn and images."""

    id: str
    inputs: list[str]  # prep ids of the inputs it is made of
    unit: str  # where it is written (the unit of its first input)
    source: str
    user: str = ""
    assistant: str = ""
    images: list[dict[str, Any]] = field(default_factory=list)  # image rows (output first, then input)
    input_images: list[str] = field(default_factory=list)  # prep ids of images shown in the user turn
    expected: int = 0  # proxies the assistant turn must hold


class TextRound:
    """Rounds of requests through one Captioner (the job's engines, the unit's cache); results by request id."""

    def __init__(self, cfg: ProxyConfig, captioner: Any):
        from weaverdata.engines.prompts import load_prompt

        self.cfg = cfg
        self.tags = Tags(cfg.tags.open, cfg.tags.close, cfg.tags.boi)
        self.captioner = captioner
        self.prompt = lambda name: load_prompt(name)
        self.log: list[list[Any]] = []  # the requests of every round, in order
        self.seconds = 0.0  # wall time inside the rounds

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.captioner.stats)

    def request(self, rid: str, prompt_name: str, images: list[bytes], regex: str = "", shorter: list[dict[str, Any]] | None = None, **values: Any):
        """A request of one prompt; ``shorter``: values that replace some of ``values`` (less
        context) for the forms tried, in order, when the request does not fit the prompt budget."""
        from weaverdata.engines.requests import CaptionRequest

        p = self.prompt(prompt_name)
        tag_values = {"open_tag": self.tags.open, "close_tag": self.tags.close, "boi_tag": self.tags.boi}

        def messages_of(vals: dict[str, Any]) -> list[dict[str, Any]]:
            vals = {**tag_values, **vals}
            system = p.system.format(**{k: v for k, v in vals.items() if "{" + k + "}" in p.system}) if "{" in p.system else p.system
            text = p.render(**{k: v for k, v in vals.items() if k in p.fields})
            content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
            return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]

        return CaptionRequest(id=rid, messages=messages_of(values), images=images, prompt_sha256=p.sha256, task=p.name, regex=regex,
                              shorter=[messages_of({**values, **alt}) for alt in (shorter or [])])

    def run(self, requests: list) -> dict[str, Any]:
        """One round: every request answered (from the cache or the engines), by request id."""
        if not requests:
            return {}
        self.log.append(list(requests))
        started = time.monotonic()
        try:
            return self.captioner.run(requests)
        finally:
            self.seconds += time.monotonic() - started


def text_re(max_chars: int) -> str:
    return r"[^<>\[\]]{1," + str(max_chars) + "}"


def proxies_regex(tags: Tags, descriptions: list[str], max_chars: int, *, lead: bool = True, tail: bool = True) -> str:
    """Free text, then each given description as a proxy, in order, with free text between."""
    t = text_re(max_chars)
    parts = [t if lead else ""]
    for k, desc in enumerate(descriptions):
        if k:
            parts.append(" " + t + " ")
        parts.append(re.escape(tags.proxy(desc)))
    if tail:
        parts.append("(?: " + t + ")?")
    return "".join(parts)


def free_proxies_regex(tags: Tags, max_images: int, max_chars: int, desc_chars: tuple[int, int] = (60, 600)) -> str:
    """Text seeds: 1..max_images proxies with free descriptions, free text around them."""
    t = text_re(max_chars)
    proxy = re.escape(tags.open) + r"[^<>\[\]]{" + f"{desc_chars[0]},{desc_chars[1]}" + "}" + re.escape(tags.close) + re.escape(tags.boi)
    return f"{t} {proxy}(?: {t} {proxy}){{0,{max_images - 1}}}(?: {t})?"


def ok_text(results: dict, rid: str) -> tuple[str | None, tuple[str, str] | None]:
    r = results.get(rid)
    if r is None:
        return None, ("caption_missing", rid)
    if not r.ok:
        return None, (f"caption_{r.reason.split(':')[0]}", f"{rid.split(':')[-1]}: {r.detail or r.reason}")
    return " ".join(r.text.split()), None


def described_by(cfg: ProxyConfig, prompt_sha256: str) -> dict[str, str]:
    return {"model": cfg.engine.model or "", "revision": cfg.engine.revision or "", "prompt_sha256": prompt_sha256}


def image_entry(slot: int, role: str, row: dict[str, Any], description: str, described_by: dict[str, str]) -> dict[str, Any]:
    return {"slot": slot, "role": role, "sha256": row["sha256"], "source": row["locator"], "width": row["width"], "height": row["height"],
            "description": description, "described_by": described_by}


def share(key: str, seed: int) -> float:
    """A stable number in [0, 1) for a key and a seed (seeded choices that survive resumes)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}|{key}".encode(), digest_size=8).digest(), "big") / 2**64


def check_drafts(drafts: list[Draft], cfg: ProxyConfig, tags: Tags, hasher: MinHasher | None = None) -> tuple[list[dict], dict[str, tuple[str, str]], Counter]:
    """Check or repair every assistant turn; (records with their dedup fingerprints, failed inputs, repairs)."""
    t = cfg.text
    hasher = hasher or MinHasher()
    records: list[dict] = []
    failed: dict[str, tuple[str, str]] = {}
    repairs: Counter = Counter()
    for dr in drafts:
        text, verdict, fixes = check_or_repair(dr.assistant, tags, min_words=t.description_min_words, max_words=t.description_max_words, expected=dr.expected if dr.expected is not None else None)
        n_proxies = sum(1 for seg in segments(text, tags) if seg.kind == "proxy") if verdict.ok else 0
        if dr.expected is None and verdict.ok and not 1 <= n_proxies <= cfg.seed_max_images:
            for i in dr.inputs:
                failed.setdefault(i, ("proxy_count", f"{n_proxies} proxies, 1..{cfg.seed_max_images} expected"))
            continue
        if not verdict.ok:
            for i in dr.inputs:
                failed.setdefault(i, (verdict.reason, verdict.detail))
            continue
        repairs.update(fixes)
        key, sig = fingerprint(text, hasher)
        records.append({
            "record": {
                "id": dr.id, "recipe": cfg.recipe, "shape": shape_of(text, tags),
                "messages": [{"role": "user", "content": dr.user}, {"role": "assistant", "content": text}],
                "images": dr.images, "tags": {"open": tags.open, "close": tags.close, "boi": tags.boi}, "source": dr.source,
            },
            "inputs": dr.inputs, "unit": dr.unit, "input_images": dr.input_images, "exact_key": key, "signature": sig,
        })
    return records, failed, repairs


def finish(drafts: list[Draft], cfg: ProxyConfig, tags: Tags) -> tuple[list[dict], dict[str, tuple[str, str]], Counter]:
    """:func:`check_drafts`, then duplicates dropped (in this process; a job does it over every
    unit's fingerprints): (records, failed inputs, repairs)."""
    records, failed, repairs = check_drafts(drafts, cfg, tags)
    dropped = duplicates_of([r["exact_key"] for r in records], [r["signature"] for r in records], threshold=cfg.dedup_threshold) if cfg.dedup else {}
    kept = []
    for k, r in enumerate(records):
        if k in dropped:
            reason, first = dropped[k]
            for i in r["inputs"]:
                failed.setdefault(i, (reason, f"same text as sample {records[first]['record']['id']}"))
            continue
        kept.append(r)
    return kept, failed, repairs
