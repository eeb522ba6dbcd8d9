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


def written_by(prompt: str) -> dict:
    return {"model": "Qwen/Qwen2.5-VL-7B-Instruct", "revision": "", "prompt_sha256": prompt * 64}


def example_reference_sample() -> dict:
    ref = {"sha256": "b" * 64, "source": "v.mp4#frame=10", "width": 64, "height": 48}
    return {
        "id": "r1", "task": "video_dynamics", "target": {"sha256": "a" * 64, "source": "v.mp4#frame=40", "width": 64, "height": 48},
        "references": [{**ref, "clip_cosine": 0.81, "phash_distance": 12}],
        "instruction": "show the cyclist further down the street", "description": "a street", "dynamics": "the cyclist moved left",
        "generated_by": {"description": written_by("d"), "instruction": written_by("e"), "dynamics": written_by("f")},
        "provenance": {"kind": "video", "source": "v.mp4", "group": "shot-0", "times_s": [0.4, 1.6]},
    }


def example_text_to_image_sample() -> dict:
    """No references: no instruction and no dynamics, so their generated_by entries are null."""
    rec = example_reference_sample()
    rec.update(id="t1", task="text_to_image", references=[], instruction="", dynamics="",
               generated_by={"description": written_by("d"), "instruction": None, "dynamics": None},
               provenance={"kind": "collection", "source": "a.jpg", "group": "collection", "times_s": []})
    return rec


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


@pytest.mark.parametrize("name,make", [("reference_sample", example_reference_sample), ("reference_sample", example_text_to_image_sample), ("proxy_document", example_proxy_document)])
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


def test_text_provenance_is_one_definition_shared_by_both_records():
    """generated_by entries are object-or-null members of a struct in Parquet; proxy described_by,
    the same definition narrowed to an object, keeps its Arrow type."""
    shape = pa.struct([("model", pa.string()), ("revision", pa.string()), ("prompt_sha256", pa.string())])
    gen = schemas.arrow_schema("reference_sample").field("generated_by").type
    assert [gen.field(i).name for i in range(gen.num_fields)] == ["description", "instruction", "dynamics"]
    assert all(gen.field(i).type == shape and gen.field(i).nullable for i in range(gen.num_fields))
    images = schemas.arrow_schema("proxy_document").field("images").type.value_type
    assert images.field("described_by").type == shape
    hf = json.loads(schemas.arrow_schema("reference_sample").metadata[b"huggingface"])["info"]["features"]["generated_by"]
    assert hf["dynamics"] == {k: {"dtype": "string", "_type": "Value"} for k in ("model", "revision", "prompt_sha256")}
    doc = example_proxy_document()
    doc["images"][0]["described_by"] = None  # proxies always say who described (empty strings when no model did)
    assert schemas.record_errors("proxy_document", doc)


@pytest.mark.parametrize("mutate,where", [
    (lambda g: g.update(dynamics={"model": "m"}), "generated_by/dynamics"),
    (lambda g: g.pop("instruction"), "generated_by"),
    (lambda g: g.update(description="Qwen"), "generated_by/description"),
    (lambda g: g["description"].update(prompt_sha256="not-a-hash"), "generated_by/description/prompt_sha256"),
])
def test_generated_by_entries_are_null_or_whole(mutate, where):
    from weaverdata.schemas import _fast_validator, validator

    rec = example_reference_sample()
    mutate(rec["generated_by"])
    errs = schemas.record_errors("reference_sample", rec)
    assert errs and errs[0].startswith(where + ":"), errs
    assert not _fast_validator("reference_sample").is_valid(rec) and not validator("reference_sample").is_valid(rec)


@pytest.mark.parametrize("name,make", [("reference_sample", example_reference_sample), ("reference_sample", example_text_to_image_sample), ("proxy_document", example_proxy_document)])
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
