"""`weaverdata build-refs`: reference-guided image samples from videos, collections and documents.

Stages (each resumable; intermediate files live under ``OUT/work/``). The driver holds ids,
small per-image fields (as numpy / Arrow columns), embeddings and the grouping; image bytes,
requests, generated texts and the caption cache stay on the workers.

1. **prepare** (a Ray task per work unit, ``work/prep/part-<unit>.parquet``): read, decode
   safely, hash (sha256 + pHash), apply the quality filters; for a video, compute the colour
   signature of *every* decoded frame, detect the cuts on them, keep the frames sampled at
   ``video.fps`` with their shot number. Rejected inputs keep a row with their reason.
2. **embed** (Ray Data, ``embeddings/images.parquet``, aligned by id): open_clip image
   embeddings of every accepted image, weights loaded once per actor; only ids and vectors
   reach the driver.
3. **plan** (driver, pure functions of :mod:`weaverdata.refs.samples` on the prep metadata and
   the embeddings): candidates (video pairs inside shots; repeated maximum cliques for
   collections and inside documents, split by connected components into Ray tasks above
   ``grouping.exact_max_images``), the similarity band and pHash near-copy check per
   reference, text-to-image samples. Written per unit of the target
   (``work/samples/part-<unit>.parquet``: each sample's members by id and unit, its scores and
   its place in the job's plan; and why each accepted image of the unit is in no sample), then
   ``work/plan.json`` (the plan's counts; its commit marker: a resumed run does not plan again).
4. **text** (a Ray task per unit on the job's engines, started once:
   :mod:`weaverdata.recipes.text_stage`): the unit's samples' images read from the prep files
   on the worker, their requests built there (dense description of the target, instruction
   from the references to the target, for video the dynamics between the last reference and
   the target), generated with the unit's own result cache (``work/captions/unit=<unit>/``),
   written to ``work/drafts/part-<unit>.parquet``: per sample its texts, or the reason its text
   failed. Each text records which model, revision and prompt (sha256, as in the cache key)
   wrote it (``generated_by``); a text that was not generated is empty and its entry null.
5. **settle** (driver, ids and reasons only): samples whose text failed are dropped; an image
   they leave in no sample takes the reason (``work/settled.parquet``, sorted by unit), so the
   write task of its unit learns of it whichever unit the sample belonged to.
6. **write** (a Ray task per pending unit): the unit's kept samples, into shards split by task
   kind and reference count (one field set per shard), their images and metadata read from the
   prep files (references in other units too); every input image of the unit that is in no
   sample is a reject row with its reason. Stats count inputs (images) = used + rejected, and
   samples apart.

Every stage is deterministic for a given input and config, so a killed run that resumes writes
exactly what an uninterrupted run writes: it plans again only without ``work/plan.json``, asks
for text only for units without drafts (results already cached are not generated again), and
writes only the units without stats.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import posixpath
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from weaverdata.config import RefsConfig
from weaverdata.engines.pool_backend import EngineHandle
from weaverdata.io.layout import WORK_DIR, OutputLayout
from weaverdata.io.shards import Media, RejectRow, UnitWriter
from weaverdata.io.sources import SourceItem, WorkUnit, image_from_row, read_unit, sample_id
from weaverdata.io.storage import Location
from weaverdata.media.image import ImageRejected, decode_image
from weaverdata.models.scorers import load_heads, verdicts
from weaverdata.recipes.staged import DETAILS, StageClock, prep_path, prepare_all, read_prep, read_prep_media, read_prep_rows, reject_dict, write_prep
from weaverdata.recipes.text_stage import JobEngines, drafts_path, read_drafts, run_text_stage, unit_captioner, write_drafts
from weaverdata.refs.band import Thresholds
from weaverdata.refs.mining import group_corpus, mine_corpus
from weaverdata.refs.quality import quality_verdict
from weaverdata.refs.samples import Images, Plan, SamplePlan, clique_candidates, plan_samples, video_candidates

log = logging.getLogger(__name__)

RECIPE = "build-refs"
SCHEMA = "reference_sample"
TEXT_FIELDS = ("description", "instruction", "dynamics")  # the model-written fields, the keys of generated_by
EMBEDDINGS = "embeddings/images.parquet"
SCORES = "embeddings/scores.parquet"  # id + one float32 column per scorer, for every image scored (rejected ones included)
HARD_NEGATIVES = "embeddings/hard_negatives.parquet"
PLAN = posixpath.join(WORK_DIR, "plan.json")
SETTLED = posixpath.join(WORK_DIR, "settled.parquet")

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
META_COLUMNS = [f.name for f in PREP_SCHEMA if f.name != "data"]
PLAN_COLUMNS = ["id", "unit", "source", "scope", "phash", "time_s", "shot", "reason"]  # what the driver reads of the prep files

SAMPLES_SCHEMA = pa.schema(
    [
        ("entry", pa.string()),  # sample | unused (an accepted image of the unit in no planned sample)
        ("id", pa.string()),  # sample id, or the unused image's id
        ("order", pa.int64()),  # sample: its place in the job's plan
        ("task", pa.string()),
        ("kind", pa.string()),  # video | collection | document
        ("group", pa.string()),
        ("target", pa.string()),  # image ids and their units
        ("target_unit", pa.string()),
        ("refs", pa.list_(pa.string())),
        ("ref_units", pa.list_(pa.string())),
        ("cosines", pa.list_(pa.float64())),
        ("phash_distances", pa.list_(pa.int32())),
        ("times_s", pa.list_(pa.float64())),
        ("reason", pa.string()),  # unused: why
        ("detail", pa.string()),
    ]
)
"""A unit's sample plans (``work/samples/part-<unit>.parquet``): the samples whose target is in
the unit, sorted by id, and why each accepted image of the unit is in no planned sample."""

DRAFTS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),  # sample id
        ("ok", pa.bool_()),
        ("reason", pa.string()),  # failed: caption_<reason> and "<field>: <detail>"
        ("detail", pa.string()),
        ("description", pa.string()),
        ("instruction", pa.string()),
        ("dynamics", pa.string()),
        ("generated_by", pa.string()),  # JSON: {field: {model, revision, prompt_sha256}} of the generated fields
    ]
)

SETTLED_SCHEMA = pa.schema([("unit", pa.string()), ("id", pa.string()), ("reason", pa.string()), ("detail", pa.string())])
"""Images left in no sample by samples whose text failed, with the reason (sorted by unit)."""


def source_kind(cfg: RefsConfig, unit: WorkUnit) -> str:
    if cfg.source == "auto":
        return "video" if unit.kind == "video" else "collection"
    return {"documents": "document"}.get(cfg.source, cfg.source)


def text_on(cfg: RefsConfig) -> bool:
    t = cfg.text
    return t.description or t.instruction or t.dynamics


def wanted_fields(cfg: RefsConfig, task: str, n_refs: int) -> list[str]:
    """The texts a sample asks the model for: the target's description, the instruction (with
    references), the dynamics (video pairs)."""
    t = cfg.text
    return [f for f, on in (("description", t.description), ("instruction", t.instruction and n_refs > 0), ("dynamics", t.dynamics and task == "video_dynamics")) if on]


def samples_path(unit: str) -> str:
    return posixpath.join(WORK_DIR, "samples", f"part-{unit}.parquet")


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


def _read_embeddings(layout: OutputLayout) -> tuple[pa.Array, np.ndarray]:
    with layout.loc.open(EMBEDDINGS, "rb") as f:
        table = pq.read_table(f, use_threads=False, pre_buffer=False)
    col = table.column("embedding").combine_chunks()
    return table.column("id").combine_chunks(), col.values.to_numpy(zero_copy_only=False).reshape(len(table), -1)


def embed_images(layout: OutputLayout, units: list[WorkUnit], ids: pa.Array, cfg: RefsConfig) -> tuple[np.ndarray, dict[str, str]]:
    """Unit-norm embeddings aligned with `ids` (cached in OUT/embeddings/images.parquet), and
    the ids the embedder could not read, with the reason. Vectors arrive batch by batch as
    arrays; no object per image is made."""
    import ray
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    from weaverdata.models.clip import embed_dataset, write_embeddings

    if layout.loc.exists(EMBEDDINGS):
        have_ids, have = _read_embeddings(layout)
        if have_ids.equals(ids):
            return have, {}
    if not len(ids):
        return np.zeros((0, 1), dtype=np.float32), {}
    fs = PyFileSystem(FSSpecHandler(layout.loc.fs))
    ds = ray.data.read_parquet([layout.loc.path(prep_path(u.unit)) for u in units], filesystem=fs, columns=["id", "data", "reason"])
    ds = ds.filter(expr="reason == ''").drop_columns(["reason"])
    got_ids: list[pa.Array] = []
    got: list[np.ndarray] = []
    errors: dict[str, str] = {}
    for batch in embed_dataset(ds, cfg.clip, image_column="data").iter_batches(batch_size=1024, batch_format="numpy"):
        bad = np.array([bool(e) for e in batch["clip_error"]], dtype=bool)
        for i, err in zip(batch["id"][bad], batch["clip_error"][bad]):
            errors[str(i)] = str(err)
        good = ~bad
        if good.any():
            vectors = batch["embedding"][good]
            got.append(np.stack(vectors).astype(np.float32) if vectors.dtype == object else np.asarray(vectors, dtype=np.float32))
            got_ids.append(pa.array(batch["id"][good].astype(str), pa.string()))
    dim = got[0].shape[1] if got else 1
    emb = np.zeros((len(ids), dim), dtype=np.float32)
    if got:
        where = pc.index_in(ids, value_set=pa.concat_arrays(got_ids))
        found = np.asarray(pc.is_valid(where).to_numpy(zero_copy_only=False), dtype=bool)
        emb[found] = np.concatenate(got)[np.asarray(pc.drop_null(where).to_numpy(zero_copy_only=False), dtype=np.int64)]
    del got
    if not errors:
        write_embeddings(ids, emb, layout.loc.url.rstrip("/") + "/" + EMBEDDINGS)
    return emb, errors


# -- stage 3: plan (driver: metadata and embeddings) --------------------------------------------


def write_scores(layout: OutputLayout, ids: pa.Array, scores: dict[str, np.ndarray]) -> None:
    """``embeddings/scores.parquet``: each scored image's id and its score per scorer (a column
    each, named as the scorer), aligned like the embeddings."""
    table = pa.table({"id": ids, **{name: pa.array(v, pa.float32()) for name, v in scores.items()}})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    layout.loc.write_bytes_atomic(SCORES, sink.getvalue())


def plan_stage(cfg: RefsConfig, units: list[WorkUnit], layout: OutputLayout) -> dict[str, Any]:
    """Embed, find candidates, apply the band; one sample-plan file per unit, then
    ``work/plan.json`` (last: the stage's commit marker). Returns the plan's counts."""
    table = read_prep(layout, units, PREP_SCHEMA, PLAN_COLUMNS)
    accepted = table.filter(pc.equal(table.column("reason"), ""))
    del table
    emb, clip_errors = embed_images(layout, units, accepted.column("id").combine_chunks(), cfg)
    clip_unused: dict[str, list[tuple[str, str, str]]] = {}  # by unit: (image id, reason, detail)
    if clip_errors:  # unreadable for the embedder (should not happen after stage 1): out of the plan, into the rejects
        bad = pc.is_in(accepted.column("id"), value_set=pa.array(sorted(clip_errors), pa.string()))
        errored = accepted.filter(bad)
        for i, u in zip(errored.column("id").to_pylist(), errored.column("unit").to_pylist()):
            clip_unused.setdefault(u, []).append((i, "clip_error", clip_errors[i]))
        keep = ~np.asarray(bad.to_numpy(zero_copy_only=False), dtype=bool)
        accepted, emb = accepted.filter(pc.invert(bad)), emb[keep]
    scored = None
    if cfg.scorers:  # scores on the embeddings; images a threshold rejects leave the plan for the rejects
        scores, rejected = verdicts(load_heads(cfg.scorers, cfg.clip), cfg.scorers, emb)
        write_scores(layout, accepted.column("id").combine_chunks(), scores)
        scored = {name: {"images": int(len(v)), "min": round(float(v.min()), 6) if len(v) else None, "median": round(float(np.median(v)), 6) if len(v) else None,
                         "max": round(float(v.max()), 6) if len(v) else None, "rejected": sum(1 for _, r, _ in rejected if r == f"score_{name}")}
                  for name, v in scores.items()}
        if rejected:
            rows = pa.array([r for r, _, _ in rejected], pa.int64())
            for (_, reason, detail), i, u in zip(rejected, accepted.column("id").take(rows).to_pylist(), accepted.column("unit").take(rows).to_pylist()):
                clip_unused.setdefault(u, []).append((i, reason, detail))
            keep = np.ones(len(emb), dtype=bool)
            keep[rows.to_numpy()] = False
            accepted, emb = accepted.filter(pa.array(keep)), emb[keep]
    images = Images.from_columns(*(accepted.column(c).combine_chunks() for c in ("id", "source", "scope", "phash", "time_s", "shot")))
    unit_enc = accepted.column("unit").combine_chunks().dictionary_encode()
    unit_code = np.asarray(unit_enc.indices.to_numpy(zero_copy_only=False), dtype=np.int32)
    unit_names: list[str] = unit_enc.dictionary.to_pylist()
    del accepted, unit_enc

    candidates = video_candidates(images, interval_s=cfg.shots.interval_s, tolerance_s=cfg.shots.tolerance_s, max_refs=cfg.shots.max_refs, stride=cfg.shots.stride)
    g = cfg.grouping
    knn_kw = {"nprobe": g.knn_nprobe} if g.knn_nprobe else {}
    kw = dict(edge_threshold=g.edge_threshold, min_size=g.min_size, max_size=g.max_size, exact_max_images=g.exact_max_images, knn_k=g.knn_k, knn_index=g.knn_index,
              neighbour_pairs=functools.partial(mine_corpus, task_cpus=cfg.runtime.task_cpus, **knn_kw),
              grouper=functools.partial(group_corpus, task_cpus=cfg.runtime.task_cpus, **knn_kw))
    collection = images.indices_of("collection").tolist()
    candidates += clique_candidates(emb, collection, group_prefix="", **kw)
    for doc, members in _documents(images):
        candidates += clique_candidates(emb, members, group_prefix=f"{doc}-", **kw)
    b = cfg.band
    plan = plan_samples(images, emb, candidates, Thresholds(b.low, b.high, b.mode, b.phash_min), text_to_image=cfg.text_to_image)
    del candidates
    negatives = write_hard_negatives(layout, cfg, emb[collection], images.ids[collection], plan.thresholds.low) if g.hard_negatives else None
    del emb
    write_sample_plans(layout, cfg, units, plan, images, unit_code, unit_names, clip_unused)
    t = plan.thresholds
    planned = {
        "images_accepted_before_grouping": len(images),
        "candidates": plan.candidates,
        "candidates_dropped_by_reason": dict(sorted(plan.dropped.items())),
        "samples": len(plan.samples),
        "samples_by_task": dict(sorted(Counter(s.task for s in plan.samples).items())),
        "band": {"low": t.low, "high": t.high, "phash_min": t.phash_min, "mode": cfg.band.mode, "quantiles": list(t.quantiles) if t.quantiles else None, "sample_size": t.sample_size},
        "embeddings": EMBEDDINGS,
        "scores": {"file": SCORES, "by_scorer": scored} if scored is not None else None,
        "hard_negatives": {"file": HARD_NEGATIVES, "pairs": negatives} if negatives is not None else None,
    }
    layout.write_json(PLAN, planned)
    return planned


def _documents(images: Images) -> list[tuple[str, list[int]]]:
    """(document id, its image indices ascending) for every document, by document id."""
    docs = images.indices_of("document")
    if not len(docs):
        return []
    codes = images.scope[docs]
    order = np.argsort(codes, kind="stable")
    docs, codes = docs[order], codes[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    groups = [(images.scopes[int(codes[a])], docs[a:b].tolist()) for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(docs)])]
    return sorted(groups)


def write_sample_plans(layout: OutputLayout, cfg: RefsConfig, units: list[WorkUnit], plan: Plan, images: Images, unit_code: np.ndarray, unit_names: list[str],
                       clip_unused: dict[str, list[tuple[str, str, str]]]) -> None:
    """One sample-plan file per unit (the samples whose target is in it, and why each of its
    accepted images is in no sample). A unit none of whose samples asks for a text gets its
    drafts at once (every sample kept, no text): its text task would have nothing to ask, and
    the engines are started only if some unit has."""
    target_unit = np.fromiter((unit_code[s.target] for s in plan.samples), dtype=np.int32, count=len(plan.samples))
    by_unit = np.argsort(target_unit, kind="stable")
    sample_starts = np.searchsorted(target_unit[by_unit], np.arange(len(unit_names) + 1))
    unused_idx = np.fromiter(plan.unused_reason, dtype=np.int64, count=len(plan.unused_reason))
    unused_idx = unused_idx[np.argsort(unit_code[unused_idx], kind="stable")] if len(unused_idx) else unused_idx
    unused_starts = np.searchsorted(unit_code[unused_idx], np.arange(len(unit_names) + 1)) if len(unused_idx) else np.zeros(len(unit_names) + 1, dtype=np.int64)
    code_of = {name: k for k, name in enumerate(unit_names)}
    for u in units:
        k = code_of.get(u.unit)
        mine = [] if k is None else by_unit[sample_starts[k] : sample_starts[k + 1]].tolist()
        rows = []
        for pos in sorted(mine, key=lambda p: plan.samples[p].id):
            s: SamplePlan = plan.samples[pos]
            rows.append({"entry": "sample", "id": s.id, "order": pos, "task": s.task, "kind": s.kind, "group": s.group,
                         "target": str(images.ids[s.target]), "target_unit": u.unit, "refs": [str(images.ids[r]) for r in s.refs],
                         "ref_units": [unit_names[unit_code[r]] for r in s.refs], "cosines": s.cosines, "phash_distances": s.phash_distances,
                         "times_s": s.times_s, "reason": "", "detail": ""})
        no_text = [{"id": r["id"], "ok": True, "reason": "", "detail": "", **dict.fromkeys(TEXT_FIELDS, ""), "generated_by": "{}"}
                   for r in rows if not wanted_fields(cfg, r["task"], len(r["refs"]))]
        if k is not None:
            for i in unused_idx[unused_starts[k] : unused_starts[k + 1]].tolist():
                reason, detail = plan.unused_reason[i]
                rows.append(_unused_row(str(images.ids[i]), reason, detail))
        rows += [_unused_row(i, reason, why) for i, reason, why in clip_unused.get(u.unit, [])]
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA), sink, compression="zstd")
        layout.loc.write_bytes_atomic(samples_path(u.unit), sink.getvalue())
        if text_on(cfg) and len(no_text) == sum(1 for r in rows if r["entry"] == "sample") and not layout.loc.exists(drafts_path(u.unit)):
            write_drafts(layout, u.unit, no_text, DRAFTS_SCHEMA)


def _unused_row(image_id: str, reason: str, detail: str) -> dict[str, Any]:
    return {"entry": "unused", "id": image_id, "order": -1, "task": "", "kind": "", "group": "", "target": "", "target_unit": "", "refs": [], "ref_units": [],
            "cosines": [], "phash_distances": [], "times_s": [], "reason": reason, "detail": detail}


def read_samples(layout: OutputLayout, unit: str, columns: list[str] | None = None) -> pa.Table:
    with layout.loc.open(samples_path(unit), "rb") as f:
        return pq.read_table(f, columns=columns, use_threads=False, pre_buffer=False)


def write_hard_negatives(layout: OutputLayout, cfg: RefsConfig, emb: np.ndarray, ids: np.ndarray, low: float) -> int:
    """Neighbours below band.low (close in embedding space, yet not the same subject), by id, to
    OUT/embeddings/hard_negatives.parquet; the same pair found twice is kept once."""
    g = cfg.grouping
    if len(ids) < 2:
        return 0
    kw = {"nprobe": g.knn_nprobe} if g.knn_nprobe else {}
    kind = g.knn_index if len(ids) > g.exact_max_images else "flat"
    _, negatives = mine_corpus(emb, g.knn_k, low, 1.0, kind=kind, hard_negative_min=g.hard_negative_min, task_cpus=cfg.runtime.task_cpus, **kw)
    table = pa.table({
        "id": pa.array(ids[negatives["i"]], pa.string()),
        "negative_id": pa.array(ids[negatives["j"]], pa.string()),
        "clip_cosine": pa.array(negatives["score"], pa.float32()),
    })
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    layout.loc.write_bytes_atomic(HARD_NEGATIVES, sink.getvalue())
    return table.num_rows


# -- stage 4: text (a Ray task per unit) ----------------------------------------------------------


def _messages(system: str, n_images: int, text: str) -> list[dict[str, Any]]:
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
    out = [{"role": "system", "content": system}] if system else []
    return out + [{"role": "user", "content": content}]


def text_requests(samples: list[dict[str, Any]], data_of: dict[str, bytes], cfg: RefsConfig) -> tuple[list, dict[str, list[tuple[str, str]]]]:
    """Caption requests for the given sample plans (rows of :data:`SAMPLES_SCHEMA`), and per
    sample the (field, request id) it needs."""
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
    for s in samples:
        target = data_of[s["target"]]
        refs = [data_of[r] for r in s["refs"]]
        wanted = []
        for field in wanted_fields(cfg, s["task"], len(s["refs"])):
            if field == "description":
                wanted.append((field, [target], {"context": ""}))
            elif field == "instruction":
                wanted.append((field, [*refs, target], {"num_references": len(refs)}))
            else:
                wanted.append((field, [refs[-1], target], {"interval_s": round(s["times_s"][-1] - s["times_s"][-2], 2)}))
        needs[s["id"]] = []
        for field, images, values in wanted:
            p = prompts[field]
            rid = f"{s['id']}:{field}"
            values = {k: v for k, v in values.items() if k in p.fields}
            requests.append(CaptionRequest(id=rid, messages=_messages(p.system, len(images), p.render(**values)), images=images, prompt_sha256=p.sha256, task=p.name))
            needs[s["id"]].append((field, rid))
    return requests, needs


def _by_unit(samples: list[dict[str, Any]], unit: str) -> dict[str, set[str]]:
    """The images the samples need, by the unit whose prep file holds them."""
    wanted: dict[str, set[str]] = {}
    for s in samples:
        wanted.setdefault(unit, set()).add(s["target"])
        for r, ru in zip(s["refs"], s["ref_units"]):
            wanted.setdefault(ru, set()).add(r)
    return wanted


def text_unit(unit: WorkUnit, cfg: RefsConfig, handle: EngineHandle) -> dict[str, Any]:
    """The texts of the unit's samples on the job's engines; the unit's drafts in one write."""
    layout = OutputLayout(Location.of(cfg.output.path))
    plan = read_samples(layout, unit.unit)
    samples = plan.filter(pc.equal(plan.column("entry"), "sample")).to_pylist()
    del plan
    data_of: dict[str, bytes] = {}
    for u, ids in sorted(_by_unit(samples, unit.unit).items()):  # images of other units: read from their prep files, here
        data_of.update((r["id"], r["data"]) for r in read_prep_rows(layout, u, ids, ["id", "data"]))
    requests, needs = text_requests(samples, data_of, cfg)
    del data_of
    prompt_sha256 = {r.id: r.prompt_sha256 for r in requests}  # the value in each request's cache key
    captioner = unit_captioner(handle, layout, unit.unit)
    try:
        results = captioner.run(requests)
    finally:
        captioner.close()
    del requests
    rows = []
    for s in samples:
        texts: dict[str, str] = {}
        written_by: dict[str, dict[str, str]] = {}
        failed = None
        for field, rid in needs[s["id"]]:
            r = results[rid]
            if not r.ok:
                failed = failed or (f"caption_{r.reason.split(':')[0]}", f"{field}: {r.detail or r.reason}")
            else:
                texts[field] = r.text.strip()
                written_by[field] = generated_by(cfg, prompt_sha256[rid])
        rows.append({"id": s["id"], "ok": failed is None, "reason": failed[0] if failed else "", "detail": failed[1] if failed else "",
                     **{f: texts.get(f, "") for f in TEXT_FIELDS}, "generated_by": json.dumps(written_by, sort_keys=True)})
    write_drafts(layout, unit.unit, rows, DRAFTS_SCHEMA)
    return {"unit": unit.unit, "samples": len(rows), "failed": sum(1 for r in rows if not r["ok"]), "captioning": dict(captioner.stats)}


# -- stage 5: settle (driver: ids and reasons) ------------------------------------------------------


def settle(cfg: RefsConfig, units: list[WorkUnit], layout: OutputLayout, planned: dict[str, Any]) -> dict[str, Any]:
    """Drop the samples whose text failed; write the images they leave in no sample, with the
    reason, to ``work/settled.parquet`` (sorted by unit). Reads sample ids, ok flags and reasons
    of the drafts, and the members of the sample plans; never a text or a record.

    As :func:`weaverdata.refs.samples.drop_samples`: an image freed by several failed samples
    takes the reason of the last of them in the job's plan."""
    failed: dict[str, tuple[str, str]] = {}
    if text_on(cfg):
        for u in units:
            d = read_drafts(layout, u.unit, ["id", "ok", "reason", "detail"])
            d = d.filter(pc.invert(d.column("ok")))
            failed.update((i, (r, dt)) for i, r, dt in zip(d.column("id").to_pylist(), d.column("reason").to_pylist(), d.column("detail").to_pylist()))
    rows: list[dict[str, Any]] = []
    tasks: Counter = Counter()
    if failed:
        failed_ids = pa.array(sorted(failed), pa.string())
        cols = ["id", "order", "task", "target", "target_unit", "refs", "ref_units"]
        members: dict[str, tuple[int, str, str]] = {}  # image id -> (order, sample id, unit) of the last failed sample holding it
        for u in units:
            t = read_samples(layout, u.unit, cols)
            t = t.filter(pc.is_in(t.column("id"), value_set=failed_ids))
            for sid, order, task, target, tu, refs, rus in zip(*(t.column(c).to_pylist() for c in cols)):
                tasks[task] += 1
                for i, iu in ((target, tu), *zip(refs, rus)):
                    if i not in members or members[i][0] < order:
                        members[i] = (order, sid, iu)
        candidates = pa.array(sorted(members), pa.string())
        still_used: set[str] = set()
        for u in units:  # members of the kept samples among those of the failed ones
            t = read_samples(layout, u.unit, ["entry", "id", "target", "refs"])
            t = t.filter(pc.and_(pc.equal(t.column("entry"), "sample"), pc.invert(pc.is_in(t.column("id"), value_set=failed_ids))))
            for col in (t.column("target"), pc.list_flatten(t.column("refs"))):
                still_used.update(pc.filter(col, pc.is_in(col, value_set=candidates)).to_pylist())
        for i, (_, sid, iu) in members.items():
            if i not in still_used:
                reason, detail = failed[sid]
                rows.append({"unit": iu, "id": i, "reason": reason, "detail": f"sample {sid}: {detail}"})
    rows.sort(key=lambda r: (r["unit"], r["id"]))
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SETTLED_SCHEMA), sink, compression="zstd", row_group_size=4096)
    layout.loc.write_bytes_atomic(SETTLED, sink.getvalue())
    dropped = Counter(planned["candidates_dropped_by_reason"])
    dropped.update(r for r, _ in failed.values())
    by_task = Counter(planned["samples_by_task"])
    by_task.subtract(tasks)
    return {
        "candidates_dropped_by_reason": dict(sorted(dropped.items())),
        "samples": planned["samples"] - len(failed),
        "samples_by_task": dict(sorted((k, v) for k, v in by_task.items() if v > 0)),
    }


def read_settled(layout: OutputLayout, unit: str) -> list[dict[str, Any]]:
    """The settled rows of one unit (row groups of other units are skipped by their statistics)."""
    with layout.loc.open(SETTLED, "rb") as f:
        return pq.read_table(f, filters=[("unit", "=", unit)], use_threads=False, pre_buffer=False).to_pylist()


# -- the driver stage ------------------------------------------------------------------------------


def plan_job(cfg: RefsConfig, units: list[WorkUnit], pending: list[WorkUnit], layout: OutputLayout) -> dict[str, Any]:
    """Stages 1-5 over the whole input (deterministic, so committed units stay consistent with
    the rest). Returns the run's details for the summary."""
    if cfg.scorers:  # a missing head or one of the wrong width fails now, before any stage
        load_heads(cfg.scorers, cfg.clip)
    clock = StageClock()
    prepare_all(cfg, units, layout, prepare_unit, "build-refs prepare")
    clock.lap("prepare")
    planned = layout.read_json(PLAN)
    if planned is None:
        planned = plan_stage(cfg, units, layout)
    clock.lap("plan")
    stats: list[dict[str, Any]] = []
    with JobEngines(cfg.engine) as engines:
        if text_on(cfg):
            stats = run_text_stage(cfg, units, layout, text_unit, engines, "build-refs text")
        engine_report = engines.report()
    clock.lap("text")
    captioning: Counter = Counter()
    for s in stats:
        captioning.update(s.get("captioning", {}))
    settled = settle(cfg, units, layout, planned)
    clock.lap("settle")
    details = {
        **planned,
        **settled,
        "captioning": dict(captioning),  # this run's requests (a resumed run counts only the units it redid)
        "text_units": len(stats),
        **engine_report,
        "stage_seconds": clock.laps,  # the write stage follows (summary timings: wall_seconds)
    }
    layout.write_json(DETAILS, details)
    return details


# -- stage 6: write ----------------------------------------------------------------------------


def shard_group(task: str, n_refs: int) -> str:
    return task if task == "text_to_image" else f"{task}-{n_refs}ref" + ("s" if n_refs > 1 else "")


def generated_by(cfg: RefsConfig, prompt_sha256: str) -> dict[str, str]:
    """Who wrote a text: the configured model and revision (those in the cache key's model
    identity) and the sha256 of the prompt the request carried (the one in its cache key)."""
    return {"model": cfg.engine.model or "", "revision": cfg.engine.revision or "", "prompt_sha256": prompt_sha256}


def sample_record(s: dict[str, Any], meta_of: dict[str, dict[str, Any]], texts: dict[str, str], written_by: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The record of a sample plan (a row of :data:`SAMPLES_SCHEMA`), with its members' prep
    metadata by id. `texts` and `written_by` hold, per generated field, its text and who wrote
    it; a field not generated is "" with a null generated_by entry."""
    disagree = [f for f in TEXT_FIELDS if bool(texts.get(f)) != (f in written_by)]
    if disagree:
        raise ValueError(f"sample {s['id']}: text and generated_by disagree on {', '.join(disagree)}")

    def image_ref(image_id: str) -> dict[str, Any]:
        m = meta_of[image_id]
        return {"sha256": m["sha256"], "source": m["locator"], "width": m["width"], "height": m["height"]}

    target = meta_of[s["target"]]
    return {
        "id": s["id"],
        "task": s["task"],
        "target": image_ref(s["target"]),
        "references": [{**image_ref(r), "clip_cosine": c, "phash_distance": d} for r, c, d in zip(s["refs"], s["cosines"], s["phash_distances"])],
        "instruction": texts.get("instruction", ""),
        "description": texts.get("description", ""),
        "dynamics": texts.get("dynamics", ""),
        "generated_by": {f: written_by.get(f) for f in TEXT_FIELDS},
        "provenance": {
            "kind": s["kind"],
            "source": target["scope"] if s["kind"] == "video" else target["locator"],
            "group": s["group"],
            "times_s": s["times_s"],
        },
    }


def _reject_stage(reason: str) -> str:
    if reason.startswith("caption_"):
        return "caption"
    if reason.startswith("score_"):
        return "score"
    return "band" if reason.startswith(("near_duplicate", "too_dissimilar")) else "group"


def process_unit(unit: WorkUnit, cfg: RefsConfig) -> dict[str, Any]:
    """Write the unit's kept samples and every input image of the unit in none, then commit
    (stats file last)."""
    layout = OutputLayout(Location.of(cfg.output.path))
    plan = read_samples(layout, unit.unit).to_pylist()
    samples = [r for r in plan if r["entry"] == "sample"]
    unused = {r["id"]: (r["reason"], r["detail"]) for r in plan if r["entry"] == "unused"}
    unused.update((r["id"], (r["reason"], r["detail"])) for r in read_settled(layout, unit.unit))
    del plan
    if text_on(cfg):
        drafts = {d["id"]: d for d in read_drafts(layout, unit.unit).to_pylist()}
        samples = [s for s in samples if drafts[s["id"]]["ok"]]
    else:
        drafts = {}
    with layout.loc.open(prep_path(unit.unit), "rb") as f:
        prep = pq.read_table(f, columns=META_COLUMNS, use_threads=False, pre_buffer=False).to_pylist()
    meta_of = {r["id"]: r for r in prep}
    wanted = _by_unit(samples, unit.unit)
    for u, ids in sorted(wanted.items()):
        if u != unit.unit:
            meta_of.update((r["id"], r) for r in read_prep_rows(layout, u, ids, META_COLUMNS))
    media_of: dict[str, Media] = {}
    for u, ids in wanted.items():
        media_of.update(read_prep_media(layout, u, ids))
    writer = UnitWriter.for_output(layout, unit.unit, SCHEMA, unit.describe(), cfg.output, composite=True)
    try:
        for s in samples:  # sorted by id in the plan file
            d = drafts.get(s["id"])
            texts = {f: d[f] for f in TEXT_FIELDS if d[f]} if d else {}
            written_by = json.loads(d["generated_by"]) if d else {}
            media = {"target_image": media_of[s["target"]], "reference_images": [media_of[r] for r in s["refs"]]}
            writer.add(sample_record(s, meta_of, texts, written_by), media, group=shard_group(s["task"], len(s["refs"])))
        rejects, used = [], []
        for row in prep:
            if row["reason"]:
                rejects.append(reject_dict(row, row["reason"], row["stage"], row["detail"]))
            elif row["id"] in unused:
                reason, detail = unused[row["id"]]
                rejects.append(reject_dict(row, reason, _reject_stage(reason), detail))
            else:
                used.append(row["id"])
        writer.mark_used(used)
        for r in rejects:
            writer.reject(RejectRow(r["id"], r["source"], r["reason"], r["stage"], r["detail"] or None, r["sha256"]))
        return writer.commit()
    except BaseException:
        writer.abort()
        raise
