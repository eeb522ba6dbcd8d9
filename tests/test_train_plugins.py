"""Users' own models plug into both trainers as `module:Class`; the stage still owns data,
loop, checkpoints and resume."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.ray]


def test_planner_trains_a_plugged_in_model(proxy_shards, tiny_models, tmp_path):
    out = tmp_path / "ckpt"
    args = ["train", "planner", "--data", str(proxy_shards), "--output", str(out), "--steps", "20", "--json",
            "--set", "train.executor=local", "--set", "planner.model=tests.train_plugins:GruLM", "--set", f"planner.tokenizer={tiny_models['llm']}",
            "--set", "train.probe_every=10", "--set", "optim.lr=0.01", "--set", "train.checkpoint_every=10"]
    proc = run_cli(*args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["final_probe_loss"] < 0.8 * summary["first_probe_loss"]
    assert (out / "checkpoints" / "step-00000020" / "model" / "weights.pt").exists()
    assert "boi_accuracy" in summary["eval"]
    no_tok = run_cli("train", "planner", "--data", str(proxy_shards), "--output", str(tmp_path / "t"), "--set", "train.executor=local", "--set", "planner.model=tests.train_plugins:GruLM")
    assert no_tok.returncode == 2 and "needs planner.tokenizer" in no_tok.stderr
    missing = run_cli("train", "planner", "--data", str(proxy_shards), "--output", str(tmp_path / "m"), "--set", "train.executor=local", "--set", "planner.model=tests.train_plugins:Nope", "--set", f"planner.tokenizer={tiny_models['llm']}")
    assert missing.returncode == 2 and "cannot import tests.train_plugins:Nope" in missing.stderr


def test_visualizer_trains_a_plugged_in_model(refs_shards, tmp_path):
    out = tmp_path / "ckpt"
    proc = run_cli("train", "visualizer", "--data", str(refs_shards), "--output", str(out), "--steps", "30", "--json",
                   "--set", "train.executor=local", "--set", "visualizer.model=tests.train_plugins:ConvFlow", "--set", "visualizer.model_kwargs={}",
                   "--set", "train.probe_every=10", "--set", "optim.lr=0.01", "--set", "train.checkpoint_every=30", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["final_probe_loss"] < summary["first_probe_loss"]
    model = json.loads((out / "checkpoints" / "step-00000030" / "model" / "model.json").read_text())
    assert model["class"] == "tests.train_plugins:ConvFlow" and (out / "checkpoints" / "step-00000030" / "samples.png").exists()
