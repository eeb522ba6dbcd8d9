"""`weaverdata train planner` through the CLI on shards that build-proxy made from real photos with
the real vLLM engine (tiny RANDOM-WEIGHT models): the loss falls, <BOI> accuracy is reported, a
killed run resumes exactly, two Ray Train workers see every sample once per epoch, WebDataset and
Parquet feed the same batches, and a `weaverdata mix` output trains too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from weaverdata.io.storage import Location
from weaverdata.train.data import build_index, list_shards, split_eval
from weaverdata.train.loop import committed_checkpoints, step_dir

pytestmark = [pytest.mark.ray]

BASE = ["--set", "planner.max_seq_len=256", "--set", "train.checkpoint_every=10", "--set", "train.probe_every=10", "--set", "runtime.progress=false"]


def train_args(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "planner", "--data", str(data), "--output", str(out), "--steps", str(steps), "--json", *BASE, *extra]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference_run(proxy_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("planner") / "ckpt"
    proc = run_cli(*train_args(proxy_shards, out, 40), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout)


def test_loss_falls_and_boi_accuracy_is_reported(reference_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, summary = reference_run
    assert summary["steps"] == 40 and summary["workers"] == 1 and summary["status"] == "complete"
    assert summary["final_probe_loss"] < 0.8 * summary["first_probe_loss"], summary
    ev = summary["eval"]
    assert ev["boi_targets"] > 0 and 0.0 <= ev["boi_accuracy"] <= 1.0 and "open_accuracy" in ev
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(41))  # step 0: the fixed-batch loss before training
    assert all(r["loss"] > 0 and r["weight"] > 0 for r in rows[1:])
    assert rows[-1]["eval_boi_accuracy"] == ev["boi_accuracy"]
    # the checkpoint is a transformers folder: the tags are single special tokens of its tokenizer
    ckpt = out / "checkpoints" / "step-00000040"
    assert json.loads((ckpt / "state.json").read_text())["step"] == 40
    tok = AutoTokenizer.from_pretrained(ckpt / "model")
    model = AutoModelForCausalLM.from_pretrained(ckpt / "model")
    assert len(tok("<imagine>x</imagine><BOI>", add_special_tokens=False)["input_ids"]) == 4
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000030", "step-00000040"]  # keep_checkpoints=2
    assert "fixed-batch loss" in (out / "summary.md").read_text()


def kill_group(proc: subprocess.Popen) -> None:
    import psutil

    for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def test_a_killed_run_resumes_where_it_stopped(reference_run, proxy_shards, tmp_path):
    ref_out, _ = reference_run
    out = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *train_args(proxy_shards, out, 40)], cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None and not (out / "checkpoints" / "step-00000010" / "state.json").exists():
            time.sleep(0.05)
    finally:
        kill_group(proc)
    assert not (out / "summary.json").exists(), "the kill must land before the run ends"
    newest = max(committed_checkpoints(Location.of(str(out))))
    resumed_from = json.loads((out / step_dir(newest) / "state.json").read_text())["step"]
    assert 10 <= resumed_from < 40
    again = run_cli(*train_args(proxy_shards, out, 40), timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints'}" in again.stderr
    rows, ref = metrics(out), metrics(ref_out)
    assert [r["step"] for r in rows] == list(range(41)), "one row per step: rows the killed run wrote after its checkpoint are gone"
    k = resumed_from + 1
    assert rows[k]["loss"] == pytest.approx(ref[k]["loss"], rel=1e-6), (k, rows[k], ref[k])
    assert rows[40]["loss"] == pytest.approx(ref[40]["loss"], rel=1e-5)


def test_two_workers_see_every_sample_once_per_epoch(proxy_shards, tmp_path):
    out = tmp_path / "ckpt"
    proc = run_cli(*train_args(proxy_shards, out, 12, "--workers", "2", "--set", "train.log_sample_ids=true", "--set", "train.batch_size=1", "--set", "planner.max_seq_len=160"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["workers"] == 2
    index = build_index(str(proxy_shards), list_shards(str(proxy_shards)))
    train, held_out = split_eval(index, 0.1, 64)
    by_epoch: dict[int, Counter] = {}
    by_rank_epoch: dict[tuple[int, int], set] = {}
    for rank in (0, 1):
        for line in (out / "sample_ids" / f"rank-{rank}.jsonl").read_text().splitlines():
            row = json.loads(line)
            by_epoch.setdefault(row["epoch"], Counter()).update(row["ids"])
            by_rank_epoch.setdefault((rank, row["epoch"]), set()).update(row["ids"])
    last = max(by_epoch)
    complete = [e for e in by_epoch if e < last]
    assert len(complete) >= 2, by_epoch
    for e in complete:
        assert by_epoch[e] == Counter(train.ids), f"epoch {e}: each training id exactly once"
        assert not by_rank_epoch[(0, e)] & by_rank_epoch[(1, e)]
        assert abs(len(by_rank_epoch[(0, e)]) - len(by_rank_epoch[(1, e)])) <= 1
    assert not set(held_out.ids) & set().union(*by_epoch.values())


def test_webdataset_and_parquet_feed_the_same_batches_and_a_mix_trains(proxy_shards, tmp_path):
    local = ["--set", "train.executor=local"]
    runs = {}
    for fmt in ("parquet", "webdataset"):
        proc = run_cli(*train_args(proxy_shards, tmp_path / fmt, 3, *local, "--set", f"data.format={fmt}"), timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[fmt] = metrics(tmp_path / fmt)
    assert [r["loss"] for r in runs["parquet"][1:]] == pytest.approx([r["loss"] for r in runs["webdataset"][1:]], rel=1e-6)

    understanding = tmp_path / "vqa.jsonl"
    understanding.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What colour is object {i}?", "answer": "It is blue."}) + "\n" for i in range(4)))
    mixed = tmp_path / "mix"
    made = run_cli("mix", "--proxy", str(proxy_shards), "--understanding", str(understanding), "--output", str(mixed), "--ratio", "5")
    assert made.returncode == 0, made.stderr[-2000:]
    proc = run_cli(*train_args(mixed, tmp_path / "on-mix", 4, *local, "--set", "train.log_sample_ids=true"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert not any(k.startswith("skipped") for k in summary["counters"]), summary["counters"]
    seen = [i for line in (tmp_path / "on-mix" / "sample_ids" / "rank-0.jsonl").read_text().splitlines() for i in json.loads(line)["ids"]]
    assert any(i.endswith(("-q0", "-q1", "-q2", "-q3")) for i in seen), "understanding chats are trained on"


def test_wrong_data_and_changed_config_fail_clearly(proxy_shards, refs_shards, tmp_path):
    local = ["--set", "train.executor=local"]
    wrong = run_cli(*train_args(refs_shards, tmp_path / "a", 2, *local))
    assert wrong.returncode == 2 and "reference_sample" in wrong.stderr and "proxy_document" in wrong.stderr
    missing = run_cli(*train_args(tmp_path / "nowhere", tmp_path / "b", 2, *local))
    assert missing.returncode == 2 and "not found" in missing.stderr
    first = run_cli(*train_args(proxy_shards, tmp_path / "c", 2, *local))
    assert first.returncode == 0, first.stderr[-2000:]
    other = run_cli(*train_args(proxy_shards, tmp_path / "c", 2, *local, "--set", "optim.lr=0.5"))
    assert other.returncode == 2 and "different config" in other.stderr and "--overwrite" in other.stderr
    typo = run_cli(*train_args(proxy_shards, tmp_path / "d", 2, "--set", "planner.max_seqlen=5"))
    assert typo.returncode == 2 and "max_seqlen" in typo.stderr


def test_data_and_checkpoints_on_an_object_store(proxy_shards):
    """Shards read from, and checkpoints written to, a filesystem with no rename (fsspec's
    in-memory one, the code path of S3 and GCS; issue 7 runs it against an S3 server)."""
    import fsspec

    from weaverdata.config import load_config
    from weaverdata.train.config import PlannerTrainConfig
    from weaverdata.train.loop import run_training

    fs = fsspec.filesystem("memory")
    fs.put(str(proxy_shards) + "/", "/wd-train/data/", recursive=True)
    try:
        settings = {"data.path": "memory://wd-train/data", "output": "memory://wd-train/ckpt", "train.executor": "local", "train.checkpoint_every": 2, "planner.max_seq_len": 256, "train.probe_every": 0}
        first = run_training("planner", load_config(PlannerTrainConfig, "train-planner", {**settings, "optim.steps": 4, "train.stop_after_steps": 2}))
        assert first["status"] == "stopped" and fs.exists("/wd-train/ckpt/checkpoints/step-00000002/state.json")
        assert fs.exists("/wd-train/ckpt/checkpoints/step-00000002/model/model.safetensors")
        second = run_training("planner", load_config(PlannerTrainConfig, "train-planner", {**settings, "optim.steps": 4}))
        assert second["status"] == "complete" and second["steps"] == 4
        rows = [json.loads(line) for line in fs.cat("/wd-train/ckpt/metrics.jsonl").decode().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3, 4]
        assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("/wd-train/ckpt/checkpoints", detail=False)) == ["step-00000002", "step-00000004"]
    finally:
        fs.rm("/wd-train", recursive=True)
