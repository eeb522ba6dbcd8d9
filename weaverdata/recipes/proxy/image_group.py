"""Proxy source ``image_group``: a group of related images woven into one narrative.

The driver embeds every image (CLIP, on the workers; only vectors come back) and groups them by
repeated maximum cliques of the similarity graph (build-refs' grouping); each group goes to the
unit of its first member (``work/items``). A unit's task then describes each image and writes a
request from the first (round 1), weaves the images, in input order, into one narrative with a
proxy each (round 2), and refines it (round 3). An image in no group is rejected ``no_group``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from weaverdata.config import ProxyConfig
from weaverdata.io.layout import OutputLayout
from weaverdata.io.sources import WorkUnit, sample_id
from weaverdata.proxy.rounds import Draft, TextRound, described_by, image_entry, ok_text, proxies_regex
from weaverdata.recipes.proxy.base import prepare_images, read_unit_prep
from weaverdata.recipes.staged import embed_prep, read_items, read_prep_meta, read_prep_rows, write_items


class ImageGroup:
    name = "image_group"

    def prepare(self, unit: WorkUnit, cfg: ProxyConfig) -> list[dict[str, Any]]:
        return prepare_images(unit, cfg)

    def is_input(self, row: dict[str, Any]) -> bool:
        return True

    def plan(self, cfg: ProxyConfig, units: list[WorkUnit], layout: OutputLayout) -> dict[str, Any]:
        """Groups from the embeddings (ids and vectors on the driver), one items file per unit."""
        meta = read_prep_meta(layout, units, ["id", "unit", "kind", "reason"])
        order = [r for r in meta if r["kind"] == "image" and not r["reason"]]  # input order
        ids, emb = embed_prep(layout, units, cfg.clip, kind="image")
        row_of = {i: k for k, i in enumerate(ids)}
        images = [r for r in order if r["id"] in row_of]
        vectors = emb[[row_of[r["id"]] for r in images]] if images else np.zeros((0, 1), np.float32)
        groups = group_indices(vectors, cfg)
        per_unit: dict[str, list[dict[str, Any]]] = {u.unit: [] for u in units}
        grouped: set[int] = set()
        for grp in groups:
            members = [images[i] for i in grp]
            gid = sample_id("group|" + "|".join(m["id"] for m in members))
            per_unit[members[0]["unit"]].append({"kind": "group", "id": gid, "members": [m["id"] for m in members], "member_units": [m["unit"] for m in members]})
            grouped.update(grp)
        for i, r in enumerate(images):
            if i not in grouped:
                per_unit[r["unit"]].append({"kind": "no_group", "id": r["id"], "members": [], "member_units": []})
        for u, items in per_unit.items():
            write_items(layout, u, items)
        return {"groups": len(groups), "images_grouped": len(grouped)}

    def drafts(self, unit: WorkUnit, cfg: ProxyConfig, rounds: TextRound, layout: OutputLayout) -> tuple[list[Draft], dict[str, tuple[str, str]]]:
        items = read_items(layout, unit.unit)
        failed = {it["id"]: ("no_group", "similar to no other image above grouping.edge_threshold") for it in items if it["kind"] == "no_group"}
        group_items = [it for it in items if it["kind"] == "group"]
        wanted: dict[str, set[str]] = {}
        for it in group_items:
            for m, u in zip(it["members"], it["member_units"]):
                wanted.setdefault(u, set()).add(m)
        rows = {r["id"]: r for r in read_unit_prep(layout, unit.unit, ("image",)) if r["id"] in wanted.get(unit.unit, set())}
        for u, ids in wanted.items():  # members from other units: read from their prep files, on this worker
            if u != unit.unit:
                rows.update({r["id"]: r for r in read_prep_rows(layout, u, ids)})
        images, index = [], {}
        for it in group_items:
            for m in it["members"]:
                if m not in index:
                    index[m] = len(images)
                    images.append(rows[m])
        drafts, more = plan_groups(images, [[index[m] for m in it["members"]] for it in group_items], cfg, rounds)
        return drafts, {**failed, **more}


def group_indices(emb: np.ndarray, cfg: ProxyConfig) -> list[list[int]]:
    """Groups of image indices (each in input order): repeated maximum cliques of the similarity graph."""
    from weaverdata.refs.samples import clique_candidates

    if len(emb) < 2:
        return []
    g = cfg.grouping
    cands = clique_candidates(emb, list(range(len(emb))), edge_threshold=g.edge_threshold, min_size=g.min_size, max_size=g.max_size,
                              exact_max_images=g.exact_max_images, knn_k=g.knn_k, knn_index=g.knn_index, group_prefix="")
    return [sorted([t, *refs]) for refs, t, _ in cands]


def plan_groups(images: list[dict], groups: list[list[int]], cfg: ProxyConfig, rounds: TextRound) -> tuple[list[Draft], dict[str, tuple[str, str]]]:
    """Drafts for the given groups (each a list of indices into ``images``, in input order)."""
    failed: dict[str, tuple[str, str]] = {}
    r1 = []
    for grp in groups:
        for i in grp:
            r1.append(rounds.request(f"{images[i]['id']}:description", cfg.text.description_prompt, [images[i]["data"]], context=""))
        r1.append(rounds.request(f"{images[grp[0]]['id']}:request", cfg.text.request_prompt, [images[grp[0]]["data"]], context=""))
    res1 = rounds.run(r1)
    desc_sha = rounds.prompt(cfg.text.description_prompt).sha256
    woven, r2 = [], []
    for grp in groups:
        descs, err = [], None
        for i in grp:
            text, e = ok_text(res1, f"{images[i]['id']}:description")
            err = err or e
            descs.append(text)
        request, e = ok_text(res1, f"{images[grp[0]]['id']}:request")
        err = err or e
        gid = sample_id("group|" + "|".join(images[i]["id"] for i in grp))
        if err:
            for i in grp:
                failed[images[i]["id"]] = err
            continue
        listing = "\n".join(f"{k + 1}. {d}" for k, d in enumerate(descs))
        regex = proxies_regex(rounds.tags, descs, cfg.text.text_max_chars) if cfg.text.constrain else ""
        r2.append(rounds.request(f"{gid}:narrative", cfg.text.narrative_prompt, [], regex=regex, request=request, num_images=len(grp), descriptions=listing))
        woven.append((grp, gid, descs, request, regex))
    res2 = rounds.run(r2)
    r3, texts = [], {}
    for grp, gid, _descs, _request, regex in woven:
        text, err = ok_text(res2, f"{gid}:narrative")
        if err:
            for i in grp:
                failed[images[i]["id"]] = err
            continue
        texts[gid] = text
        if cfg.text.refine:
            r3.append(rounds.request(f"{gid}:refinement", cfg.text.refinement_prompt, [], regex=regex, document=text))
    res3 = rounds.run(r3)
    drafts = []
    for grp, gid, descs, request, _regex in woven:
        if gid not in texts:
            continue
        text = texts[gid]
        if cfg.text.refine:
            text, err = ok_text(res3, f"{gid}:refinement")
            if err:
                for i in grp:
                    failed[images[i]["id"]] = err
                continue
        members = [images[i] for i in grp]
        d = Draft(sample_id(f"proxy|image_group|{gid}"), [m["id"] for m in members], members[0]["unit"], members[0]["locator"], user=request, assistant=text, expected=len(grp))
        d.images = [image_entry(k, "output", m, desc, described_by(cfg, desc_sha)) for k, (m, desc) in enumerate(zip(members, descs))]
        drafts.append(d)
    return drafts, failed
