"""`weaverdata train visualizer` through the CLI on shards that build-refs made from real photos
(real open_clip and vLLM, tiny RANDOM-WEIGHT models): the rectified-flow loss falls, the
curriculum goes text-to-image then single then multi reference, sample images are saved at each
checkpoint, a resumed run repeats an uninterrupted one, and both shard formats read the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run_cli
from weaverdata.train.data import ShardReader, build_index, list_shards

pytestmark = [pytest.mark.ray]


def train_args(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "visualizer", "--data", str(data), "--output", str(out), "--steps", str(steps), "--json", "--set", "runtime.progress=false", *extra]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_along_the_curriculum_with_sample_images(refs_shards, tmp_path):
    out = tmp_path / "ckpt"
    proc = run_cli(*train_args(refs_shards, out, 60, "--set", "train.checkpoint_every=30", "--set", "train.probe_every=10", "--set", "train.log_sample_ids=true"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["final_probe_loss"] < 0.8 * summary["first_probe_loss"], summary
    assert summary["eval"]["samples"] > 0 and summary["eval"]["loss"] > 0

    index = build_index(str(refs_shards), list_shards(str(refs_shards)), "task")
    task_of = dict(zip(index.ids, index.kinds))
    stages = []
    for line in (out / "sample_ids" / "rank-0.jsonl").read_text().splitlines():
        row = json.loads(line)
        allowed = set(row["stage"].split("+"))
        assert {task_of[i] for i in row["ids"]} <= allowed, row
        if not stages or stages[-1] != row["stage"]:
            stages.append(row["stage"])
    assert stages[0] == "text_to_image" and stages[-1].endswith("multi_reference") and len(stages) == 3, stages

    for step in (30, 60):
        ckpt = out / "checkpoints" / f"step-{step:08d}"
        shown = json.loads((ckpt / "samples.json").read_text())["samples"]
        with Image.open(ckpt / "samples.png") as im:
            assert im.size == (4 * 32 * (4 + 2), 4 * 32 * len(shown))  # max_refs + generated + target, x4
            assert len(set(im.convert("L").getdata())) > 20  # real pictures, not a blank
        assert (ckpt / "model" / "weights.pt").exists() and json.loads((ckpt / "model" / "model.json").read_text())["class"].endswith("TinyDiT")


def test_a_resumed_run_repeats_an_uninterrupted_one(refs_shards, tmp_path):
    local = ["--set", "train.executor=local", "--set", "train.checkpoint_every=4"]
    whole = run_cli(*train_args(refs_shards, tmp_path / "whole", 12, *local), timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    part = run_cli(*train_args(refs_shards, tmp_path / "part", 12, *local, "--set", "train.stop_after_steps=8"), timeout=600)
    assert part.returncode == 0, part.stderr[-2000:]
    assert json.loads(part.stdout)["status"] == "stopped" and sorted(p.name for p in (tmp_path / "part" / "checkpoints").iterdir()) == ["step-00000004", "step-00000008"]
    rest = run_cli(*train_args(refs_shards, tmp_path / "part", 12, *local), timeout=600)
    assert rest.returncode == 0 and "resumed from" in rest.stderr, rest.stderr[-2000:]
    a, b = metrics(tmp_path / "whole"), metrics(tmp_path / "part")
    assert [r["step"] for r in b] == list(range(13))
    assert [r["loss"] for r in b[9:]] == pytest.approx([r["loss"] for r in a[9:]], rel=1e-6)  # steps 9-12 after the resume


def test_parquet_and_webdataset_shards_give_the_same_samples(refs_shards):
    url = str(refs_shards)
    shards = list_shards(url)
    pq_reader, tar_reader = ShardReader(url, "parquet"), ShardReader(url, "webdataset")
    for shard in shards:
        from_pq, from_tar = pq_reader.shard(shard), tar_reader.shard(shard)
        assert [s.id for s in from_pq] == [s.id for s in from_tar]
        for a, b in zip(from_pq, from_tar):
            assert a.media["target_image"] == b.media["target_image"] and a.media["target_image"][:2] in (b"\xff\xd8", b"\x89P")
            assert a.media["reference_images"] == b.media["reference_images"]
            assert a.record["task"] == b.record["task"] and len(b.media["reference_images"]) == len(a.record["references"])
