"""The `weaverdata` command line (Typer). Every job command takes --config plus overrides."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer

from weaverdata import __version__
from weaverdata.config import ConfigError, IngestConfig, ProxyConfig, RefsConfig, load_config, parse_override

app = typer.Typer(
    name="weaverdata",
    help="Build textual-proxy interleaved documents and reference-guided image samples on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="recipe YAML (pipelines/NAME.yaml)")]
InputOpt = Annotated[Optional[str], typer.Option("--input", "-i", help="input file, folder or URL (overrides input.path)")]
OutputOpt = Annotated[Optional[str], typer.Option("--output", "-o", help="output folder or URL (overrides output.path)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override any config field: KEY.PATH=VALUE (repeatable)")]
RayOpt = Annotated[Optional[str], typer.Option("--ray-address", envvar="RAY_ADDRESS", help="join this Ray cluster instead of starting a local one")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="delete an existing output made with another config or input")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the run summary as JSON instead of a table")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="show Ray's and the engines' own logs live (they always go to OUTPUT/logs/)")]


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def _overrides(sets: list[str] | None, **named) -> dict:
    out = {}
    for text in sets or []:
        key, value = parse_override(text)
        out[key] = value
    for key, value in named.items():
        if value not in (None, False):
            out[key] = value
    return out


def _setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("WEAVERDATA_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _shutdown_ray() -> None:
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def _run(recipe: str, cfg, process_unit, as_json: bool, **job_kw) -> None:
    from weaverdata.engines.contracts import EngineUnavailable
    from weaverdata.engines.prompts import PromptError
    from weaverdata.io.sources import InputError
    from weaverdata.io.storage import StorageError
    from weaverdata.job import OutputConflict, render_summary, run_job
    from weaverdata.models.scorers import ScorerError
    from weaverdata.runtime import RuntimeError_

    # stdout carries the summary only (pipe --json into jq); Ray's forwarded worker logs and
    # every other line go to stderr while the job runs
    try:
        with contextlib.redirect_stdout(sys.stderr):
            try:
                summary = run_job(recipe, cfg, process_unit, command=" ".join(["weaverdata", *sys.argv[1:]]), **job_kw)
            finally:
                _shutdown_ray()
    except (InputError, StorageError, OutputConflict, RuntimeError_, EngineUnavailable, PromptError, ScorerError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary, indent=2) if as_json else render_summary(summary))
    typer.echo(f"summary: {cfg.output.path.rstrip('/')}/summary.json", err=True)
    if summary["status"] != "complete":
        failed = summary["units"]["failed"]
        reasons = Counter(f.get("error", "") for f in failed)
        why = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(3))
        _fail(f"run incomplete: {len(failed)} of {summary['units']['planned']} units failed ({why}); fix that and rerun the same command to redo only those", 1)


def _job_config(model, config, input, output, set_, ray_address, overwrite, verbose=False):
    _setup_logging()
    try:
        overrides = _overrides(set_, **{"input.path": input, "output.path": output, "runtime.ray_address": ray_address, "output.overwrite": overwrite,
                                        "runtime.verbose": verbose})
        return load_config(model, config, overrides)
    except ConfigError as exc:
        _fail(str(exc))


@app.command()
def ingest(
    config: ConfigOpt = None,
    input: InputOpt = None,
    output: OutputOpt = None,
    set_: SetOpt = None,
    ray_address: RayOpt = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Read images (folders, tars, JSONL/Parquet, HF datasets, video frames) into checked, hashed image shards."""
    from weaverdata.recipes import ingest as recipe

    cfg = _job_config(IngestConfig, config, input, output, set_, ray_address, overwrite, verbose)
    _run(recipe.RECIPE, cfg, recipe.process_unit, as_json)


@app.command("build-refs")
def build_refs(
    config: ConfigOpt = None,
    input: InputOpt = None,
    output: OutputOpt = None,
    set_: SetOpt = None,
    ray_address: RayOpt = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Mine reference-guided samples (target + references of one subject, with text) from videos, image collections or documents."""
    from weaverdata.recipes import build_refs as recipe

    cfg = _job_config(RefsConfig, config, input, output, set_, ray_address, overwrite, verbose)
    _run(recipe.RECIPE, cfg, recipe.process_unit, as_json, plan=recipe.plan_job, details_file=recipe.DETAILS)


@app.command("build-proxy")
def build_proxy(
    config: ConfigOpt = None,
    input: InputOpt = None,
    output: OutputOpt = None,
    set_: SetOpt = None,
    ray_address: RayOpt = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Build textual-proxy interleaved documents (<imagine>description</imagine><BOI> per image) from documents, images, image groups or text seeds."""
    from weaverdata.recipes import build_proxy as recipe

    cfg = _job_config(ProxyConfig, config, input, output, set_, ray_address, overwrite, verbose)
    _run(recipe.RECIPE, cfg, recipe.process_unit, as_json, plan=recipe.plan_job, details_file=recipe.DETAILS)


@app.command()
def mix(
    proxy: Annotated[list[str], typer.Option("--proxy", "-p", help="a build-proxy output folder (repeatable)")],
    understanding: Annotated[str, typer.Option("--understanding", "-u", help="image question-answer chats: JSON Lines, Parquet, or an HF dataset folder (save_to_disk)")],
    output: OutputOpt = None,
    ratio: Annotated[float, typer.Option(help="generation samples per understanding sample (Wan-Weaver: 5)")] = 5.0,
    seed: Annotated[int, typer.Option(help="the mix is the same for the same seed")] = 0,
    license: Annotated[str, typer.Option(help="license written into the mix's dataset card (README.md)")] = "other",
    as_json: JsonOpt = False,
) -> None:
    """Build the planner's training mix: proxy documents and understanding chats at a ratio (5:1 by default)."""
    from weaverdata.io.storage import StorageError
    from weaverdata.recipes.mix import MixError, build_mix

    if not output:
        _fail("no output given (--output PATH)")
    if ratio <= 0:
        _fail("--ratio must be > 0")
    try:
        summary = build_mix(proxy, understanding, output, ratio=ratio, seed=seed, license=license)
    except (MixError, StorageError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary, indent=2) if as_json else f"{summary['samples']} samples: {summary['generation']['taken']} generation + {summary['understanding']['taken']} understanding (ratio {summary['ratio_achieved']}) -> {summary['file']}")


train_app = typer.Typer(help="Train the planner or the visualizer on weaverdata shards (Ray Train).", no_args_is_help=True)
app.add_typer(train_app, name="train")

DataOpt = Annotated[Optional[str], typer.Option("--data", "-d", help="output folder of build-proxy / mix (planner) or build-refs (visualizer); local or URL")]
CkptOpt = Annotated[Optional[str], typer.Option("--output", "-o", help="checkpoint folder: checkpoints/, metrics.jsonl, summary.json")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", help="optimizer steps (overrides optim.steps)")]
TrainOverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="start over in a folder that holds another run")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="Ray Train workers (overrides train.workers)")]


def _train(trainer: str, model, default_config: str, config, data, output, steps, workers, set_, ray_address, overwrite, as_json) -> None:
    from weaverdata.io.storage import StorageError
    from weaverdata.runtime import RuntimeError_
    from weaverdata.train.data import DataError
    from weaverdata.train.loop import TrainError, render_summary, run_training

    try:
        overrides = _overrides(set_, **{"data.path": data, "output": output, "optim.steps": steps, "train.workers": workers, "runtime.ray_address": ray_address, "overwrite": overwrite})
        cfg = load_config(model, config or default_config, overrides)
    except ConfigError as exc:
        _fail(str(exc))
    try:
        with contextlib.redirect_stdout(sys.stderr):
            try:
                summary = run_training(trainer, cfg)
            finally:
                _shutdown_ray()
    except (TrainError, DataError, StorageError, RuntimeError_) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary, indent=2) if as_json else render_summary(summary))


@train_app.command("planner")
def train_planner(
    data: DataOpt = None,
    output: CkptOpt = None,
    config: ConfigOpt = None,
    steps: StepsOpt = None,
    workers: WorkersOpt = None,
    set_: SetOpt = None,
    ray_address: RayOpt = None,
    overwrite: TrainOverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune a causal LM on proxy documents (loss on assistant tokens, packed sequences, <BOI> accuracy)."""
    from weaverdata.train.config import PlannerTrainConfig

    _train("planner", PlannerTrainConfig, "train-planner", config, data, output, steps, workers, set_, ray_address, overwrite, as_json)


@train_app.command("visualizer")
def train_visualizer(
    data: DataOpt = None,
    output: CkptOpt = None,
    config: ConfigOpt = None,
    steps: StepsOpt = None,
    workers: WorkersOpt = None,
    set_: SetOpt = None,
    ray_address: RayOpt = None,
    overwrite: TrainOverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a reference-conditioned rectified-flow generator on reference samples (text-to-image, then single, then multi reference)."""
    from weaverdata.train.config import VisualizerTrainConfig

    _train("visualizer", VisualizerTrainConfig, "train-visualizer", config, data, output, steps, workers, set_, ray_address, overwrite, as_json)


@app.command()
def validate(
    output: Annotated[str, typer.Argument(help="output folder or URL to check")],
    as_json: JsonOpt = False,
) -> None:
    """Check an output folder against the schemas and inputs = accepted + rejected."""
    from weaverdata.io.validate import validate_output

    report = validate_output(output)
    if as_json:
        typer.echo(json.dumps({"ok": report.ok, "errors": report.errors, "warnings": report.warnings, "units": report.units, "samples": report.samples, "rejects": report.rejects}, indent=2))
    else:
        for w in report.warnings:
            typer.secho(f"warning: {w}", fg="yellow", err=True)
        for e in report.errors:
            typer.secho(f"invalid: {e}", fg="red", err=True)
        verdict = "valid" if report.ok else f"INVALID ({len(report.errors)} problems)"
        typer.echo(f"{output}: {verdict}: {report.units} units, {report.samples} samples, {report.rejects} rejects")
    _exit_now(0 if report.ok else 1)


@app.command()
def inspect(
    output: Annotated[str, typer.Argument(help="output folder or URL (s3://, gs://, ...) of a finished run")],
    report: Annotated[Optional[str], typer.Option("--report", "-r", help="where to write index.html and thumbs/ (default: OUTPUT/report for a local output, ./<name>-report for a remote one)")] = None,
    max_samples: Annotated[int, typer.Option(help="samples in the browser (spread over the groups)")] = 48,
    max_rejects: Annotated[int, typer.Option(help="rejects shown (spread over the reasons)")] = 48,
    as_json: JsonOpt = False,
) -> None:
    """Write an offline HTML report of an output: run summary, histograms, sample browser, rejects."""
    from weaverdata.io.storage import Location, StorageError
    from weaverdata.report.build import ReportError, build_report

    _setup_logging()
    if report is None:
        loc = Location.of(output)
        report = str(Path(output) / "report") if loc.is_local else f"{loc.root.rstrip('/').rsplit('/', 1)[-1] or 'output'}-report"
    try:
        result = build_report(output, report, max_samples=max_samples, max_rejects=max_rejects)
    except (ReportError, StorageError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result.__dict__, indent=2))
    else:
        missing = sum(result.missing_previews.values())
        typer.echo(f"report: {result.path} ({result.samples_shown} samples, {result.rejects_shown} rejects, {result.thumbnails} thumbnails" + (f", {missing} without preview" if missing else "") + ")")
    _exit_now(0)


def _exit_now(code: int) -> None:
    """Exit without interpreter teardown, once every result is printed and flushed.

    pyarrow's native thread pools can abort the process at teardown ("terminate called without
    an active exception", SIGABRT; apache/arrow#34314) after the work finished, turning a
    correct verdict into exit code -6. Only for commands that start no Ray (whose atexit
    hook must run)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


models_app = typer.Typer(help="Model utilities.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("tiny")
def models_tiny(
    out: Annotated[Path, typer.Option("--out", help="folder to write the tiny models into")] = Path("tiny-models"),
    seed: Annotated[int, typer.Option(help="random seed of the weights")] = 0,
) -> None:
    """Build tiny models with RANDOM weights (a VLM, a text LLM, an open_clip model, two scorer heads on its embeddings) that the real engines load."""
    from weaverdata.models.clip import TINY_CLIP_CFG, build_tiny_clip
    from weaverdata.models.scorers import build_tiny_head
    from weaverdata.models.tiny import build_all

    paths = {k: str(v) for k, v in build_all(out, seed=seed).items()}
    paths["clip"] = str(build_tiny_clip(out / "clip", seed=seed))
    width = TINY_CLIP_CFG["embed_dim"]
    paths["scorer_aesthetic"] = str(build_tiny_head(out / "scorers" / "aesthetic.safetensors", width, hidden=(16, 8), seed=seed))  # an MLP
    paths["scorer_watermark"] = str(build_tiny_head(out / "scorers" / "watermark.safetensors", width, hidden=(), seed=seed + 1))  # a linear head
    typer.echo(json.dumps(paths, indent=2))
    typer.echo(f"RANDOM WEIGHTS: these models are for tests and demos only (see {out}/README.md)", err=True)


@app.command()
def version() -> None:
    """Print the weaverdata version."""
    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
