"""Readers and planning, without Ray: stable ids, splits that never lose or repeat a record."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from weaverdata.config import InputConfig, VideoConfig
from weaverdata.io.sources import InputError, image_from_row, plan_units, read_unit, sample_id


def read_all(cfg: InputConfig, video=None):
    return [item for unit in plan_units(cfg) for item in read_unit(unit, cfg, video)]


def test_missing_and_empty_inputs_fail_at_planning(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        plan_units(InputConfig(path=str(tmp_path / "nope")))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InputError, match="no input files"):
        plan_units(InputConfig(path=str(tmp_path / "empty")))
    with pytest.raises(InputError, match="no input"):
        plan_units(InputConfig(path=None))


@pytest.mark.parametrize("chunk", [1024, 1500, 4096, 10_000_000])
def test_jsonl_byte_range_splits_read_every_record_exactly_once(tmp_path, chunk):
    rng = random.Random(chunk)
    rows = [{"i": i, "text": "x" * rng.randint(0, 400), "ü": "ñ" * rng.randint(0, 5)} for i in range(300)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    cfg = InputConfig(path=str(path), jsonl_bytes_per_shard=chunk)
    units = plan_units(cfg)
    if chunk < path.stat().st_size:
        assert len(units) > 1
    got = [item.payload["row"]["i"] for item in read_all(cfg)]
    assert got == list(range(300))


def test_folder_ids_are_stable_and_relative_to_the_root(photos_dir, tmp_path):
    import shutil

    copy = tmp_path / "elsewhere"
    shutil.copytree(photos_dir, copy)
    a = [i.id for i in read_all(InputConfig(path=str(photos_dir), samples_per_shard=5))]
    b = [i.id for i in read_all(InputConfig(path=str(copy), samples_per_shard=7))]
    assert a == b and len(set(a)) == len(a) >= 15
    assert all("." not in i for i in a)


def test_parquet_units_follow_row_groups(tmp_path, photos_dir):
    files = sorted(photos_dir.iterdir())[:6]
    table = pa.table({"image": [f.read_bytes() for f in files], "caption": [f.stem for f in files]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=2)
    cfg = InputConfig(path=str(tmp_path / "t.parquet"), samples_per_shard=2)
    assert len(plan_units(cfg)) == 3
    items = [image_from_row(i, cfg, str(tmp_path)) for i in read_all(cfg)]
    assert [i.locator for i in items] == [f"t.parquet#row={n}" for n in range(6)]
    assert [i.payload["caption"] for i in items] == [f.stem for f in files]
    assert items[3].payload["image"] == files[3].read_bytes()


def test_hf_saved_dataset(tmp_path, photos_dir):
    import datasets

    files = sorted(photos_dir.iterdir())[:5]
    ds = datasets.Dataset.from_dict({"image": [str(f) for f in files], "text": [f.stem for f in files]}).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hf"))
    cfg = InputConfig(path=str(tmp_path / "hf"), samples_per_shard=2)
    units = plan_units(cfg)
    assert [u.kind for u in units] == ["hf"] * 3
    items = [image_from_row(i, cfg, units[0].root) for i in read_all(cfg)]
    assert [i.payload["caption"] for i in items] == [f.stem for f in files]
    assert [i.payload["image"] for i in items] == [f.read_bytes() for f in files]


def test_video_frames_are_sampled_at_the_configured_rate(bikes_mp4):
    items = read_all(InputConfig(path=str(bikes_mp4)), VideoConfig(fps=2.0))
    times = [i.payload["video"]["time_s"] for i in items]
    assert 18 <= len(items) <= 22  # bikes.mp4 is 10 s long
    assert all(b - a >= 0.45 for a, b in zip(times, times[1:]))
    assert items[0].locator.startswith("bikes.mp4#frame=")
    assert items[0].payload["image"][:2] == b"\xff\xd8"


def test_a_corrupt_video_is_one_reject_not_a_crash(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    items = read_all(InputConfig(path=str(tmp_path / "bad.mp4")))
    assert len(items) == 1 and items[0].error[0] == "video_decode_error"


def test_sample_id_is_deterministic_and_dot_free():
    assert sample_id("a/b.jpg") == sample_id("a/b.jpg") != sample_id("a/b.png")
    assert len(sample_id("x")) == 20 and "." not in sample_id("x.y.z")
