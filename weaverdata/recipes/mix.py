"""`weaverdata mix`: the planner's training mix of proxy documents and understanding chats.

Reads the samples of one or more build-proxy outputs (their committed Parquet shards) and an
understanding dataset (image question-answer chats: JSON Lines, Parquet, or an HF dataset saved
with ``save_to_disk``), picks them with :func:`weaverdata.proxy.mix.mix_plan` (5 generation to
1 understanding by default, deterministic for a seed) and writes ``OUT/mix.parquet``: one row
per position with the sample's kind, the dataset it comes from, its id there and the full row
as JSON (image bytes of understanding rows are kept in their own column), plus
``OUT/summary.json`` / ``summary.md``. Samples are referenced, not re-encoded.
"""

from __future__ import annotations

import base64
import io
import json
import posixpath
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from weaverdata.io.card import CARD, mix_card
from weaverdata.io.layout import OutputLayout
from weaverdata.io.storage import Location
from weaverdata.proxy.mix import mix_plan

MIX_FILE = "mix.parquet"
MIX_SCHEMA = pa.schema([
    ("position", pa.int64()),
    ("kind", pa.string()),  # generation | understanding
    ("dataset", pa.string()),
    ("id", pa.string()),
    ("row", pa.string()),  # the sample as JSON (bytes fields as base64 strings)
])


class MixError(ValueError):
    pass


def proxy_samples(url: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(dataset, id, row) of every sample of a committed build-proxy output."""
    layout = OutputLayout(Location.of(url))
    summary = layout.read_json("summary.json")
    if summary is None or summary.get("recipe") != "build-proxy":
        raise MixError(f"{url} is not a finished build-proxy output (no summary.json of recipe build-proxy)")
    out = []
    for unit in sorted(layout.committed_units()):
        stats = layout.read_json(layout.stats(unit)) or {}
        for o in stats.get("outputs", []):
            with layout.loc.open(o["parquet"], "rb") as f:
                for row in pq.read_table(f, use_threads=False, pre_buffer=False).to_pylist():
                    out.append((url, row["id"], row))
    return out


def understanding_samples(url: str) -> list[tuple[str, str, dict[str, Any]]]:
    loc = Location.of(url)
    if not loc.exists():
        raise MixError(f"understanding dataset not found: {url}")
    if loc.fs.isdir(loc.root):
        import datasets

        try:
            ds = datasets.load_from_disk(url)
        except FileNotFoundError as exc:
            raise MixError(f"{url}: not an HF dataset saved with save_to_disk ({exc})") from exc
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
        rows = ds.with_format(None).to_list()
    elif url.endswith(".parquet"):
        with loc.fs.open(loc.root, "rb") as f:
            rows = pq.read_table(f, use_threads=False, pre_buffer=False).to_pylist()
    elif url.endswith((".jsonl", ".json")):
        rows = []
        with loc.fs.open(loc.root, "rt") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise MixError(f"{url} line {n}: not JSON ({exc})") from exc
    else:
        raise MixError(f"{url}: the understanding dataset must be JSON Lines, Parquet or an HF dataset folder")
    out = []
    for i, row in enumerate(rows):
        if not any(k in row for k in ("messages", "conversations", "question")):
            raise MixError(f"{url} row {i}: not a chat (needs messages, conversations or question)")
        out.append((url, str(row.get("id", i)), row))
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "save"):  # a PIL image from an HF dataset: its encoded bytes
        buf = io.BytesIO()
        value.save(buf, format=(getattr(value, "format", None) or "PNG"))
        return {"base64": base64.b64encode(buf.getvalue()).decode()}
    return value


def build_mix(proxy_urls: list[str], understanding_url: str, output: str, *, ratio: float = 5.0, seed: int = 0, license: str = "other") -> dict[str, Any]:
    generation = [s for u in proxy_urls for s in proxy_samples(u)]
    understanding = understanding_samples(understanding_url)
    plan = mix_plan(len(generation), len(understanding), ratio, seed)
    rows = []
    for pos, (kind, idx) in enumerate(plan):
        dataset, sid, row = (generation if kind == "generation" else understanding)[idx]
        rows.append({"position": pos, "kind": kind, "dataset": dataset, "id": sid, "row": json.dumps(_jsonable(row), ensure_ascii=False)})
    loc = Location.of(output)
    loc.check_writable()
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=MIX_SCHEMA), sink, compression="zstd")
    loc.write_bytes_atomic(MIX_FILE, sink.getvalue())
    n_gen = sum(1 for k, _ in plan if k == "generation")
    n_und = len(plan) - n_gen
    summary = {
        "recipe": "mix",
        "ratio_requested": ratio,
        "ratio_achieved": round(n_gen / n_und, 4) if n_und else None,
        "seed": seed,
        "generation": {"available": len(generation), "taken": n_gen, "sources": proxy_urls},
        "understanding": {"available": len(understanding), "taken": n_und, "source": understanding_url},
        "samples": len(plan),
        "file": posixpath.join(output, MIX_FILE),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    loc.write_bytes_atomic("summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    md = (f"# weaverdata mix\n\n- samples: **{len(plan)}** = generation {n_gen} + understanding {n_und} "
          f"(ratio {summary['ratio_achieved']} for {ratio} requested, seed {seed})\n"
          f"- generation available: {len(generation)} from {', '.join(proxy_urls)}\n"
          f"- understanding available: {len(understanding)} from {understanding_url}\n")
    loc.write_bytes_atomic("summary.md", md.encode())
    loc.write_bytes_atomic(CARD, mix_card(summary, MIX_SCHEMA, len(sink.getvalue()), license).encode())
    return summary
