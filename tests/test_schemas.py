"""The JSON Schema files are the source of truth; the Arrow schemas are derived and cannot drift."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from jsonschema import Draft202012Validator

from weaverdata import schemas

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
RECORDS = ("image_record", "proxy_document", "reference_sample", "reject")


def test_package_reads_the_top_level_schema_files():
    files = {p.name.removesuffix(".schema.json") for p in SCHEMA_DIR.glob("*.schema.json")}
    assert files == set(schemas.SCHEMA_NAMES)
    for name in schemas.SCHEMA_NAMES:
        assert schemas.raw_schema(name) == json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
        Draft202012Validator.check_schema(schemas.raw_schema(name))


@pytest.mark.parametrize("name", RECORDS)
def test_arrow_schema_has_exactly_the_json_fields_then_media(name):
    arrow = schemas.arrow_schema(name)
    props = list(schemas.raw_schema(name)["properties"])
    media = [m.name for m in schemas.media_fields(name)]
    assert arrow.names == props + media
    hf = json.loads(arrow.metadata[b"huggingface"])
    assert set(hf["info"]["features"]) == set(props + media)


def example_reference_sample() -> dict:
    ref = {"sha256": "b" * 64, "source": "v.mp4#frame=10", "width": 64, "height": 48}
    return {
        "id": "r1", "task": "video_dynamics", "target": {"sha256": "a" * 64, "source": "v.mp4#frame=40", "width": 64, "height": 48},
        "references": [{**ref, "clip_cosine": 0.81, "phash_distance": 12}],
        "instruction": "show the cyclist further down the street", "description": "a street", "dynamics": "the cyclist moved left",
        "provenance": {"kind": "video", "source": "v.mp4", "group": "shot-0", "times_s": [0.4, 1.6]},
    }


def example_proxy_document() -> dict:
    return {
        "id": "d1", "recipe": "single_image", "shape": "text_proxy", "source": "photos/a.jpg",
        "tags": {"open": "<imagine>", "close": "</imagine>", "boi": "<BOI>"},
        "messages": [
            {"role": "user", "content": "Show me a cat on a rug."},
            {"role": "assistant", "content": "Here it is. <imagine>A tabby cat lying on a red rug.</imagine><BOI>"},
        ],
        "images": [{"slot": 0, "role": "output", "sha256": "a" * 64, "source": "photos/a.jpg", "width": 10, "height": 10,
                    "description": "A tabby cat lying on a red rug.", "described_by": {"model": "tiny", "revision": "", "prompt_sha256": "c" * 64}}],
    }


@pytest.mark.parametrize("name,make", [("reference_sample", example_reference_sample), ("proxy_document", example_proxy_document)])
def test_records_round_trip_through_arrow_and_validate(name, make):
    rec = make()
    assert schemas.record_errors(name, rec) == []
    row = {**rec, **{m.name: ([] if m.kind == "image_list" else {"bytes": b"x", "path": "p"}) for m in schemas.media_fields(name)}}
    table = pa.Table.from_pylist([row], schema=schemas.arrow_schema(name))
    back = {k: v for k, v in table.to_pylist()[0].items() if k in rec}
    assert back == rec


def test_schema_errors_name_the_field():
    rec = example_reference_sample()
    rec["references"][0]["clip_cosine"] = 3.0
    rec["task"] = "painting"
    errs = schemas.record_errors("reference_sample", rec)
    assert any("references/0/clip_cosine" in e for e in errs) and any(e.startswith("task") for e in errs)


@pytest.mark.parametrize("name,make", [("reference_sample", example_reference_sample), ("proxy_document", example_proxy_document)])
def test_compiled_and_python_validators_agree(name, make):
    from weaverdata.schemas import _fast_validator, validator

    good = make()
    bads = []
    for mutate in (lambda r: r.update(id="a.b"), lambda r: r.pop("id"), lambda r: r.update(extra=1), lambda r: r.update(id="")):
        bad = json.loads(json.dumps(good))
        mutate(bad)
        bads.append(bad)
    assert _fast_validator(name).is_valid(good) and validator(name).is_valid(good)
    for bad in bads:
        assert not _fast_validator(name).is_valid(bad) and not validator(name).is_valid(bad)
