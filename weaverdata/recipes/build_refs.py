"""`weaverdata build-refs`: reference-guided image samples from videos, collections and documents.

Stages (each resumable; intermediate files live under ``OUT/work/``):

1. **prepare** (a Ray task per work unit, ``work/prep/part-<unit>.parquet``): read, decode
   safely, hash (sha256 + pHash), apply the quality filters; for a video, compute the colour
   signature of *every* decoded frame, detect the cuts on them, keep the frames sampled at
   ``video.fps`` with their shot number. Rejected inputs keep a row with their reason.
2. **embed** (Ray Data, ``embeddings/images.parquet``, aligned by id): open_clip image
   embeddings of every accepted image, weights loaded once per actor.
3. **plan** (driver, pure functions of :mod:`weaverdata.refs.samples`): candidates (video pairs
   inside shots; repeated maximum cliques for collections and inside documents), the similarity
   band and pHash near-copy check per reference, text-to-image samples.
4. **text** (one :class:`~weaverdata.engines.captioner.Captioner` run for the whole job, so one
   engine start; results cached in ``work/captions``): dense description of the target,
   instruction from the references to the target, and for video the dynamics between the last
   reference and the target. A sample whose text fails its checks is dropped with the reason.
5. **write** (a Ray task per pending unit): the samples whose target belongs to the unit, into
   shards split by task kind and reference count (one field set per shard); every input image
   of the unit that is in no sample is a reject row with its reason. Stats count inputs
   (images) = used + rejected, and samples apart.

Stages 1-4 are deterministic for a given input and config, so a killed run that resumes writes
exactly what an uninterrupted run writes.
"""

from __future__ import annotations

import functools
import io
import logging
import posixpath
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from weaverdata.config import RefsConfig
from weaverdata.io.layout import WORK_DIR, OutputLayout
from weaverdata.io.shards import Media, RejectRow, UnitWriter
from weaverdata.io.sources import SourceItem, WorkUnit, image_from_row, read_unit, sample_id
from weaverdata.io.storage import Location
from weaverdata.media.image import ImageRejected, decode_image
from weaverdata.recipes.staged import DETAILS, plan_path, prep_path, prepare_all, read_plan, read_prep, read_prep_media, reject_dict, write_prep
from weaverdata.refs.band import Thresholds
from weaverdata.refs.mining import mine_corpus
from weaverdata.refs.quality import quality_verdict
from weaverdata.refs.samples import ImageMeta, Plan, SamplePlan, clique_candidates, drop_samples, plan_samples, video_candidates

log = logging.getLogger(__name__)

RECIPE = "build-refs"
SCHEMA = "reference_sample"
EMBEDDINGS = "embeddings/images.parquet"
HARD_NEGATIVES = "embeddings/hard_negatives.parquet"

PREP_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("unit", pa.string()),
        ("locator", pa.string()),
        ("source", pa.string()),  # video | collection | document
        ("scope", pa.string()),  # video path / document id / ""
        ("data", pa.binary()),  # stored image bytes (empty for a reject)
        ("ext", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("sha256", pa.string()),
        ("phash", pa.string()),
        ("time_s", pa.float64()),
        ("shot", pa.int32()),
        ("reason", pa.string()),  # "" when accepted
        ("stage", pa.string()),
        ("detail", pa.string()),
    ]
)


def source_kind(cfg: RefsConfig, unit: WorkUnit) -> str:
    if cfg.source == "auto":
        return "video" if unit.kind == "video" else "collection"
    return {"documents": "document"}.get(cfg.source, cfg.source)


# -- stage 1: prepare -------------------------------------------------------------------------


def _row(unit: str, item_id: str, locator: str, source: str, scope: str, **kw: Any) -> dict[str, Any]:
    row = {"id": item_id, "unit": unit, "locator": locator, "source": source, "scope": scope, "data": b"", "ext": "", "width": 0, "height": 0,
           "sha256": "", "phash": "", "time_s": 0.0, "shot": -1, "reason": "", "stage": "", "detail": ""}
    row.update(kw)
    return row


def _gray_512(rgb_image) -> np.ndarray:
    im = rgb_image
    if max(im.size) > 512:
        scale = 512 / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), resample=2)
    return np.asarray(im.convert("L"), dtype=np.float64)


def judge_image(data: bytes, cfg: RefsConfig) -> tuple[dict[str, Any], None] | tuple[None, tuple[str, str, str]]:
    """Decode + quality: (fields, None) or (None, (reason, stage, detail))."""
    try:
        img = decode_image(data, max_pixels=cfg.image.max_pixels)
    except ImageRejected as exc:
        return None, (exc.reason, "decode", exc.detail)
    q = cfg.quality
    pixel_checks = q.blur_min is not None or q.exposure_min is not None or q.exposure_max is not None
    exposure = None
    if q.exposure_min is not None or q.exposure_max is not None:
        exposure = (q.exposure_min if q.exposure_min is not None else 0.0, q.exposure_max if q.exposure_max is not None else 255.0)
    verdict = quality_verdict(
        img.width,
        img.height,
        q.min_side,
        (q.aspect_min, q.aspect_max),
        gray=_gray_512(img.rgb) if pixel_checks else None,
        blur_min=q.blur_min,
        exposure_range=exposure,
    )
    if not verdict.ok:
        return None, (verdict.reason, "filter", verdict.detail)
    return {"ext": img.ext, "width": img.width, "height": img.height, "sha256": img.sha256, "phash": img.phash}, None


def _prepare_images(unit: WorkUnit, cfg: RefsConfig, source: str) -> list[dict[str, Any]]:
    rows = []
    for item in read_unit(unit, cfg.input, cfg.video):
        items = [item]
        if not item.error and "row" in item.payload:
            items = document_images(item, cfg, unit.root) if source == "document" else [image_from_row(item, cfg.input, unit.root)]
        for it in items:
            scope = it.payload.get("document", "") if source == "document" else ""
            if it.error:
                rows.append(_row(unit.unit, it.id, it.locator, source, scope, reason=it.error[0], stage="read", detail=it.error[1]))
                continue
            data = it.payload["image"]
            fields, bad = judge_image(data, cfg)
            if bad:
                rows.append(_row(unit.unit, it.id, it.locator, source, scope, reason=bad[0], stage=bad[1], detail=bad[2]))
            else:
                rows.append(_row(unit.unit, it.id, it.locator, source, scope, data=data, **fields))
    return rows


def document_images(item: SourceItem, cfg: RefsConfig, root: str) -> list[SourceItem]:
    """The images of one interleaved document row (OBELICS / MMC4 style: a list of images, with
    None for text positions), each with the document's id as its scope."""
    row = item.payload["row"]
    name = cfg.input.image_field or next((k for k in ("images", "image_urls", "image_paths") if isinstance(row.get(k), list)), None)
    if name is None or not isinstance(row.get(name), list):
        return [SourceItem(item.locator, error=("missing_field", f"no list of images in the document (field {name or 'images'})"))]
    doc = sample_id(item.locator)
    out = []
    for k, value in enumerate(row[name]):
        if value is None or value == "":
            continue  # a text position
        sub = SourceItem(f"{item.locator}#image={k}", payload={"row": {"image": value}, "base": item.payload.get("base", "")})
        resolved = image_from_row(sub, cfg.input.model_copy(update={"image_field": "image", "caption_field": None}), root)
        if not resolved.error:
            resolved.payload["document"] = doc
        out.append(resolved)
    if not out:
        return [SourceItem(item.locator, error=("no_images", "the document has no images"))]
    return out


def _prepare_video(unit: WorkUnit, cfg: RefsConfig) -> list[dict[str, Any]]:
    import av

    from weaverdata.media.video import encode_frame, iter_frames
    from weaverdata.refs.shots import detect_cuts, frame_signature, shots_from_cuts

    loc = Location.of(unit.root)
    rel = unit.path
    signatures, sampled = [], []  # sampled: (frame number, time, jpeg bytes, ext)
    next_t, n = 0.0, 0
    rows: list[dict[str, Any]] = []
    error = None
    try:
        with loc.open(rel, "rb") as f:
            for frame in iter_frames(f, fps=None):
                signatures.append(frame_signature(frame.rgb))
                if frame.time_s + 1e-6 >= next_t and (cfg.video.max_frames is None or len(sampled) < cfg.video.max_frames):
                    data, ext = encode_frame(frame.rgb, cfg.video.frame_format, cfg.video.frame_quality)
                    sampled.append((n, frame.time_s, data, ext))
                    while next_t <= frame.time_s + 1e-6:
                        next_t += 1.0 / cfg.video.fps
                n += 1
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        error = f"after frame {n - 1}: {exc}" if n else f"at open: {exc}"
    if error and not sampled:
        loc_id = f"{rel}#error@{n}"
        return [_row(unit.unit, sample_id(loc_id), loc_id, "video", rel, reason="video_decode_error", stage="read", detail=error)]
    s = cfg.shots
    cuts = detect_cuts(np.asarray(signatures), s.cut_threshold, window=s.window, ratio=s.ratio, min_shot=s.min_shot_frames)
    shots = shots_from_cuts(len(signatures), cuts)
    shot_of = np.zeros(len(signatures), dtype=np.int32)
    for k, r in enumerate(shots):
        shot_of[r.start : r.stop] = k
    for index, t, data, _ext in sampled:
        locator = f"{rel}#frame={index}"
        fields, bad = judge_image(data, cfg)
        common = {"time_s": round(float(t), 6), "shot": int(shot_of[index])}
        if bad:
            rows.append(_row(unit.unit, sample_id(locator), locator, "video", rel, reason=bad[0], stage=bad[1], detail=bad[2], **common))
        else:
            rows.append(_row(unit.unit, sample_id(locator), locator, "video", rel, data=data, **fields, **common))
    if error:  # frames after the damage are lost: say so, keep what decoded
        loc_id = f"{rel}#error@{n}"
        rows.append(_row(unit.unit, sample_id(loc_id), loc_id, "video", rel, reason="video_decode_error", stage="read", detail=error))
    return rows


def prepare_unit(unit: WorkUnit, cfg: RefsConfig) -> dict[str, Any]:
    """Stage 1 for one unit; idempotent (an existing prep file is kept)."""
    source = source_kind(cfg, unit)
    return write_prep(cfg, unit, lambda: _prepare_video(unit, cfg) if source == "video" else _prepare_images(unit, cfg, source), PREP_SCHEMA)


# -- stage 2: embed ----------------------------------------------------------------------------


def embed_images(layout: OutputLayout, units: list[WorkUnit], ids: list[str], cfg: RefsConfig) -> tuple[np.ndarray, dict[str, str]]:
    """Unit-norm embeddings aligned with `ids` (cached in OUT/embeddings/images.parquet), and
    the ids the embedder could not read, with the reason."""
    import ray
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    from weaverdata.models.clip import embed_dataset, read_embeddings, write_embeddings

    url = layout.loc.url.rstrip("/") + "/" + EMBEDDINGS
    if layout.loc.exists(EMBEDDINGS):
        have_ids, have = read_embeddings(url)
        if have_ids == ids:
            return have, {}
    if not ids:
        return np.zeros((0, 1), dtype=np.float32), {}
    fs = PyFileSystem(FSSpecHandler(layout.loc.fs))
    ds = ray.data.read_parquet([layout.loc.path(prep_path(u.unit)) for u in units], filesystem=fs, columns=["id", "data", "reason"])
    ds = ds.filter(expr="reason == ''").drop_columns(["reason"])
    vectors: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    for batch in embed_dataset(ds, cfg.clip, image_column="data").iter_batches(batch_size=1024, batch_format="numpy"):
        for i, e, err in zip(batch["id"], batch["embedding"], batch["clip_error"]):
            if err:
                errors[str(i)] = str(err)
            else:
                vectors[str(i)] = np.asarray(e, dtype=np.float32)
    dim = len(next(iter(vectors.values()))) if vectors else 1
    emb = np.stack([vectors.get(i, np.zeros(dim, np.float32)) for i in ids]) if ids else np.zeros((0, dim), np.float32)
    if not errors:
        write_embeddings(ids, emb, url)
    return emb, errors


# -- stage 4: text -----------------------------------------------------------------------------


def _messages(system: str, n_images: int, text: str) -> list[dict[str, Any]]:
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
    out = [{"role": "system", "content": system}] if system else []
    return out + [{"role": "user", "content": content}]


def text_requests(plan: Plan, metas: list[ImageMeta], data_of: dict[str, bytes], cfg: RefsConfig) -> tuple[list, dict[str, list[tuple[str, str]]]]:
    """Caption requests for every sample, and per sample the (field, request id) it needs."""
    from weaverdata.engines.prompts import load_prompt
    from weaverdata.engines.requests import CaptionRequest

    t = cfg.text
    prompts = {
        "description": load_prompt(t.description_prompt),
        "instruction": load_prompt(t.instruction_prompt),
        "dynamics": load_prompt(t.dynamics_prompt),
    }
    requests = []
    needs: dict[str, list[tuple[str, str]]] = {}
    for s in plan.samples:
        target = data_of[metas[s.target].id]
        refs = [data_of[metas[r].id] for r in s.refs]
        wanted = []
        if t.description:
            wanted.append(("description", [target], {"context": ""}))
        if t.instruction and s.refs:
            wanted.append(("instruction", [*refs, target], {"num_references": len(refs)}))
        if t.dynamics and s.task == "video_dynamics":
            interval = round(s.times_s[-1] - s.times_s[-2], 2)
            wanted.append(("dynamics", [refs[-1], target], {"interval_s": interval}))
        needs[s.id] = []
        for field, images, values in wanted:
            p = prompts[field]
            rid = f"{s.id}:{field}"
            values = {k: v for k, v in values.items() if k in p.fields}
            requests.append(CaptionRequest(id=rid, messages=_messages(p.system, len(images), p.render(**values)), images=images, prompt_sha256=p.sha256, task=p.name))
            needs[s.id].append((field, rid))
    return requests, needs


# -- the driver stage: prepare, embed, plan, text ----------------------------------------------


def _metas(table: pa.Table) -> list[ImageMeta]:
    cols = {c: table.column(c).to_pylist() for c in ("id", "source", "scope", "phash", "time_s", "shot")}
    return [ImageMeta(cols["id"][i], cols["source"][i], cols["scope"][i], cols["phash"][i], cols["time_s"][i], cols["shot"][i]) for i in range(table.num_rows)]


def plan_job(cfg: RefsConfig, units: list[WorkUnit], pending: list[WorkUnit], layout: OutputLayout) -> dict[str, Any]:
    """Stages 1-4 over the whole input (deterministic, so committed units stay consistent with
    the rest); writes one plan per pending unit. Returns the run's details for the summary."""
    prepare_all(cfg, units, layout, prepare_unit, "build-refs prepare")
    meta_cols = ["id", "unit", "locator", "source", "scope", "width", "height", "sha256", "phash", "time_s", "shot", "reason", "stage", "detail"]
    table = read_prep(layout, units, PREP_SCHEMA, meta_cols)
    accepted = table.filter(pc.equal(table.column("reason"), ""))
    metas = _metas(accepted)
    ids = [m.id for m in metas]
    emb, clip_errors = embed_images(layout, units, ids, cfg)
    if clip_errors:  # unreadable for the embedder (should not happen after stage 1): out of the plan, into the rejects
        keep = [i for i, m in enumerate(metas) if m.id not in clip_errors]
        metas, emb = [metas[i] for i in keep], emb[keep]
    # candidates
    candidates = video_candidates(metas, interval_s=cfg.shots.interval_s, tolerance_s=cfg.shots.tolerance_s, max_refs=cfg.shots.max_refs, stride=cfg.shots.stride)
    g = cfg.grouping
    kw = dict(edge_threshold=g.edge_threshold, min_size=g.min_size, max_size=g.max_size, exact_max_images=g.exact_max_images, knn_k=g.knn_k, knn_index=g.knn_index)
    kw["neighbour_pairs"] = functools.partial(mine_corpus, task_cpus=cfg.runtime.task_cpus, **({"nprobe": g.knn_nprobe} if g.knn_nprobe else {}))
    collection = [i for i, m in enumerate(metas) if m.source == "collection"]
    candidates += clique_candidates(emb, collection, group_prefix="", **kw)

    docs: dict[str, list[int]] = {}
    for i, m in enumerate(metas):
        if m.source == "document":
            docs.setdefault(m.scope, []).append(i)
    for doc, members in sorted(docs.items()):
        candidates += clique_candidates(emb, members, group_prefix=f"{doc}-", **kw)
    b = cfg.band
    thresholds = Thresholds(b.low, b.high, b.mode, b.phash_min)
    plan = plan_samples(metas, emb, candidates, thresholds, text_to_image=cfg.text_to_image)
    negatives = write_hard_negatives(layout, cfg, emb[collection], [metas[i].id for i in collection], plan.thresholds.low) if g.hard_negatives else None
    # text
    caption_stats: dict[str, Any] = {}
    texts: dict[str, dict[str, str]] = {s.id: {} for s in plan.samples}
    if plan.samples and (cfg.text.description or cfg.text.instruction or cfg.text.dynamics):
        from weaverdata.engines.captioner import Captioner

        needed = {metas[i].id for s in plan.samples for i in (*s.refs, s.target)}
        data_of = _image_bytes(layout, units, needed)
        requests, needs = text_requests(plan, metas, data_of, cfg)
        captioner = Captioner(cfg.engine, cache_url=layout.loc.url.rstrip("/") + "/" + posixpath.join(WORK_DIR, "captions"))
        try:
            results = captioner.run(requests)
        finally:
            captioner.close()
        caption_stats = dict(captioner.stats)
        failed: dict[str, tuple[str, str]] = {}
        for s in plan.samples:
            for field, rid in needs[s.id]:
                r = results[rid]
                if not r.ok:
                    failed.setdefault(s.id, (f"caption_{r.reason.split(':')[0]}", f"{field}: {r.detail or r.reason}"))
                else:
                    texts[s.id][field] = r.text.strip()
        plan = drop_samples(plan, failed, metas)
    # plans per pending unit
    index_of_unit = {m.id: u for m, u in zip(metas, _units_of(accepted, metas))}
    used_ids = {metas[i].id for s in plan.samples for i in (*s.refs, s.target)}
    rows = table.to_pylist()
    rows_by_unit: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        rows_by_unit.setdefault(row["unit"], []).append(row)
    unused_by_id = {metas[i].id: why for i, why in plan.unused_reason.items()}
    for m, why in clip_errors.items():
        unused_by_id[m] = ("clip_error", why)
    meta_by_id = {r["id"]: r for r in rows}
    samples_by_unit: dict[str, list[SamplePlan]] = {}
    for s in plan.samples:
        samples_by_unit.setdefault(index_of_unit[metas[s.target].id], []).append(s)
    for u in pending:
        records = [
            {"record": sample_record(s, metas, meta_by_id, texts.get(s.id, {})), "group": shard_group(s),
             "media": [[meta_by_id[metas[i].id]["unit"], metas[i].id] for i in (s.target, *s.refs)]}
            for s in sorted(samples_by_unit.get(u.unit, []), key=lambda s: s.id)
        ]
        rejects, used = [], []
        for row in rows_by_unit.get(u.unit, []):
            if row["reason"]:
                rejects.append(reject_dict(row, row["reason"], row["stage"], row["detail"]))
            elif row["id"] in used_ids:
                used.append(row["id"])
            else:
                reason, detail = unused_by_id.get(row["id"], ("no_group", ""))
                stage = "caption" if reason.startswith("caption_") else ("band" if reason.startswith(("near_duplicate", "too_dissimilar")) else "group")
                rejects.append(reject_dict(row, reason, stage, detail))
        layout.write_json(plan_path(u.unit), {"unit": u.unit, "samples": records, "used": used, "rejects": rejects})
    t = plan.thresholds
    details = {
        "images_accepted_before_grouping": len(metas),
        "candidates": plan.candidates,
        "candidates_dropped_by_reason": dict(sorted(plan.dropped.items())),
        "samples": len(plan.samples),
        "samples_by_task": dict(sorted(Counter(s.task for s in plan.samples).items())),
        "band": {"low": t.low, "high": t.high, "phash_min": t.phash_min, "mode": cfg.band.mode, "quantiles": list(t.quantiles) if t.quantiles else None, "sample_size": t.sample_size},
        "captioning": caption_stats,
        "embeddings": EMBEDDINGS,
        "hard_negatives": {"file": HARD_NEGATIVES, "pairs": negatives} if negatives is not None else None,
    }
    layout.write_json(DETAILS, details)
    return details


def write_hard_negatives(layout: OutputLayout, cfg: RefsConfig, emb: np.ndarray, ids: list[str], low: float) -> int:
    """Neighbours below band.low (close in embedding space, yet not the same subject), by id, to
    OUT/embeddings/hard_negatives.parquet; the same pair found twice is kept once."""
    g = cfg.grouping
    if len(ids) < 2:
        return 0
    kw = {"nprobe": g.knn_nprobe} if g.knn_nprobe else {}
    kind = g.knn_index if len(ids) > g.exact_max_images else "flat"
    _, negatives = mine_corpus(emb, g.knn_k, low, 1.0, kind=kind, hard_negative_min=g.hard_negative_min, task_cpus=cfg.runtime.task_cpus, **kw)
    table = pa.table({
        "id": pa.array([ids[i] for i in negatives["i"]], pa.string()),
        "negative_id": pa.array([ids[j] for j in negatives["j"]], pa.string()),
        "clip_cosine": pa.array(negatives["score"], pa.float32()),
    })
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    layout.loc.write_bytes_atomic(HARD_NEGATIVES, sink.getvalue())
    return table.num_rows


def _units_of(accepted: pa.Table, metas: list[ImageMeta]) -> list[str]:
    unit_by_id = dict(zip(accepted.column("id").to_pylist(), accepted.column("unit").to_pylist()))
    return [unit_by_id[m.id] for m in metas]


def _image_bytes(layout: OutputLayout, units: list[WorkUnit], wanted: set[str]) -> dict[str, bytes]:
    return {i: m.data for u in units for i, m in read_prep_media(layout, u.unit, wanted).items()}


def shard_group(s: SamplePlan) -> str:
    n = len(s.refs)
    return s.task if s.task == "text_to_image" else f"{s.task}-{n}ref" + ("s" if n > 1 else "")


def sample_record(s: SamplePlan, metas: list[ImageMeta], meta_by_id: dict[str, dict], texts: dict[str, str]) -> dict[str, Any]:
    def image_ref(i: int) -> dict[str, Any]:
        m = meta_by_id[metas[i].id]
        return {"sha256": m["sha256"], "source": m["locator"], "width": m["width"], "height": m["height"]}

    target = meta_by_id[metas[s.target].id]
    return {
        "id": s.id,
        "task": s.task,
        "target": image_ref(s.target),
        "references": [{**image_ref(r), "clip_cosine": c, "phash_distance": d} for r, c, d in zip(s.refs, s.cosines, s.phash_distances)],
        "instruction": texts.get("instruction", ""),
        "description": texts.get("description", ""),
        "dynamics": texts.get("dynamics", ""),
        "provenance": {
            "kind": s.kind,
            "source": target["scope"] if s.kind == "video" else target["locator"],
            "group": s.group,
            "times_s": s.times_s,
        },
    }


# -- stage 5: write ----------------------------------------------------------------------------


def process_unit(unit: WorkUnit, cfg: RefsConfig) -> dict[str, Any]:
    """Write the unit's planned samples and rejects, then commit (stats file last)."""
    layout = OutputLayout(Location.of(cfg.output.path))
    plan = read_plan(layout, unit)
    wanted: dict[str, set[str]] = {}
    for s in plan["samples"]:
        for src_unit, image_id in s["media"]:
            wanted.setdefault(src_unit, set()).add(image_id)
    media_of: dict[str, Media] = {}
    for src_unit, ids in wanted.items():
        media_of.update(read_prep_media(layout, src_unit, ids))
    writer = UnitWriter.for_output(layout, unit.unit, SCHEMA, unit.describe(), cfg.output, composite=True)
    try:
        for s in plan["samples"]:
            ids = [image_id for _, image_id in s["media"]]
            media = {"target_image": media_of[ids[0]], "reference_images": [media_of[i] for i in ids[1:]]}
            writer.add(s["record"], media, group=s["group"])
        writer.mark_used(plan["used"])
        for r in plan["rejects"]:
            writer.reject(RejectRow(r["id"], r["source"], r["reason"], r["stage"], r["detail"] or None, r["sha256"]))
        return writer.commit()
    except BaseException:
        writer.abort()
        raise
