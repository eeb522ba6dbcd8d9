"""`weaverdata validate` passes a good output and names the problem in a damaged one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from weaverdata.config import IngestConfig, load_config
from weaverdata.io.validate import validate_output
from weaverdata.job import run_job
from weaverdata.recipes import ingest

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def good_output(tmp_path_factory, photos_dir, ray_local):
    out = tmp_path_factory.mktemp("valid") / "out"
    cfg = load_config(IngestConfig, None, {"input.path": str(photos_dir), "output.path": str(out), "input.samples_per_shard": 6, "runtime.progress": False})
    run_job("ingest", cfg, ingest.process_unit)
    assert validate_output(str(out)).ok
    return out


@pytest.fixture
def damaged(good_output, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(good_output, copy)
    return copy


def first_tar(out):
    return sorted(out.glob("data/*/*.tar"))[0]


def test_deleted_shard_is_named(damaged):
    tar = first_tar(damaged)
    tar.unlink()
    report = validate_output(str(damaged))
    assert not report.ok and any(tar.name in e and "missing" in e for e in report.errors), report.errors


def test_truncated_tar_is_named(damaged):
    tar = first_tar(damaged)
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    report = validate_output(str(damaged))
    assert not report.ok and any(tar.name in e for e in report.errors), report.errors


def test_deleted_commit_marker_is_an_uncommitted_unit(damaged):
    stats = sorted(damaged.glob("stats/*.json"))[0]
    stats.unlink()
    report = validate_output(str(damaged))
    assert any("not committed" in e for e in report.errors), report.errors


def test_summary_whose_counts_do_not_add_up(damaged):
    summary = json.loads((damaged / "summary.json").read_text())
    summary["accepted"] += 1
    (damaged / "summary.json").write_text(json.dumps(summary))
    report = validate_output(str(damaged))
    assert any("accepted" in e for e in report.errors), report.errors


def test_rejects_rows_missing(damaged):
    stats_path = sorted(damaged.glob("stats/*.json"))[0]
    stats = json.loads(stats_path.read_text())
    stats["rejected"] += 1
    stats["inputs"] += 1
    stats_path.write_text(json.dumps(stats))
    report = validate_output(str(damaged))
    assert any("rows, its stats say" in e for e in report.errors), report.errors


def test_cli_exit_codes(good_output, damaged):
    ok = run_cli("validate", str(good_output))
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout
    first_tar(damaged).unlink()
    bad = run_cli("validate", str(damaged))
    assert bad.returncode == 1
    assert "missing" in bad.stderr


# -- reference samples: which model and prompt wrote each text ------------------------------------

ENGINE = {"model": "org/vlm-7b", "revision": "abc123"}


def written_by(prompt: str, **kw) -> dict:
    return {**ENGINE, "prompt_sha256": prompt * 64, **kw}


def refs_output(out, photos_dir, damage=None, validate_records: bool = True):
    """A small build-refs output made by the real writer and run bookkeeping (no models): a
    text-to-image sample and a single-reference sample, with the text provenance build-refs
    writes; `damage(records)` edits the records before they are written."""
    import hashlib

    from PIL import Image

    from weaverdata.config import RefsConfig
    from weaverdata.io.layout import OutputLayout
    from weaverdata.io.shards import Media, UnitWriter
    from weaverdata.io.sources import plan_units
    from weaverdata.job import prepare_output, summarise

    cfg = load_config(RefsConfig, None, {"input.path": str(photos_dir), "output.path": str(out), "engine.model": ENGINE["model"], "engine.revision": ENGINE["revision"], "runtime.progress": False})
    layout = OutputLayout.at(str(out))
    units = plan_units(cfg.input)
    assert len(units) == 1
    prepare_output(layout, "build-refs", cfg, units)
    data = {name: (photos_dir / f"{name}.png").read_bytes() for name in ("coffee", "chelsea")}

    def image(name: str) -> dict:
        with Image.open(photos_dir / f"{name}.png") as im:
            return {"sha256": hashlib.sha256(data[name]).hexdigest(), "source": f"{name}.png", "width": im.width, "height": im.height}

    records = [
        {"id": "t1", "task": "text_to_image", "target": image("coffee"), "references": [],
         "instruction": "", "description": "a cup of coffee on a saucer", "dynamics": "",
         "generated_by": {"description": written_by("d"), "instruction": None, "dynamics": None},
         "provenance": {"kind": "collection", "source": "coffee.png", "group": "collection", "times_s": []}},
        {"id": "s1", "task": "single_reference", "target": image("chelsea"), "references": [{**image("coffee"), "clip_cosine": 0.8, "phash_distance": 20}],
         "instruction": "show the cat from the reference lying down", "description": "a tabby cat", "dynamics": "",
         "generated_by": {"description": written_by("d"), "instruction": written_by("e"), "dynamics": None},
         "provenance": {"kind": "collection", "source": "chelsea.png", "group": "clique-0", "times_s": []}},
    ]
    if damage:
        damage(records)
    w = UnitWriter(layout, units[0].unit, "reference_sample", source=units[0].describe(), composite=True, validate_records=validate_records)
    w.add(records[0], {"target_image": Media("png", data["coffee"]), "reference_images": []}, group="text_to_image")
    w.add(records[1], {"target_image": Media("png", data["chelsea"]), "reference_images": [Media("png", data["coffee"])]}, group="single_reference-1ref")
    w.mark_used(["coffee", "chelsea"])
    w.commit()
    summarise(layout, "build-refs", cfg, "test", "2026-12-01T00:00:00+00:00", 1.0, 0, [], {})
    return out


def test_reference_samples_with_their_text_provenance_are_valid(tmp_path, photos_dir):
    report = validate_output(str(refs_output(tmp_path / "out", photos_dir)))
    assert report.ok and report.samples == 2, report.errors


def test_a_text_without_its_provenance_is_reported_in_tar_and_parquet(tmp_path, photos_dir):
    def unwritten(records):
        records[1]["generated_by"]["instruction"] = None  # fits the schema: the pairing is validate's check

    out = refs_output(tmp_path / "out", photos_dir, unwritten)
    report = validate_output(str(out))
    lacking = [e for e in report.errors if "sample s1: instruction is not empty but generated_by.instruction is null" in e]
    assert sorted(Path(e.split(": ")[0]).suffix for e in lacking) == [".parquet", ".tar"], report.errors
    proc = run_cli("validate", str(out))
    assert proc.returncode == 1 and "generated_by.instruction is null" in proc.stderr, proc.stderr


def test_a_record_missing_generated_by_is_reported(tmp_path, photos_dir):
    def dropped(records):
        del records[0]["generated_by"]

    report = validate_output(str(refs_output(tmp_path / "out", photos_dir, dropped, validate_records=False)))
    assert any("sample t1 breaks reference_sample" in e and "'generated_by' is a required property" in e for e in report.errors), report.errors
    assert any(".tar: sample t1: generated_by is missing" in e for e in report.errors), report.errors
    assert any(".parquet: sample t1: generated_by is missing" in e for e in report.errors), report.errors


@pytest.mark.parametrize("damage,expected", [
    (lambda r: r[0]["generated_by"].update(dynamics=written_by("f")), "sample t1: dynamics is empty but generated_by.dynamics is"),
    (lambda r: r[1]["generated_by"]["description"].update(model=""), "sample s1: generated_by.description.model is empty"),
    (lambda r: r[1]["generated_by"]["description"].update(prompt_sha256=""), "sample s1: generated_by.description.prompt_sha256 is not a sha256"),
    (lambda r: r[1]["generated_by"].update(instruction=written_by("e", model="org/other")), "sample s1: generated_by.instruction names 'org/other' revision 'abc123', but the run's engine is 'org/vlm-7b'"),
])
def test_text_provenance_that_does_not_fit_the_text_or_the_run_is_reported(tmp_path, photos_dir, damage, expected):
    report = validate_output(str(refs_output(tmp_path / "out", photos_dir, damage)))
    assert any(expected in e for e in report.errors), report.errors
