"""The shard writer, without Ray: tar and Parquet agree, commit marker last, one field set per shard."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from weaverdata import schemas
from weaverdata.io.layout import OutputLayout
from weaverdata.io.shards import Media, RecordError, RejectRow, UnitWriter, binary_view_of, field_signature, member_names, null_pattern


def jpeg(color="red", size=(24, 16)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, color).save(b, "JPEG")
    return b.getvalue()


def record(i: int, data: bytes, caption: str = "", video=None) -> dict:
    return {
        "id": f"s{i:03d}", "source": f"x/{i}.jpg", "sha256": "a" * 64, "phash": "0" * 16,
        "width": 24, "height": 16, "format": "jpeg", "mode": "RGB", "orientation": 1, "frames": 1,
        "num_bytes": len(data), "caption": caption, "video": video,
    }


def test_tar_and_parquet_hold_the_same_samples_and_stats_come_last(tmp_path):
    layout = OutputLayout.at(str(tmp_path))
    w = UnitWriter(layout, "00003", "image_record", source="test")
    data = jpeg()
    for i in range(5):
        w.add(record(i, data, caption=f"c{i}"), {"image": Media("jpg", data)}, group="images")
    w.reject(RejectRow("r1", "x/bad.jpg", "empty_file", "decode"))
    assert not (tmp_path / "stats").exists(), "stats must not exist before commit"
    assert not (tmp_path / "data/images-jpg/part-00003.tar").exists(), "final name only once whole"
    stats = w.commit()
    assert stats["inputs"] == 6 == stats["accepted"] + stats["rejected"]
    keys = [s["__key__"] for s in wds.WebDataset(str(tmp_path / "data/images-jpg/part-00003.tar"), shardshuffle=False)]
    table = pq.read_table(tmp_path / "data/images-jpg/part-00003.parquet")
    assert keys == table.column("id").to_pylist() == [f"s{i:03d}" for i in range(5)]
    assert table.column("image").to_pylist()[2]["bytes"] == data
    assert json.loads((tmp_path / "stats/part-00003.json").read_text())["outputs"][0]["samples"] == 5
    assert pq.read_table(tmp_path / "rejects/part-00003.parquet").column("reason").to_pylist() == ["empty_file"]
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_same_samples_give_byte_identical_shards(tmp_path):
    data = jpeg("blue")
    for run in ("a", "b"):
        w = UnitWriter(OutputLayout.at(str(tmp_path / run)), "00000", "image_record", source="t")
        for i in range(3):
            w.add(record(i, data), {"image": Media("jpg", data)}, group="images")
        w.commit()
    for name in ("part-00000.tar", "part-00000.parquet"):
        assert (tmp_path / "a/data/images-jpg" / name).read_bytes() == (tmp_path / "b/data/images-jpg" / name).read_bytes()


def test_formats_go_to_separate_shards_so_each_has_one_field_set(tmp_path):
    w = UnitWriter(OutputLayout.at(str(tmp_path)), "00000", "image_record", source="t")
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    w.add(record(0, jpeg()), {"image": Media("jpg", jpeg())}, group="images")
    w.add(record(1, png.getvalue()), {"image": Media("png", png.getvalue())}, group="images")
    stats = w.commit()
    assert sorted(o["group"] for o in stats["outputs"]) == ["images-jpg", "images-png"]


def test_a_group_never_mixes_null_and_set_fields(tmp_path):
    w = UnitWriter(OutputLayout.at(str(tmp_path)), "00000", "image_record", source="t")
    w.add(record(0, jpeg()), {"image": Media("jpg", jpeg())}, group="images")
    with pytest.raises(RecordError, match="null/empty fields"):
        w.add(record(1, jpeg(), video={"frame_index": 3, "time_s": 0.1}), {"image": Media("jpg", jpeg())}, group="images")
    w.abort()
    assert not list(tmp_path.rglob("*.tar*"))


def test_records_that_break_the_schema_or_repeat_an_id_are_refused(tmp_path):
    w = UnitWriter(OutputLayout.at(str(tmp_path)), "00000", "image_record", source="t")
    bad = record(0, jpeg())
    bad["width"] = 0
    with pytest.raises(RecordError, match="width"):
        w.add(bad, {"image": Media("jpg", jpeg())}, group="images")
    w.add(record(1, jpeg()), {"image": Media("jpg", jpeg())}, group="images")
    with pytest.raises(RecordError, match="twice"):
        w.reject(RejectRow("s001", "x", "empty_file", "decode"))
    dotted = record(2, jpeg())
    dotted["id"] = "a.b"
    with pytest.raises(RecordError):
        w.add(dotted, {"image": Media("jpg", jpeg())}, group="images")
    w.abort()


def test_a_new_attempt_clears_leftovers_of_a_killed_one(tmp_path):
    layout = OutputLayout.at(str(tmp_path))
    w = UnitWriter(layout, "00007", "image_record", source="t")
    w.add(record(0, jpeg()), {"image": Media("jpg", jpeg())}, group="images")
    # simulate a kill: files are left open under temp names, no stats
    assert list(tmp_path.rglob("part-00007.tar.tmp-*"))
    w2 = UnitWriter(layout, "00007", "image_record", source="t")
    assert not list(tmp_path.rglob("part-00007.tar.tmp-*"))
    w2.add(record(0, jpeg()), {"image": Media("jpg", jpeg())}, group="images")
    assert w2.commit()["accepted"] == 1


def test_member_names_and_signatures_for_reference_samples():
    fields = schemas.media_fields("reference_sample")
    members = member_names("k1", {"target_image": Media("jpg", b"t"), "reference_images": [Media("jpg", b"a"), Media("jpg", b"b")]}, fields)
    assert [n for n, _ in members] == ["k1.target.jpg", "k1.ref0.jpg", "k1.ref1.jpg"]
    assert field_signature(members) == "3jpg"
    assert field_signature([("a", Media("jpg", b"")), ("b", Media("png", b""))]) == "jpg-png"


def test_null_pattern():
    assert null_pattern({"a": None, "b": [], "c": [{"d": None}], "e": 1}) == frozenset({"/a", "/b[]", "/c[]/d"})


def test_tar_is_a_valid_posix_archive(tmp_path):
    w = UnitWriter(OutputLayout.at(str(tmp_path)), "00000", "image_record", source="t")
    w.add(record(0, jpeg()), {"image": Media("jpg", jpeg())}, group="images")
    w.commit()
    path = tmp_path / "data/images-jpg/part-00000.tar"
    assert path.stat().st_size % tarfile.RECORDSIZE == 0
    with tarfile.open(path) as tar:
        assert tar.getnames() == ["s000.json", "s000.jpg"]
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())


@pytest.mark.parametrize("name,size", [("a.json", 0), ("0123456789abcdef0123.jpg", 123_456), ("x" * 99, 10**9), ("k.ref10.webp", 511), ("ü.jpg", 5), ("y" * 150 + ".png", 7)])
def test_fast_tar_header_equals_tarfile(name, size):
    from weaverdata.io.shards import _tar_header_slow, tar_header

    assert tar_header(name, size) == _tar_header_slow(name, size)


def ref_record(sid: str, n_refs: int) -> dict:
    img = {"sha256": "0" * 64, "source": "a.jpg", "width": 24, "height": 16}
    by = {"model": "vlm", "revision": "", "prompt_sha256": "c" * 64}
    return {
        "id": sid, "task": "single_reference" if n_refs == 1 else "multi_reference", "target": img,
        "references": [{**img, "clip_cosine": 0.8, "phash_distance": 20} for _ in range(n_refs)],
        "instruction": "make it", "description": "a thing", "dynamics": "",
        "generated_by": {"description": by, "instruction": by, "dynamics": None},
        "provenance": {"kind": "collection", "source": "a.jpg", "group": "g", "times_s": []},
    }


def test_composite_writer_counts_inputs_apart_from_samples(tmp_path):
    """build-refs: a sample is made of several inputs, an input may serve several samples."""
    layout = OutputLayout.at(str(tmp_path))
    w = UnitWriter(layout, "00000", "reference_sample", source="t", composite=True)
    data = jpeg()
    w.add(ref_record("s1", 1), {"target_image": Media("jpg", data), "reference_images": [Media("jpg", data)]}, group="single_reference-1ref")
    w.add(ref_record("s2", 1), {"target_image": Media("jpg", data), "reference_images": [Media("jpg", data)]}, group="single_reference-1ref")
    w.mark_used(["imgA", "imgB", "imgC"])  # A serves both samples
    w.reject(RejectRow("imgD", "d.jpg", "no_group", "group"))
    stats = w.commit()
    assert (stats["inputs"], stats["accepted"], stats["rejected"], stats["samples"]) == (4, 3, 1, 2)
    assert json.loads((tmp_path / "stats" / "part-00000.json").read_text()) == stats

    w = UnitWriter(layout, "00001", "reference_sample", source="t", composite=True)
    w.mark_used(["imgA"])
    w.reject(RejectRow("imgA", "a.jpg", "no_group", "group"))
    with pytest.raises(RecordError, match="both used and rejected"):
        w.commit()


def test_row_groups_end_at_rows_or_media_bytes_whichever_comes_first(tmp_path):
    data = jpeg(size=(200, 200))
    assert len(data) > 1000

    def row_group_sizes(rows: int, nbytes: int) -> list[int]:
        out = tmp_path / f"{rows}-{nbytes}"
        w = UnitWriter(OutputLayout.at(str(out)), "00000", "image_record", source="test", row_group_rows=rows, row_group_bytes=nbytes)
        for i in range(10):
            w.add(record(i, data), {"image": Media("jpg", data)}, group="images")
        w.commit()
        meta = pq.ParquetFile(out / "data/images-jpg/part-00000.parquet").metadata
        return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]

    assert row_group_sizes(4, 2**30) == [4, 4, 2]
    assert row_group_sizes(256, 3 * len(data)) == [3, 3, 3, 1]  # the 3rd image reaches the byte cap
    assert row_group_sizes(2, 3 * len(data)) == [2, 2, 2, 2, 2]


def test_binary_view_of_keeps_every_value_short_long_and_empty():
    blobs = [b"", b"x", b"twelve bytes", b"thirteen byte", bytes(range(256)) * 400]
    arr = binary_view_of(blobs)
    arr.validate(full=True)
    assert arr.to_pylist() == blobs


def test_parquet_shards_carry_exactly_the_declared_schema(tmp_path):
    """Single-image columns are written from binary_view arrays; readers still see the declared
    Arrow schema (plain binary) and its HF features metadata, for both kinds of media column."""
    data, other = jpeg(size=(64, 64)), jpeg("blue", size=(40, 40))
    w = UnitWriter(OutputLayout.at(str(tmp_path / "img")), "00000", "image_record", source="test")
    for i in range(3):
        w.add(record(i, data), {"image": Media("jpg", data)}, group="images")
    w.commit()
    w = UnitWriter(OutputLayout.at(str(tmp_path / "ref")), "00000", "reference_sample", source="t", composite=True)
    w.add(ref_record("s1", 2), {"target_image": Media("jpg", data), "reference_images": [Media("jpg", other), Media("png", b"p" * 5)]}, group="multi_reference-2ref")
    w.mark_used(["a"])
    w.commit()
    for name, part in [("image_record", "img/data/images-jpg"), ("reference_sample", "ref/data/multi_reference-2ref-*")]:
        (path,) = (tmp_path).glob(f"{part}/part-00000.parquet")
        assert pq.read_schema(path).equals(schemas.arrow_schema(name), check_metadata=True), name
    row = pq.read_table(next(tmp_path.glob("ref/data/*/part-00000.parquet"))).to_pylist()[0]
    assert row["target_image"] == {"bytes": data, "path": "s1.jpg"}
    assert [r["bytes"] for r in row["reference_images"]] == [other, b"p" * 5]
    assert pq.read_table(tmp_path / "img/data/images-jpg/part-00000.parquet").column("image").to_pylist()[1] == {"bytes": data, "path": "s001.jpg"}


def test_local_shard_files_are_written_in_calls_below_2_mib(tmp_path, monkeypatch):
    """Linux sizes page-cache folios by the length of each write; calls of 2 MiB or more take 2 MiB
    blocks, which a VM with free page reporting has handed back to its host (see shards.WRITE_MAX).
    Tar batches of 8 MiB and images larger than WRITE_MAX go in calls of at most WRITE_MAX; Parquet
    pages stay below 2 MiB unless they hold an image larger than PARQUET_MEDIA_CHUNK; every byte
    arrives."""
    import os
    import random

    import pyarrow as pa

    from weaverdata.io import shards

    tar_calls, parquet_calls = [], []
    real_writev = os.writev

    def writev(fd, buffers):
        buffers = list(buffers)
        tar_calls.append(sum(memoryview(b).nbytes for b in buffers))
        return real_writev(fd, buffers)

    class RecordingFile(io.FileIO):  # stands in for pa.OSFile: Arrow makes the same write calls
        def write(self, data):
            parquet_calls.append(memoryview(data).nbytes)
            return super().write(data)

    monkeypatch.setattr(os, "writev", writev)
    monkeypatch.setattr(pa, "OSFile", RecordingFile)
    rng = random.Random(0)
    sizes = [rng.randrange(1, 1_000_000) for _ in range(40)] + [3_000_000, 1, 2_097_152, 4_500_000, 1_048_576, 1_048_577]
    blobs = [rng.randbytes(n) for n in sizes]
    w = UnitWriter(OutputLayout.at(str(tmp_path)), "00000", "image_record", source="t", row_group_bytes=6 * 2**20)
    for i, blob in enumerate(blobs):
        w.add(record(i, blob), {"image": Media("jpg", blob)}, group="images")
    w.commit()
    monkeypatch.undo()

    assert tar_calls and max(tar_calls) <= shards.WRITE_MAX
    assert sum(tar_calls) >= sum(sizes) and sum(parquet_calls) >= sum(sizes)
    large = sum(1 for n in sizes if n > shards.PARQUET_MEDIA_CHUNK)
    assert 0 < sum(1 for n in parquet_calls if n >= 2**21) <= large
    assert sum(1 for n in parquet_calls if n > 2**19) >= sum(sizes) // (3 * 2**19)  # pages, not a column chunk each
    with tarfile.open(tmp_path / "data/images-jpg/part-00000.tar") as tar:
        assert [tar.extractfile(f"s{i:03d}.jpg").read() for i in range(len(blobs))] == blobs
    assert [v["bytes"] for v in pq.read_table(tmp_path / "data/images-jpg/part-00000.parquet").column("image").to_pylist()] == blobs


def test_gather_writes_survive_short_writes(tmp_path, monkeypatch):
    import os

    from weaverdata.io import shards

    chunks = [b"a" * 700, b"", b"b" * 3 * shards.WRITE_MAX, b"c" * 5, bytearray(b"d" * 1500)]
    real_write = os.write
    # a gather write that stops after at most 999 bytes (a prefix of its buffers), as the OS may
    monkeypatch.setattr(os, "writev", lambda fd, buffers: real_write(fd, b"".join(buffers)[:999]))
    path = tmp_path / "out.bin"
    with open(path, "wb", buffering=0) as f:
        shards._writev_all(f.fileno(), chunks, sum(map(len, chunks)))
    assert path.read_bytes() == b"".join(chunks)
