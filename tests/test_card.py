"""Every output folder gets a dataset card (README.md with HF `datasets` YAML), so
`datasets.load_dataset(OUT)` loads its samples, and config `rejects` its rejects."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from datasets import Image, List, load_dataset

from weaverdata.io.card import dataset_card


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_metadata_names_configs_features_and_counts():
    summary = {
        "recipe": "build-refs", "weaverdata_version": "0.1.0", "command": "weaverdata build-refs ...", "status": "complete",
        "inputs": 10, "accepted": 7, "rejected": 3, "samples": 4, "config_sha256": "ab" * 32,
        "samples_by_group": {"text_to_image-jpg": 4}, "rejected_by_reason": {"too_small": 3},
    }
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    samples = pa.schema([("id", pa.string()), ("target_image", image), ("reference_images", pa.list_(image))], metadata={b"huggingface": json.dumps({"info": {"features": {"id": {"dtype": "string", "_type": "Value"}, "target_image": {"_type": "Image"}, "reference_images": {"feature": {"_type": "Image"}, "_type": "List"}}}}).encode()})
    rejects = pa.schema([("id", pa.string()), ("reason", pa.string())])
    meta = front_matter(dataset_card(summary, samples, rejects, "cc-by-4.0", 1000, 10))
    assert meta["license"] == "cc-by-4.0"
    assert [c["config_name"] for c in meta["configs"]] == ["default", "rejects"]
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "data/*/*.parquet"}]
    info = {i["config_name"]: i for i in meta["dataset_info"]}
    assert info["default"]["splits"] == [{"name": "train", "num_bytes": 1000, "num_examples": 4}]
    assert info["rejects"]["splits"][0]["num_examples"] == 3
    feats = {f["name"]: f for f in info["default"]["features"]}
    assert feats["target_image"]["dtype"] == "image"
    # no rejects: no rejects config (its data_files pattern would match nothing and fail to load)
    meta = front_matter(dataset_card({**summary, "rejected": 0, "rejected_by_reason": {}}, samples, None))
    assert [c["config_name"] for c in meta["configs"]] == ["default"]


def _load(out: Path, tmp_path: Path, config: str | None = None):
    return load_dataset(str(out), config, cache_dir=str(tmp_path / "hf-cache"))


def _loaded_as_its_summary_says(out: Path, tmp_path: Path):
    """load_dataset on an output folder: one train split of the summary's samples, and a rejects
    config of its rejected inputs; returns (summary, train, rejects)."""
    summary = json.loads((out / "summary.json").read_text())
    ds = _load(out, tmp_path)
    assert list(ds) == ["train"]
    train = ds["train"]
    assert train.num_rows == summary["samples"] > 0
    rejects = _load(out, tmp_path, "rejects")["train"]
    assert rejects.num_rows == summary["rejected"]
    return summary, train, rejects


@pytest.mark.ray
def test_load_dataset_on_a_build_refs_output(refs_shards, tmp_path):
    summary, train, rejects = _loaded_as_its_summary_says(refs_shards, tmp_path)
    assert isinstance(train.features["target_image"], Image)
    assert isinstance(train.features["reference_images"], List) and isinstance(train.features["reference_images"].feature, Image)
    tasks = {t: train["task"].count(t) for t in set(train["task"])}
    assert tasks == summary["details"]["samples_by_task"]
    row = train[0]
    assert row["target_image"].size == (row["target"]["width"], row["target"]["height"])
    assert set(rejects["reason"]) == set(summary["rejected_by_reason"])


@pytest.mark.ray
def test_load_dataset_on_a_build_proxy_output(proxy_shards, tmp_path):
    _, train, _ = _loaded_as_its_summary_says(proxy_shards, tmp_path)
    assert isinstance(train.features["input_images"], List) and isinstance(train.features["input_images"].feature, Image)
    row = train[0]
    assert row["messages"] and row["messages"][-1]["role"] == "assistant"
    assert "<BOI>" in row["messages"][-1]["content"] or any("<BOI>" in m["content"] for m in row["messages"])
    card = (proxy_shards / "README.md").read_text()
    assert "2603.25706" in card and "2503.01115" in card
