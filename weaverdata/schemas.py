"""Record schemas: the JSON Schema files in `schemas/` are the source of truth.

Everything else is derived from them here: the jsonschema validators used by the writer and by
`weaverdata validate`, the pyarrow schemas of the Parquet shards (JSON fields in file order,
plus the media columns named in the schema's `x-media`), and the HF `datasets` features stored
in the Parquet metadata so `load_dataset("parquet")` decodes images. Nothing is written twice,
so the files and the code cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import pyarrow as pa
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMA_NAMES = (
    "common",
    "image_record",
    "proxy_document",
    "reference_sample",
    "reject",
    "shard_stats",
    "run_summary",
)

# Arrow type of one stored image: the struct HF `datasets` uses for its Image feature.
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@dataclass(frozen=True)
class MediaField:
    """A binary field of a record: stored as tar member(s) and as a Parquet image column."""

    name: str  # Parquet column
    kind: str  # "image" (one) or "image_list" (zero or more)
    member: str  # tar member stem: "" -> <key>.<ext>; "ref" (list) -> <key>.ref0.<ext>, ...


def _schema_dir():
    return resources.files("weaverdata").joinpath("schema_files")


@cache
def raw_schema(name: str) -> dict[str, Any]:
    if name not in SCHEMA_NAMES:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    return json.loads(_schema_dir().joinpath(f"{name}.schema.json").read_text())


@cache
def _registry() -> Registry:
    pairs = []
    for name in SCHEMA_NAMES:
        res = Resource.from_contents(raw_schema(name))
        pairs.append((f"{name}.schema.json", res))
        pairs.append((raw_schema(name)["$id"], res))
    return Registry().with_resources(pairs)


@cache
def validator(name: str) -> Draft202012Validator:
    schema = dict(raw_schema(name))
    schema["$id"] = f"{name}.schema.json"
    return Draft202012Validator(schema, registry=_registry())


def bundled_schema(name: str) -> dict[str, Any]:
    """Schema `name` with every $ref (local or into common.schema.json) inlined: self-contained."""
    root = raw_schema(name)

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                node = _resolve(node, root)
            return {k: inline(v) for k, v in node.items() if k not in ("$id", "$defs")}
        if isinstance(node, list):
            return [inline(x) for x in node]
        return node

    return inline(root)


@cache
def _fast_validator(name: str):
    """A compiled (Rust) validator of the bundled schema: about 1 µs a record."""
    import jsonschema_rs

    return jsonschema_rs.Draft202012Validator(bundled_schema(name))


def record_errors(name: str, record: dict[str, Any]) -> list[str]:
    """Every way `record` breaks schema `name`, as readable lines (empty when valid).

    Valid records (nearly all) are confirmed by the compiled validator; the pure-Python one then
    explains any failure with the field's path.
    """
    if _fast_validator(name).is_valid(record):
        return []
    out = []
    for err in validator(name).iter_errors(record):
        where = "/".join(str(p) for p in err.absolute_path) or "(record)"
        out.append(f"{where}: {err.message}")
    return out


def media_fields(name: str) -> list[MediaField]:
    spec = raw_schema(name).get("x-media", {})
    fields = []
    for field, kind in spec.items():
        if isinstance(kind, dict):
            fields.append(MediaField(field, kind["kind"], kind.get("member", field)))
        else:
            fields.append(MediaField(field, kind, "" if kind == "image" else field))
    return fields


# -- JSON Schema -> Arrow -----------------------------------------------------------------------

def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    doc, _, pointer = ref.partition("#")
    target = raw_schema(doc.removesuffix(".schema.json")) if doc else root
    base = target
    for part in pointer.strip("/").split("/"):
        if part:
            target = target[part]
    merged = {k: v for k, v in node.items() if k != "$ref"}
    return {**_resolve(target, base), **merged}


def _list_of(item: pa.DataType) -> pa.DataType:
    """A list type whose item is named as Parquet names it ("element"), so a Parquet file read
    back without a stored Arrow schema has exactly this type."""
    return pa.list_(pa.field("element", item))


def _arrow_type(node: dict[str, Any], root: dict[str, Any], where: str) -> pa.DataType:
    node = _resolve(node, root)
    if "enum" in node:
        return pa.string()
    types = node.get("type")
    if isinstance(types, list):
        non_null = [t for t in types if t != "null"]
        if len(non_null) != 1:
            raise TypeError(f"{where}: a union of {types} has no Arrow type")
        types = non_null[0]
    if types == "string":
        return pa.string()
    if types == "integer":
        return pa.int64()
    if types == "number":
        return pa.float64()
    if types == "boolean":
        return pa.bool_()
    if types == "array":
        return _list_of(_arrow_type(node["items"], root, where + "[]"))
    if types == "object":
        props = node.get("properties")
        if props:
            return pa.struct(
                [pa.field(k, _arrow_type(v, root, f"{where}.{k}")) for k, v in props.items()]
            )
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            return pa.map_(pa.string(), _arrow_type(extra, root, where + "{}"))
        return pa.string()  # free-form object: stored as JSON text
    raise TypeError(f"{where}: no Arrow type for schema node {node}")


@cache
def arrow_schema(name: str) -> pa.Schema:
    """Parquet schema of records `name`: the JSON fields in file order, then the media columns."""
    root = raw_schema(name)
    fields = [
        pa.field(key, _arrow_type(node, root, key), nullable=True)
        for key, node in root["properties"].items()
    ]
    for media in media_fields(name):
        typ = IMAGE_STRUCT if media.kind == "image" else _list_of(IMAGE_STRUCT)
        fields.append(pa.field(media.name, typ))
    schema = pa.schema(fields)
    return schema.with_metadata({b"huggingface": json.dumps(_hf_features(name, schema)).encode()})


def _hf_features(name: str, schema: pa.Schema) -> dict[str, Any]:
    """HF `datasets` feature metadata so Parquet shards load with decoded images."""
    from datasets import Features, Image, List

    features = Features.from_arrow_schema(pa.schema([f for f in schema]))
    for media in media_fields(name):
        features[media.name] = Image() if media.kind == "image" else List(Image())
    return {"info": {"features": features.to_dict()}}
