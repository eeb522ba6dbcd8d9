"""`weaverdata mix`: proxy documents and understanding chats at a ratio, the same for a seed."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli
from weaverdata.io.layout import OutputLayout
from weaverdata.io.shards import UnitWriter


def proxy_output(root, n: int) -> str:
    """A committed build-proxy output of n text-seed documents (written by the real writer)."""
    layout = OutputLayout.at(str(root))
    w = UnitWriter(layout, "00000", "proxy_document", source="test", composite=True)
    for i in range(n):
        rec = {"id": f"doc{i:04d}", "recipe": "text_seed", "shape": "text_proxy", "source": f"seeds.jsonl#line={i}",
               "tags": {"open": "<imagine>", "close": "</imagine>", "boi": "<BOI>"}, "images": [],
               "messages": [{"role": "user", "content": f"Topic {i}"}, {"role": "assistant", "content": f"Text {i}. <imagine>a photo of topic {i} in soft light</imagine><BOI>"}]}
        w.add(rec, {"input_images": []}, group="text-seed-text-proxy")
    w.mark_used([f"seed{i}" for i in range(n)])
    w.commit()
    (root / "summary.json").write_text(json.dumps({"recipe": "build-proxy"}))
    return str(root)


@pytest.fixture
def inputs(tmp_path):
    gen = proxy_output(tmp_path / "proxy", 103)
    und = tmp_path / "vqa.jsonl"
    und.write_text("\n".join(json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": "<image:0> What is it?"}, {"role": "assistant", "content": f"Thing {i}."}]}) for i in range(50)) + "\n")
    return gen, str(und)


def mixed(out) -> list[dict]:
    return pq.read_table(out / "mix.parquet").to_pylist()


def test_mix_has_the_ratio_within_one_sample_and_is_seeded(inputs, tmp_path):
    gen, und = inputs
    res = run_cli("mix", "--proxy", gen, "--understanding", und, "--output", str(tmp_path / "m1"), "--seed", "7", "--json")
    assert res.returncode == 0, res.stderr
    rows = mixed(tmp_path / "m1")
    g = sum(r["kind"] == "generation" for r in rows)
    u = len(rows) - g
    assert g == 103 and abs(u - g / 5) <= 1
    assert [r["position"] for r in rows] == list(range(len(rows)))
    assert len({(r["dataset"], r["id"]) for r in rows}) == len(rows)
    assert json.loads(rows[0]["row"])["messages"]
    assert run_cli("mix", "--proxy", gen, "--understanding", und, "--output", str(tmp_path / "m2"), "--seed", "7").returncode == 0
    assert mixed(tmp_path / "m2") == rows
    assert run_cli("mix", "--proxy", gen, "--understanding", und, "--output", str(tmp_path / "m3"), "--seed", "8").returncode == 0
    assert [r["id"] for r in mixed(tmp_path / "m3")] != [r["id"] for r in rows]
    summary = json.loads((tmp_path / "m1" / "summary.json").read_text())
    assert summary["generation"]["taken"] == g and summary["understanding"]["taken"] == u
    # its dataset card makes it loadable with HF datasets, rows in training order
    from datasets import load_dataset

    ds = load_dataset(str(tmp_path / "m1"), cache_dir=str(tmp_path / "hf-cache"))
    assert list(ds) == ["train"] and ds["train"].num_rows == len(rows)
    assert ds["train"]["id"] == [r["id"] for r in rows]


def test_short_understanding_pool_limits_the_generation_side(inputs, tmp_path):
    gen, _ = inputs
    und = tmp_path / "few.jsonl"
    und.write_text("\n".join(json.dumps({"question": f"q{i}?", "answer": "a"}) for i in range(4)) + "\n")
    assert run_cli("mix", "--proxy", gen, "--understanding", str(und), "--output", str(tmp_path / "m"), "--ratio", "5").returncode == 0
    rows = mixed(tmp_path / "m")
    u = sum(r["kind"] == "understanding" for r in rows)
    assert u == 4 and abs((len(rows) - u) - 5 * u) <= 5


def test_hf_dataset_with_images(inputs, tmp_path):
    import datasets
    from PIL import Image

    gen, _ = inputs
    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (32, 32), (i, 0, 0)) for i in range(10)], "question": [f"q{i}" for i in range(10)], "answer": ["a"] * 10},
                                    features=datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "hf"))
    assert run_cli("mix", "--proxy", gen, "--understanding", str(tmp_path / "hf"), "--output", str(tmp_path / "m"), "--ratio", "10").returncode == 0
    rows = [r for r in mixed(tmp_path / "m") if r["kind"] == "understanding"]
    assert len(rows) == 10 and "base64" in json.dumps(json.loads(rows[0]["row"])["image"])


def test_bad_inputs_fail_with_a_message(inputs, tmp_path):
    gen, und = inputs
    res = run_cli("mix", "--proxy", str(tmp_path), "--understanding", und, "--output", str(tmp_path / "m"))
    assert res.returncode == 2 and "not a finished build-proxy output" in res.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no chat"}\n')
    res = run_cli("mix", "--proxy", gen, "--understanding", str(bad), "--output", str(tmp_path / "m"))
    assert res.returncode == 2 and "not a chat" in res.stderr
