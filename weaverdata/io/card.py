"""The dataset card every output folder gets: `README.md` with Hugging Face `datasets` YAML
metadata, so `datasets.load_dataset(OUT)` loads the samples (and, as config `rejects`, the
rejects) from the Parquet shards, and a hub upload shows a proper page.

`dataset_card` is pure (summary + Arrow schemas in, Markdown out); `write_card` reads what it
needs from a finished output folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import yaml

from weaverdata.io.layout import OutputLayout

CARD = "README.md"

CITATION = """```bibtex
@misc{wanweaver2026,
  title         = {Wan-Weaver},
  eprint        = {2603.25706},
  archivePrefix = {arXiv},
  note          = {CVPR 2026}
}
@misc{wegen2025,
  title         = {WeGen},
  eprint        = {2503.01115},
  archivePrefix = {arXiv}
}
```"""

ABOUT = {
    "ingest": ("checked, hashed images with their source captions", ["image-to-text"], ["weaverdata", "images"]),
    "build-refs": (
        "reference-guided image samples: a target image, zero or more reference images of the same subject, and the text that links them (instruction, dense description, dynamics)",
        ["text-to-image", "image-to-image"],
        ["weaverdata", "reference-guided-generation", "subject-consistency"],
    ),
    "build-proxy": (
        "textual-proxy interleaved documents: chats in which every image is replaced by <imagine>dense description</imagine><BOI>, with the images they stand for",
        ["image-text-to-text", "text-generation"],
        ["weaverdata", "interleaved-text-image", "textual-proxy"],
    ),
}


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def features_yaml(schema: pa.Schema) -> list[dict[str, Any]]:
    """The `dataset_info.features` list for an Arrow schema (image columns stay `image`)."""
    from datasets import Features

    return Features.from_arrow_schema(schema)._to_yaml_list()


def _front_matter(meta: dict[str, Any]) -> str:
    return f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000).rstrip()}\n---"


def mix_card(summary: dict[str, Any], schema: pa.Schema, num_bytes: int, license: str = "other") -> str:
    """The card of a `weaverdata mix` folder: its one file, `mix.parquet`, as the train split."""
    n = summary["samples"]
    meta = {
        "pretty_name": "weaverdata mix",
        "license": license,
        "task_categories": ["image-text-to-text", "text-generation"],
        "tags": ["weaverdata", "interleaved-text-image", "textual-proxy", "data-mixture"],
        "size_categories": [_size_category(n)],
        "configs": [{"config_name": "default", "default": True, "data_files": [{"split": "train", "path": "mix.parquet"}]}],
        "dataset_info": [{"config_name": "default", "features": features_yaml(schema), "splits": [{"name": "train", "num_bytes": num_bytes, "num_examples": n}]}],
    }
    g, u = summary["generation"], summary["understanding"]
    return f"""{_front_matter(meta)}

# weaverdata mix

A planner training mixture: **{n}** rows in training order (`position`), generation samples
(textual-proxy documents) and understanding samples at {summary["ratio_achieved"]} to 1
({summary["ratio_requested"]} requested, seed {summary["seed"]}). Each row references its sample
(`dataset`, `id`) and carries the record as JSON (`row`); images stay in the source folders.

- generation: {g["taken"]} of {g["available"]} from {", ".join(f"`{x}`" for x in g["sources"])}
- understanding: {u["taken"]} of {u["available"]} from `{u["source"]}`

## Load it

```python
from datasets import load_dataset

mix = load_dataset("path/to/this/folder", split="train")
```

## Citation

{CITATION}
"""


def dataset_card(summary: dict[str, Any], sample_schema: pa.Schema | None, reject_schema: pa.Schema | None, license: str = "other", sample_bytes: int = 0, reject_bytes: int = 0) -> str:
    """The card's Markdown. The schemas are those of the sample and reject Parquet files (None:
    there are none, and that config is left out); the byte counts are their Parquet sizes."""
    recipe = summary["recipe"]
    what, tasks, tags = ABOUT.get(recipe, (f"{recipe} output", [], ["weaverdata"]))
    samples = summary.get("samples", summary["accepted"])
    configs: list[dict[str, Any]] = []
    info: list[dict[str, Any]] = []
    if sample_schema is not None:
        configs.append({"config_name": "default", "default": True, "data_files": [{"split": "train", "path": "data/*/*.parquet"}]})
        info.append({"config_name": "default", "features": features_yaml(sample_schema), "splits": [{"name": "train", "num_bytes": sample_bytes, "num_examples": samples}]})
    if reject_schema is not None:
        configs.append({"config_name": "rejects", "data_files": [{"split": "train", "path": "rejects/*.parquet"}]})
        info.append({"config_name": "rejects", "features": features_yaml(reject_schema), "splits": [{"name": "train", "num_bytes": reject_bytes, "num_examples": summary["rejected"]}]})
    meta = {
        "pretty_name": f"weaverdata {recipe}",
        "license": license,
        "task_categories": tasks,
        "tags": tags,
        "size_categories": [_size_category(samples)],
        "configs": configs,
        "dataset_info": info,
    }
    groups = "\n".join(f"| `{g}` | {n} |" for g, n in summary["samples_by_group"].items()) or "| (none) | 0 |"
    reasons = "\n".join(f"| `{r}` | {n} |" for r, n in summary["rejected_by_reason"].items()) or "| (none) | 0 |"
    return f"""{_front_matter(meta)}

# weaverdata {recipe}

{what[0].upper() + what[1:]}. Made by weaverdata {summary["weaverdata_version"]}
with `{summary["command"]}` (run status: **{summary["status"]}**).

- inputs: {summary["inputs"]} = accepted {summary["accepted"]} + rejected {summary["rejected"]}
- samples: **{samples}** in the `train` split of the default config; rejects, with their reason, in config `rejects`
- config sha256: `{summary["config_sha256"]}` (the full config is in `summary.json` and `run.json`)

## Load it

```python
from datasets import load_dataset

samples = load_dataset("path/to/this/folder", split="train")            # or the hub repo id
rejects = load_dataset("path/to/this/folder", "rejects", split="train")
```

The same samples are in WebDataset tars next to the Parquet files (`data/<group>/part-*.tar`,
one `<id>.json` record plus its image files per sample), for `webdataset` or `weaverdata train`.
A shard counts only once its unit's `stats/part-*.json` (the commit marker) exists;
`weaverdata validate` checks the folder.

## Samples by group

| group | samples |
| --- | ---: |
{groups}

## Rejects by reason

| reason | count |
| --- | ---: |
{reasons}

## License

`{license}`: set it with `--set output.license=...` to the license of your inputs. The images keep
their sources' licenses; see each record's `source`.

## Citation

{CITATION}
"""


def _first_parquet_schema(layout: OutputLayout, rels: list[str]) -> pa.Schema | None:
    import pyarrow.parquet as pq

    for rel in rels:
        if layout.loc.exists(rel):
            with layout.loc.open(rel, "rb") as f:
                return pq.read_schema(f)
    return None


@dataclass
class CommittedFiles:
    """The Parquet files of an output's committed units, as their stats files name them."""

    shards: list[tuple[str, str, int]]  # (group, parquet path, samples), only shards with samples
    rejects: list[str]  # rejects files of units that rejected something
    shard_bytes: int


def committed_files(stats: list[dict[str, Any]]) -> CommittedFiles:
    shards, rejects, nbytes = [], [], 0
    for st in stats:
        for o in st.get("outputs", []):
            if o.get("parquet") and o.get("samples"):
                shards.append((o["group"], o["parquet"], int(o["samples"])))
                nbytes += int(o.get("parquet_bytes") or 0)
        if st.get("rejects_file") and st.get("rejected"):
            rejects.append(st["rejects_file"])
    return CommittedFiles(shards, rejects, nbytes)


def write_card(layout: OutputLayout, summary: dict[str, Any], stats: list[dict[str, Any]], license: str = "other") -> None:
    """Write OUT/README.md for a summarised run from its committed units' `stats` (schemas read
    from one shard each)."""
    files = committed_files(stats)
    reject_bytes = sum(int(layout.loc.fs.size(layout.loc.path(rel)) or 0) for rel in files.rejects)
    card = dataset_card(summary, _first_parquet_schema(layout, [rel for _, rel, _ in files.shards[:1]]), _first_parquet_schema(layout, files.rejects[:1]), license, files.shard_bytes, reject_bytes)
    layout.loc.write_bytes_atomic(CARD, card.encode())
