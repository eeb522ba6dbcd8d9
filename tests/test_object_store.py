"""Object stores have no atomic rename: shards go under final names and the stats file commits.

fsspec's in-memory filesystem stands in for S3 here (same non-local code path, no server);
issue 7 adds tests against a real S3-compatible server.
"""

from __future__ import annotations

import io

import fsspec
import pytest
from PIL import Image

from tests.test_writer import record
from weaverdata.config import InputConfig
from weaverdata.io.layout import OutputLayout
from weaverdata.io.shards import Media, UnitWriter
from weaverdata.io.sources import plan_units, read_unit
from weaverdata.io.validate import validate_output


@pytest.fixture
def mem():
    fs = fsspec.filesystem("memory")
    root = "memory://wd-test"
    yield fs, root
    if fs.exists("/wd-test"):
        fs.rm("/wd-test", recursive=True)


def jpeg(color):
    b = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(b, "JPEG")
    return b.getvalue()


def test_read_from_an_object_store(mem):
    fs, root = mem
    for i, color in enumerate(("red", "green", "blue")):
        fs.pipe_file(f"/wd-test/in/img{i}.jpg", jpeg(color))
    cfg = InputConfig(path=f"{root}/in", samples_per_shard=2)
    units = plan_units(cfg)
    items = [it for u in units for it in read_unit(u, cfg)]
    assert [it.locator for it in items] == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert items[1].payload["image"] == jpeg("green")


def test_write_commit_and_validate_without_rename(mem):
    fs, root = mem
    layout = OutputLayout.at(f"{root}/out")
    assert not layout.loc.atomic_rename
    w = UnitWriter(layout, "00000", "image_record", source="mem")
    for i in range(3):
        data = jpeg("red")
        w.add(record(i, data), {"image": Media("jpg", data)}, group="images")
    assert not fs.exists("/wd-test/out/stats/part-00000.json")
    stats = w.commit()
    assert fs.exists("/wd-test/out/stats/part-00000.json")
    assert stats["outputs"][0]["tar"] == "data/images-jpg/part-00000.tar"
    assert not [p for p in fs.find("/wd-test/out") if ".tmp-" in p]
    # a run.json + summary make it a full output folder that validate accepts
    from weaverdata.config import IngestConfig
    from weaverdata.io.sources import WorkUnit
    from weaverdata.job import summarise

    cfg = IngestConfig(output={"path": f"{root}/out"})
    unit = WorkUnit("00000", "images", f"{root}/in", items=(("a.jpg", "", ""),))
    layout.write_json("run.json", {"recipe": "ingest", "config_sha256": cfg.identity_sha256(), "units": [unit.to_json()]})
    summarise(layout, "ingest", cfg, "test", "t0", 1.0, 0, [], {})
    report = validate_output(f"{root}/out")
    assert report.ok, report.errors
    # an uncommitted unit's files are invisible to validate and cleared on retry
    fs.rm("/wd-test/out/stats/part-00000.json")
    assert not validate_output(f"{root}/out").ok
    UnitWriter(layout, "00000", "image_record", source="mem")
    assert not fs.exists("/wd-test/out/data/images-jpg/part-00000.tar")
