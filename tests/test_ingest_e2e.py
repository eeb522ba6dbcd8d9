"""End to end on a real local Ray: a hostile input corpus becomes valid shards plus rejects.

Properties: every input is either a sample or a reject with the expected reason; inputs =
accepted + rejected; the output reads back with webdataset and HF datasets (tar and Parquet)
with the summary's ids and counts; nothing is written outside the output folder; source bytes
are stored unchanged; the EXIF-rotated photo comes out upright.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.corpus import ROTATED_LEFT, ROTATED_RIGHT, ROTATED_SIZE, image_bytes, make_tar, photo, write_bad_image_corpus
from weaverdata.config import IngestConfig, load_config
from weaverdata.io.sources import sample_id
from weaverdata.io.validate import validate_output
from weaverdata.job import run_job
from weaverdata.recipes import ingest

pytestmark = pytest.mark.ray


def build_corpus(root: Path) -> dict[str, str | None]:
    """The issue's bad-input corpus. Returns {locator: expected reject reason or None (accepted)}."""
    from PIL import Image

    expected: dict[str, str | None] = {}
    for name, reason in write_bad_image_corpus(root / "images").items():
        expected[f"images/{name}"] = reason
    jpg = image_bytes(Image.fromarray(photo("chelsea")), "JPEG", quality=90)
    png = image_bytes(Image.fromarray(photo("coffee")), "PNG")
    # file names with dots, spaces and non-ASCII
    (root / "names").mkdir()
    for name in ("my photo.v2.final.jpg", "café ünï 写真.png"):
        (root / "names" / name).write_bytes(jpg if name.endswith("jpg") else png)
        expected[f"names/{name}"] = None
    (root / "names" / "my photo.v2.final.txt").write_text("a cat on a rug\n")  # caption sidecar
    (root / "empty").mkdir()  # an empty folder: nothing to account for
    (root / "README.md").write_text("not an image\n")
    expected["README.md"] = "unsupported_file"
    # a tar with a path-traversal member, duplicate keys, and keys with dots/spaces/non-ASCII
    (root / "shards").mkdir()
    make_tar(
        root / "shards" / "hostile.tar",
        [
            ("../evil.jpg", jpg),
            ("/abs/evil.jpg", jpg),
            ("good.jpg", jpg),
            ("good.txt", b"a good cat"),
            ("dup.jpg", jpg),
            ("dup.jpg", png),  # the same (key, ext) again
            ("other.jpg", jpg),
            ("dup.png", png),  # key 'dup' comes back after another key
            ("dotted.name with space.jpg", jpg),
            ("ünïcode kéy.jpg", jpg),
            ("nothing_here.txt", b"a key with no image"),
        ],
    )
    expected.update(
        {
            "shards/hostile.tar#../evil.jpg@1": "unsafe_member_name",
            "shards/hostile.tar#/abs/evil.jpg@2": "unsafe_member_name",
            "shards/hostile.tar#good": None,
            "shards/hostile.tar#dup": None,
            "shards/hostile.tar#dup@6": "duplicate_key",
            "shards/hostile.tar#other": None,
            "shards/hostile.tar#dup@8": "duplicate_key",
            "shards/hostile.tar#dotted": None,
            "shards/hostile.tar#ünïcode kéy": None,
            "shards/hostile.tar#nothing_here": "no_image_member",
        }
    )
    # JSON Lines: a good row, a line that is not JSON, a JSON array, a row without image, a path escaping the root
    lines = [
        json.dumps({"image": "../images/photo.jpg", "caption": "an astronaut"}),
        '{"image": "images/photo.jpg", broken',
        json.dumps([1, 2, 3]),
        json.dumps({"caption": "no image here"}),
        json.dumps({"image": "../../../etc/passwd"}),
    ]
    docs = root / "docs" / "rows.jsonl"
    docs.parent.mkdir()
    docs.write_text("\n".join(lines) + "\n")
    offsets = [0]
    for line in lines[:-1]:
        offsets.append(offsets[-1] + len(line.encode()) + 1)
    for off, reason in zip(offsets, [None, "invalid_json", "invalid_record", "missing_field", "outside_input"]):
        expected[f"docs/rows.jsonl@{off}"] = reason
    return expected


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory, ray_local):
    base = tmp_path_factory.mktemp("corpus")
    root = base / "in"
    root.mkdir()
    expected = build_corpus(root)
    out = base / "out"
    before = {p for p in base.parent.rglob("*")}
    cfg = load_config(IngestConfig, None, {"input.path": str(root), "output.path": str(out), "input.samples_per_shard": 4, "runtime.progress": False})
    summary = run_job("ingest", cfg, ingest.process_unit)
    after = {p for p in base.parent.rglob("*")}
    return root, out, expected, summary, after - before


def _records(out: Path) -> dict[str, dict]:
    recs = {}
    for tar in out.glob("data/*/*.tar"):
        import webdataset as wds

        for s in wds.WebDataset(str(tar), shardshuffle=False):
            rec = json.loads(s["json"])
            recs[rec["source"]] = {**rec, "_members": sorted(k for k in s if not k.startswith("__"))}
    return recs


def _rejects(out: Path) -> dict[str, dict]:
    rows = {}
    for f in out.glob("rejects/*.parquet"):
        for r in pq.read_table(f).to_pylist():
            rows[r["source"]] = r
    return rows


def test_every_input_is_a_sample_or_a_reject_with_its_reason(corpus_run):
    _, out, expected, summary, _ = corpus_run
    records, rejects = _records(out), _rejects(out)
    assert set(records) | set(rejects) == set(expected), (set(expected) ^ (set(records) | set(rejects)))
    assert not set(records) & set(rejects)
    for locator, reason in expected.items():
        if reason is None:
            assert locator in records, f"{locator} should be accepted, got {rejects.get(locator)}"
        else:
            assert locator in rejects, f"{locator} should be rejected ({reason})"
            assert rejects[locator]["reason"].startswith(reason), (locator, rejects[locator])
    assert summary["inputs"] == len(expected) == summary["accepted"] + summary["rejected"]
    assert summary["accepted"] == len(records) and summary["rejected"] == len(rejects)
    assert summary["status"] == "complete"


def test_output_validates(corpus_run):
    report = validate_output(str(corpus_run[1]))
    assert report.ok, report.errors
    assert report.samples == corpus_run[3]["accepted"]


def test_nothing_is_written_outside_the_output_folder(corpus_run):
    root, out, _, _, created = corpus_run
    outside = [p for p in created if p != out and out not in p.parents]
    assert outside == [], outside
    assert not any("evil" in p.name for p in created)


def test_ids_are_dot_free_hashes_of_the_locator(corpus_run):
    records = _records(corpus_run[1])
    for locator, rec in records.items():
        assert rec["id"] == sample_id(locator)
        assert "." not in rec["id"]


def test_source_bytes_are_stored_unchanged(corpus_run):
    root, out, _, _, _ = corpus_run
    import webdataset as wds

    checked = 0
    for tar in out.glob("data/images-*/*.tar"):
        for s in wds.WebDataset(str(tar), shardshuffle=False):
            rec = json.loads(s["json"])
            ext = next(k for k in s if k not in ("json",) and not k.startswith("__"))
            if "#" in rec["source"] or "@" in rec["source"]:
                continue
            src = (root / rec["source"]).read_bytes()
            assert s[ext] == src
            assert rec["sha256"] == hashlib.sha256(src).hexdigest()
            checked += 1
    assert checked >= 10


def test_exif_rotated_photo_comes_out_upright(corpus_run):

    out = corpus_run[1]
    rec = _records(out)["images/rotated.jpg"]
    assert (rec["width"], rec["height"]) == ROTATED_SIZE and rec["orientation"] == 6
    import datasets

    ds = datasets.load_dataset("webdataset", data_files=sorted(str(p) for p in out.glob("data/images-jpg/*.tar")), split="train")
    row = next(r for r in ds if r["json"]["source"] == "images/rotated.jpg")
    im = row["jpg"].convert("RGB")  # HF applies the stored EXIF orientation
    assert im.size == ROTATED_SIZE
    w, h = im.size
    left, right = im.getpixel((w // 8, h // 2)), im.getpixel((7 * w // 8, h // 2))
    assert sum(abs(a - b) for a, b in zip(left, ROTATED_LEFT)) < 60, left
    assert sum(abs(a - b) for a, b in zip(right, ROTATED_RIGHT)) < 60, right


def test_modes_and_animation_recorded(corpus_run):
    recs = _records(corpus_run[1])
    assert recs["images/cmyk.jpg"]["mode"] == "CMYK"
    assert recs["images/gray16.png"]["mode"].startswith("I")
    assert recs["images/palette_transparent.png"]["mode"] == "P"
    assert recs["images/animated.gif"]["frames"] == 3
    assert recs["names/my photo.v2.final.jpg"]["caption"] == "a cat on a rug"
    assert recs["shards/hostile.tar#good"]["caption"] == "a good cat"
    assert recs["docs/rows.jsonl@0"]["caption"] == "an astronaut"


def test_shards_read_back_with_webdataset_and_hf_datasets(corpus_run):
    import datasets
    import webdataset as wds

    out, summary = corpus_run[1], corpus_run[3]
    groups = summary["samples_by_group"]
    assert groups and sum(groups.values()) == summary["accepted"]
    all_ids = {"wds": set(), "hf_tar": set(), "hf_parquet": set()}
    for group, count in groups.items():
        tars = sorted(str(p) for p in (out / "data" / group).glob("*.tar"))
        parquets = sorted(str(p) for p in (out / "data" / group).glob("*.parquet"))
        ids_wds = [s["__key__"] for s in wds.WebDataset(tars, shardshuffle=False)]
        ds_tar = datasets.load_dataset("webdataset", data_files=tars, split="train")
        ds_pq = datasets.load_dataset("parquet", data_files=parquets, split="train")
        assert len(ids_wds) == len(ds_tar) == len(ds_pq) == count, group
        assert ids_wds == ds_tar["__key__"] == ds_pq["id"]
        assert isinstance(ds_pq.features["image"], datasets.Image)
        first = ds_pq[0]["image"]
        assert first.size[0] > 0
        all_ids["wds"].update(ids_wds)
        all_ids["hf_tar"].update(ds_tar["__key__"])
        all_ids["hf_parquet"].update(ds_pq["id"])
    assert all_ids["wds"] == all_ids["hf_tar"] == all_ids["hf_parquet"]
    assert len(all_ids["wds"]) == summary["accepted"]


def test_same_input_and_config_give_identical_shards(corpus_run, tmp_path):
    root, out, _, _, _ = corpus_run
    cfg = load_config(IngestConfig, None, {"input.path": str(root), "output.path": str(tmp_path / "again"), "input.samples_per_shard": 4, "runtime.progress": False})
    run_job("ingest", cfg, ingest.process_unit)
    first = sorted(p.relative_to(out) for p in out.glob("data/*/*"))
    second = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").glob("data/*/*"))
    assert first == second
    for rel in first:
        assert (out / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
