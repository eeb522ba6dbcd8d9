"""Image scorers on CLIP embeddings (weaverdata/models/scorers.py): heads saved as torch saves
them score as torch computes, a head of the wrong width is refused before the run, and in
build-refs (real Ray, the tiny RANDOM-WEIGHT open_clip) each scorer writes its column and its
threshold rejects images with score_<name>. Heads here have random weights: their scores mean
nothing, which is enough to test the plumbing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli, skimage_photo_files
from weaverdata.config import ClipConfig, ConfigError, RefsConfig, ScorerConfig, load_config
from weaverdata.models.scorers import ScoreHead, ScorerError, build_tiny_head, clip_width, load_heads, verdicts


def test_a_head_saved_by_torch_scores_as_torch_computes(tmp_path):
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    save_file(mlp.state_dict(), tmp_path / "mlp.safetensors")  # keys layers "0", "2", "4": nn.Sequential's own names
    linear = torch.nn.Linear(32, 1)
    save_file(linear.state_dict(), tmp_path / "linear.safetensors")  # a bare "weight" / "bias"
    x = np.random.default_rng(1).standard_normal((50, 32)).astype(np.float32)
    with torch.no_grad():
        want_mlp = mlp(torch.from_numpy(x))[:, 0].numpy()
        want_prob = torch.sigmoid(linear(torch.from_numpy(x)))[:, 0].numpy()
    head = ScoreHead.load(ScorerConfig(name="aesthetic", path=str(tmp_path / "mlp.safetensors"), activation="relu"))
    assert head.width == 32 and len(head.layers) == 3
    np.testing.assert_allclose(head.score(x), want_mlp, rtol=1e-5, atol=1e-5)
    prob = ScoreHead.load(ScorerConfig(name="watermark", path=str(tmp_path / "linear.safetensors"), output="sigmoid")).score(x)
    np.testing.assert_allclose(prob, want_prob, rtol=1e-5, atol=1e-6)
    assert ((prob > 0) & (prob < 1)).all()


def test_a_head_of_the_wrong_width_or_shape_is_refused_with_a_clear_message(tmp_path, tiny_models):
    assert clip_width(ClipConfig(model=str(tiny_models["clip"]))) == 64 and clip_width(ClipConfig(model="ViT-B-32")) == 512
    wide = ScorerConfig(name="aesthetic", path=str(build_tiny_head(tmp_path / "wide.safetensors", 768)))
    with pytest.raises(ScorerError, match=r"aesthetic: its head takes 768-wide CLIP embeddings, but .* makes 64-wide ones"):
        load_heads([wide], ClipConfig(model=str(tiny_models["clip"])))
    assert [h.width for h in load_heads([wide], ClipConfig(model="ViT-L-14"))] == [768]
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ScorerError, match="cannot read"):
        ScoreHead.load(ScorerConfig(name="x", path=str(tmp_path / "junk.safetensors")))
    with pytest.raises(ScorerError, match="no head at"):
        ScoreHead.load(ScorerConfig(name="x", path=str(tmp_path / "missing.safetensors")))
    with pytest.raises(ScorerError, match="64-wide embeddings, got shape"):
        load_heads([ScorerConfig(name="a", path=str(build_tiny_head(tmp_path / "a.safetensors", 64)))], ClipConfig(model=str(tiny_models["clip"])))[0].score(np.zeros((3, 32)))


def test_thresholds_keep_above_or_below_and_the_first_failing_scorer_names_the_reason(tmp_path):
    path = build_tiny_head(tmp_path / "lin.safetensors", 4, hidden=())
    emb = np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32)
    cfgs = [ScorerConfig(name="aesthetic", path=str(path), threshold=0.0, keep="above"), ScorerConfig(name="watermark", path=str(path), output="sigmoid", threshold=0.3, keep="below")]
    heads = [ScoreHead.load(c) for c in cfgs]
    scores, rejected = verdicts(heads, cfgs, emb)
    low, high = scores["aesthetic"] < 0, scores["watermark"] > 0.3
    assert 0 < low.sum() < 200 and 0 < high.sum() < 200
    by_row = {row: reason for row, reason, _ in rejected}
    assert set(by_row) == set(np.flatnonzero(low | high).tolist())
    assert all(by_row[r] == ("score_aesthetic" if low[r] else "score_watermark") for r in by_row)
    assert verdicts(heads, [c.model_copy(update={"threshold": None}) for c in cfgs], emb)[1] == []  # score only


def test_scorers_need_their_own_names(tmp_path):
    with pytest.raises(ConfigError, match="each needs its own name"):
        load_config(RefsConfig, None, {"engine.model": "m", "scorers": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]})


# -- in build-refs ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("scored-photos")
    for f in skimage_photo_files():
        shutil.copyfile(f, d / f.name)
    return d


def refs_args(photos: Path, out: Path, tiny_models, scorers: list[dict]) -> list[str]:
    return ["build-refs", "--config", "pipelines/refs-collection.yaml", "--input", str(photos), "--output", str(out), "--json",
            "--set", "text.description=false", "--set", "text.instruction=false", "--set", "text.dynamics=false", "--set", "text_to_image=none",
            "--set", f"clip.model={tiny_models['clip']}", "--set", "clip.pretrained=null", "--set", "runtime.progress=false",
            "--set", "grouping.edge_threshold=0.9", "--set", "band.low=0.5", "--set", "band.high=0.9999", "--set", f"scorers={json.dumps(scorers)}"]


@pytest.mark.slow
def test_build_refs_writes_each_score_and_rejects_by_threshold(photos, tmp_path, tiny_models):
    head = str(build_tiny_head(tmp_path / "aesthetic.safetensors", 64, hidden=(16, 8), seed=3))
    first = tmp_path / "scored"
    proc = run_cli(*refs_args(photos, first, tiny_models, [{"name": "aesthetic", "path": head, "activation": "relu"}]), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = pq.read_table(first / "embeddings" / "scores.parquet").to_pydict()
    assert len(scores["id"]) == len(set(scores["id"])) > 10 and np.isfinite(scores["aesthetic"]).all()
    assert "score_aesthetic" not in json.loads(proc.stdout)["rejected_by_reason"]  # no threshold: scores only
    # the same run with the threshold at the median: about half the images leave for the rejects, with their score
    threshold = float(np.median(scores["aesthetic"]))
    second = tmp_path / "filtered"
    proc = run_cli(*refs_args(photos, second, tiny_models, [{"name": "aesthetic", "path": head, "activation": "relu", "threshold": threshold}]), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    below = {i for i, s in zip(scores["id"], scores["aesthetic"]) if s < threshold}
    rejects = [r for p in sorted((second / "rejects").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    scored_out = {r["id"]: r for r in rejects if r["reason"] == "score_aesthetic"}
    assert set(scored_out) == below and all(r["stage"] == "score" and "aesthetic score" in r["detail"] for r in scored_out.values())
    assert summary["details"]["scores"]["by_scorer"]["aesthetic"]["rejected"] == len(below)
    samples = [r for p in sorted((second / "data").glob("*/*.parquet")) for r in pq.read_table(p, columns=["target", "references"]).to_pylist()]
    used = {s["target"]["source"] for s in samples} | {r["source"] for s in samples for r in s["references"]}
    assert samples and not used & {r["source"] for r in scored_out.values()}  # a rejected image is in no sample
    assert run_cli("validate", str(second)).returncode == 0
    (second / "embeddings" / "scores.parquet").unlink()  # validate checks the scores are there when scorers are configured
    proc = run_cli("validate", str(second))
    assert proc.returncode != 0 and "scores.parquet is missing" in proc.stdout + proc.stderr


def test_a_head_of_the_wrong_width_fails_the_command_at_once(photos, tmp_path, tiny_models):
    head = str(build_tiny_head(tmp_path / "wide.safetensors", 768))
    proc = run_cli(*refs_args(photos, tmp_path / "out", tiny_models, [{"name": "aesthetic", "path": head}]), timeout=300)
    assert proc.returncode == 2 and "its head takes 768-wide CLIP embeddings" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "work" / "prep").exists()  # before any stage ran
