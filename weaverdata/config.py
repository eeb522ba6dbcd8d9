"""Typed configuration: pydantic models loaded from `pipelines/*.yaml`, overridden from the CLI.

A recipe's config is one model; every section forbids unknown keys, so a typo fails at load time
with the key and the file named. Command-line overrides address any field by its dotted name
(`--set image.max_pixels=5000000`); their values are parsed as YAML scalars.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PIPELINES_DIR = Path(__file__).resolve().parent / "pipeline_files"  # -> the repo's pipelines/


class ConfigError(ValueError):
    """A config file or override that does not fit the recipe's model."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RuntimeConfig(Strict):
    """Where and how the job runs. Not part of the output's identity (excluded from its hash)."""

    ray_address: str | None = Field(
        None, description="join this Ray cluster (also RAY_ADDRESS); none starts a local Ray"
    )
    num_cpus: int | None = Field(
        None, description="logical CPUs for a local Ray (default: max(4, cores))"
    )
    object_store_memory: int | None = Field(
        None, ge=75 * 2**20, description="object store bytes for a local Ray (default: Ray's, 30 % of RAM); a cluster's is set by `ray start --object-store-memory`"
    )
    task_cpus: float = Field(0.5, gt=0, description="CPUs each work-unit task asks for")
    max_in_flight: int | None = Field(
        None, ge=1, description="work units submitted at once (default: 2 x cluster CPUs)"
    )
    max_retries: int = Field(3, ge=0, description="Ray retries of a unit whose worker died")
    progress: bool = True
    verbose: bool = Field(False, description="show Ray's, Ray Data's and the engines' own logs on the console as they come (they always go to OUTPUT/logs/)")


class InputConfig(Strict):
    path: str | None = Field(None, description="file, folder or URL (fsspec); a hub dataset name with format=hf")
    format: Literal["auto", "images", "webdataset", "jsonl", "parquet", "hf", "video", "warc"] = "auto"
    samples_per_shard: int = Field(1000, ge=1, description="images per work unit for folders of images; rows per unit for Parquet and HF datasets")
    jsonl_bytes_per_shard: int = Field(64 * 2**20, ge=1024, description="byte range per work unit for JSON Lines")
    image_field: str | None = Field(None, description="column holding the image (path, URL, bytes or {bytes, path}); auto-detected when unset")
    caption_field: str | None = Field(None, description="column holding text that comes with the image; auto-detected when unset")
    hf_split: str = "train"
    # what an input may make weaverdata read (weaverdata/io/policy.py, docs/security.md)
    allow_outside_root: bool = Field(False, description="let image references (paths, file:// URLs, symlinks) resolve outside the input root")
    fetch_remote: bool = Field(False, description="fetch remote image references (http(s)://, s3://, ...); off: they are rejected remote_not_fetched")
    fetch_timeout_s: float = Field(10.0, gt=0, description="a whole remote fetch, redirects included")
    fetch_max_bytes: int = Field(32 * 2**20, ge=1024, description="a remote image (or data: URI) larger than this is rejected fetch_too_large")
    fetch_retries: int = Field(2, ge=0, description="retries (exponential backoff) of a fetch that timed out or failed with a connection error or HTTP 5xx/429")
    fetch_allow_private: bool = Field(False, description="let http(s) references reach private, loopback and link-local addresses")
    fetch_allow_hosts: list[str] = Field(default_factory=list, description="hosts exempt from the private-address refusal (an internal mirror)")


class ImageConfig(Strict):
    max_pixels: int = Field(100_000_000, ge=1, description="decompression-bomb limit: larger images are rejected before any pixel is decoded")
    resize_max_side: int | None = Field(None, ge=16, description="downsize larger images (re-encodes); unset keeps the source bytes unchanged")
    resize_format: Literal["jpeg", "png", "webp"] = "jpeg"
    resize_quality: int = Field(95, ge=1, le=100)


class VideoConfig(Strict):
    fps: float = Field(1.0, gt=0, description="frames sampled per second of video")
    max_frames: int | None = Field(None, ge=1, description="at most this many frames per video")
    frame_format: Literal["jpeg", "png", "webp"] = Field("jpeg", description="decoded frames have no source bytes and are encoded in this format")
    frame_quality: int = Field(95, ge=1, le=100)


class OutputConfig(Strict):
    path: str | None = Field(None, description="output folder (local, s3://, gs://, ...)")
    overwrite: bool = Field(False, description="delete an existing output made with another config instead of refusing")
    row_group_rows: int = Field(256, ge=1, description="Parquet row group size in rows")
    row_group_bytes: int = Field(16 * 2**20, ge=2**16, description="a Parquet row group also ends once its media (image) bytes reach this")
    validate_records: bool = Field(True, description="check every record against its JSON Schema before writing")
    license: str = Field("other", description="license written into the output's dataset card (README.md); not part of the output's identity")


class SamplingConfig(Strict):
    """vLLM / OpenAI sampling parameters (part of every cached result's key)."""

    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(192, ge=1)
    repetition_penalty: float = Field(1.05, gt=0)
    stop: list[str] = Field(default_factory=list, description="strings that end a generation (not included in the text)")
    seed: int = 0


class OpenAIConfig(Strict):
    base_url: str = Field("http://127.0.0.1:8000/v1", description="any OpenAI-compatible endpoint (vllm serve, SGLang, a hosted API)")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the key (empty key if unset)")
    served_model: str | None = Field(None, description="model name the server knows (default: engine.model)")
    max_concurrency: int = Field(16, ge=1, description="requests in flight at once")
    timeout_s: float = Field(120.0, gt=0, description="per request; a request that times out becomes a reject")
    max_retries: int = Field(3, ge=0, description="retries of a failed connection, with exponential backoff")
    backoff_s: float = Field(1.0, ge=0)


class EngineConfig(Strict):
    """The captioning engine: which backend serves which model, and how hard to drive it."""

    backend: Literal["vllm", "openai", "transformers"] = "vllm"
    model: str | None = Field(None, description="hub id or local path")
    revision: str | None = Field(None, description="pinned model revision (hub models)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: GPUs if the cluster has them")
    max_model_len: int = Field(4096, ge=64, description="always set: an unset length makes vLLM reserve memory for the model's maximum (ray#58463)")
    max_num_seqs: int = Field(64, ge=1, description="sequences the engine runs at once")
    tensor_parallel_size: int = Field(1, ge=1)
    replicas: int = Field(1, ge=1, description="engine replicas (one per actor) for data parallelism")
    batch_size: int = Field(32, ge=1, description="rows per batch sent to an engine replica")
    cpus_per_replica: float = Field(1.0, gt=0, description="CPUs per engine replica (CPU inference uses them all)")
    prep_cpus: float = Field(0.25, gt=0, description="CPUs per image-preparation task")
    max_pixels: int = Field(448 * 448, ge=28 * 28, description="images are downsized to at most this many pixels before the engine (bounds vision tokens)")
    dtype: str = "auto"
    threads: int | None = Field(None, ge=1, description="OpenMP threads of each vLLM engine on CPU (vllm backend); default: an engine's share of a node's cores less one (for the vLLM frontend and the feeding stages), at least cpus_per_replica (Ray alone would pin the engine to cpus_per_replica threads)")
    max_pending_requests: int | None = Field(None, ge=1, description="requests admitted into each engine ahead of the running ones (vllm backend); None: 8 x batch_size")
    serving: Literal["pool", "ray_data_llm"] = Field("pool", description="vllm backend: 'pool' starts the engines once per job and every round and retry streams through them (build-refs and build-proxy accept only this); 'ray_data_llm' builds a ray.data.llm processor per Captioner round (an engine start each), for a Captioner used on its own")
    max_concurrent_batches: int = Field(4, ge=1, description="vllm backend, pool: batches in flight from each feeding actor to the engines")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra vLLM engine arguments")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    retries_on_failed_check: int = Field(1, ge=0, description="regenerate with another seed when an output fails its checks")
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)


class ClipConfig(Strict):
    """The open_clip image-text embedder."""

    model: str = Field("ViT-B-32", description="open_clip model name, or local-dir:/path holding open_clip_config.json + open_clip_model.safetensors")
    pretrained: str | None = Field(None, description="pretrained tag (needs the hub) or a local checkpoint file; ignored for local-dir:")
    batch_size: int = Field(64, ge=1)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="auto: fp16 on GPU, fp32 on CPU")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    replicas: int = Field(1, ge=1, description="embedding actors")
    cpus_per_replica: float = Field(1.0, gt=0)
    gpus_per_replica: float = Field(0.0, ge=0, description="set to 1 (or a fraction) on GPU clusters")
    prep_cpus: float = Field(0.25, gt=0, description="CPUs per decode+transform actor")
    prep_replicas: int = Field(1, ge=1, description="decode+transform actors (raise it when decoding, not the model, is the bottleneck)")
    threads: int | None = Field(None, ge=1, description="torch threads of each embedding actor on CPU; default: the node's cores shared among the replicas, at least cpus_per_replica (Ray alone would pin an actor to cpus_per_replica threads)")


class ScorerConfig(Strict):
    """An image scorer: a small head on the CLIP image embedding (weaverdata/models/scorers.py)."""

    name: str = Field(..., pattern=r"^[a-z][a-z0-9_]{0,31}$", description="the score's name (aesthetic, watermark, nsfw, ...); its reject reason is score_<name>")
    path: str = Field(..., description="the head's safetensors file: a local path or any fsspec URL")
    activation: Literal["none", "relu"] = Field("none", description="between the head's linear layers (LAION's aesthetic predictor: none)")
    output: Literal["raw", "sigmoid"] = Field("raw", description="sigmoid: the head gives a logit (watermark, NSFW), the score is its probability")
    threshold: float | None = Field(None, description="images on the wrong side of it are rejected score_<name>; none: score only")
    keep: Literal["above", "below"] = Field("above", description="keep images scoring at least (above: aesthetic) or at most (below: watermark, NSFW) the threshold")


class JobConfig(Strict):
    """Fields every recipe has."""

    input: InputConfig = Field(default_factory=InputConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    def identity(self) -> dict[str, Any]:
        """The part of the config that defines the output's contents (no paths, no runtime)."""
        data = self.model_dump(mode="json")
        data.pop("runtime", None)
        data.get("input", {}).pop("path", None)
        out = data.get("output", {})
        for key in ("path", "overwrite", "license"):
            out.pop(key, None)
        return data

    def identity_sha256(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


class IngestConfig(JobConfig):
    """`weaverdata ingest`: any image source into validated, hashed image shards."""

    recipe: Literal["ingest"] = "ingest"
    image: ImageConfig = Field(default_factory=ImageConfig)
    video: VideoConfig = Field(default_factory=VideoConfig)


class ShotConfig(Strict):
    """Videos: shot boundaries on every decoded frame, then reference/target pairs inside a shot."""

    cut_threshold: float = Field(0.12, gt=0, le=1, description="colour-histogram distance between consecutive frames above which a cut may start")
    window: int = Field(8, ge=1, description="frames each side for the adaptive (local median) rule")
    ratio: float | None = Field(3.0, gt=0, description="a cut must also be this many times the local median change; null: plain threshold")
    min_shot_frames: int = Field(5, ge=1, description="shots shorter than this are merged away (flash frames)")
    interval_s: float = Field(1.0, gt=0, description="time from the nearest reference to the target (WeGen: frames an interval apart)")
    tolerance_s: float = Field(0.5, ge=0, description="how far from the wanted time a sampled frame may be")
    max_refs: int = Field(1, ge=1, le=8, description="references per target, at 1, 2, ... intervals before it")
    stride: int = Field(1, ge=1, description="sampled frames between two targets of one shot")


class GroupingConfig(Strict):
    """Image collections and documents: similarity graph, then repeated maximum cliques."""

    edge_threshold: float = Field(0.8, ge=-1, le=1, description="CLIP cosine above which two images are joined in the graph")
    min_size: int = Field(2, ge=2)
    max_size: int = Field(6, ge=2, le=16)
    exact_max_images: int = Field(50_000, ge=2, description="above this many images the graph is built from approximate neighbours (faiss) instead of all pairs")
    knn_k: int = Field(16, ge=1, description="neighbours per image for the approximate graph")
    knn_index: Literal["flat", "ivf", "hnsw"] = "ivf"
    knn_nprobe: int | None = Field(None, ge=1, description="ivf: inverted lists searched per query (default nlist/4; 16-64 at millions of images)")
    hard_negatives: bool = Field(False, description="also write the neighbours below band.low as hard negatives (embeddings/hard_negatives.parquet)")
    hard_negative_min: float | None = Field(None, ge=-1, le=1, description="hard negatives must score at least this")


class BandConfig(Strict):
    """A reference is kept only when its cosine to the target lies in [low, high] and it is no pixel copy."""

    mode: Literal["absolute", "quantile"] = Field("absolute", description="quantile: low/high are quantiles of this run's reference-target cosines")
    low: float = Field(0.5, ge=-1, le=1)
    high: float = Field(0.98, ge=-1, le=1)
    phash_min: int | None = Field(5, ge=0, le=64, description="perceptual-hash distance at or under which a reference is a near-copy (MMC4: 5); null: off")


class QualityConfig(Strict):
    min_side: int | None = Field(150, ge=1, description="shorter side in px (MMC4: 150)")
    aspect_min: float = Field(0.5, gt=0)
    aspect_max: float = Field(2.0, gt=0)
    blur_min: float | None = Field(None, ge=0, description="variance of the Laplacian (at 512 px) under which an image is blurry; null: off")
    exposure_min: float | None = Field(None, ge=0, le=255, description="mean luminance under which an image is underexposed; null: off")
    exposure_max: float | None = Field(None, ge=0, le=255, description="mean luminance over which an image is overexposed; null: off")


class RefsTextConfig(Strict):
    """What the captioning engine writes per sample."""

    description: bool = Field(True, description="dense description of the target")
    instruction: bool = Field(True, description="instruction to make the target from the references")
    dynamics: bool = Field(True, description="video samples: what moved or changed from reference to target")
    description_prompt: str = "dense_description"
    instruction_prompt: str = "instruction"
    dynamics_prompt: str = "dynamics"


def _staged_engine_serving(engine: EngineConfig, command: str) -> None:
    """build-refs and build-proxy send every round of every unit to the job's engines from their
    text tasks; a ray.data.llm processor per round is not a path they have."""
    if engine.serving != "pool":
        raise ValueError(f"{command} runs its text on the job's engines: engine.serving must be 'pool' (got {engine.serving!r}; "
                         "'ray_data_llm' is for a Captioner used on its own)")


class RefsConfig(JobConfig):
    """`weaverdata build-refs`: reference-guided image samples from videos, collections and documents."""

    recipe: Literal["build-refs"] = "build-refs"
    source: Literal["auto", "video", "collection", "documents"] = Field("auto", description="auto: video for video inputs, collection otherwise")
    image: ImageConfig = Field(default_factory=ImageConfig)
    video: VideoConfig = Field(default_factory=lambda: VideoConfig(fps=2.0))
    shots: ShotConfig = Field(default_factory=ShotConfig)
    grouping: GroupingConfig = Field(default_factory=GroupingConfig)
    band: BandConfig = Field(default_factory=BandConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    text_to_image: Literal["none", "unmatched", "all"] = Field("unmatched", description="text-to-image samples (a target and its description): none, images in no reference sample, or every accepted image")
    text: RefsTextConfig = Field(default_factory=RefsTextConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)
    scorers: list[ScorerConfig] = Field(default_factory=list, description="image scorers on the CLIP embeddings: each writes its score (embeddings/scores.parquet) and may reject by threshold")
    engine: EngineConfig = Field(default_factory=EngineConfig)

    @model_validator(mode="after")
    def _text_needs_a_model(self) -> RefsConfig:
        names = [s.name for s in self.scorers]
        if len(set(names)) != len(names):
            raise ValueError(f"scorers: each needs its own name, got {names}")
        t = self.text
        if (t.description or t.instruction or t.dynamics) and not self.engine.model:
            raise ValueError("engine.model is required to write text (or set text.description, text.instruction and text.dynamics to false)")
        if self.text_to_image != "none" and not t.description:
            raise ValueError("text_to_image samples need text.description: true")
        if self.band.mode == "absolute" and self.band.low > self.band.high:
            raise ValueError(f"band.low {self.band.low} is above band.high {self.band.high}")
        _staged_engine_serving(self.engine, "build-refs")
        return self


class TagsConfig(Strict):
    open: str = "<imagine>"
    close: str = "</imagine>"
    boi: str = "<BOI>"


class ProxyTextConfig(Strict):
    """Which prompt writes what, and how the outputs are held to the proxy format."""

    constrain: bool = Field(True, description="constrain generations that must contain proxies to a regular expression (vLLM structured outputs): the proxies appear, in order, with the descriptions given")
    description_min_words: int = Field(5, ge=1, description="a proxy's description must have at least this many words")
    description_max_words: int = Field(160, ge=1)
    text_max_chars: int = Field(400, ge=20, description="constrained generations: at most this many characters between two proxies")
    description_prompt: str = "dense_description"
    request_prompt: str = "request"
    narrative_prompt: str = "narrative"
    refinement_prompt: str = "refinement"
    answer_prompt: str = "answer"
    seed_prompt: str = "seed_answer"
    refine: bool = Field(True, description="image groups: a refinement pass over the woven narrative")


class DocumentsConfig(Strict):
    """Interleaved documents (OBELICS / MMC4 rows, HTML pages); published filter defaults."""

    min_images: int = Field(1, ge=0)
    max_images: int = Field(30, ge=1)
    min_words: int = Field(10, ge=0)
    max_words: int = Field(2000, ge=1)
    request: Literal["title", "vlm"] = Field("title", description="the user turn: a request made of the title (and the document's opening, which the assistant turn then continues), or a request the VLM writes")
    opening_words: int = Field(40, ge=0, description="words of the document's opening (text before its first image) given in a title request; the assistant turn starts after them")
    main_content: bool = Field(True, description="HTML pages: keep the article only (trafilatura main-content extraction), not navigation, tables of contents and footers")
    max_page_bytes: int = Field(8 * 2**20, ge=1024, description="an HTML page larger than this is rejected page_too_large before it is parsed")
    context_words: int = Field(80, ge=0, description="words of surrounding text given with each image to describe")
    shorten_context: bool = Field(True, description="a description request over the prompt budget (engine.max_model_len - max_tokens) is retried with half, a quarter, then none of the context before it becomes a caption_prompt_too_long reject")
    cut_samples: bool = Field(True, description="also emit the document cut after its first proxy (a text-then-proxy target)")
    same_subject_cosine: float = Field(0.85, ge=-1, le=1, description="an image this close (CLIP) to an earlier one of its document is described with the earlier description in the prompt")


class ProxyConfig(JobConfig):
    """`weaverdata build-proxy`: textual-proxy interleaved documents for planner training."""

    recipe: Literal["documents", "single_image", "image_group", "text_seed"] = "single_image"
    tags: TagsConfig = Field(default_factory=TagsConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    documents: DocumentsConfig = Field(default_factory=DocumentsConfig)
    grouping: GroupingConfig = Field(default_factory=lambda: GroupingConfig(min_size=2, max_size=4))
    input_image_share: float = Field(0.1, ge=0, le=1, description="single_image: share of samples that show the image as a real input in the user turn")
    seed_field: str | None = Field(None, description="text_seed: the row field holding the seed (auto: seed, title, keyword, label, text)")
    seed_max_images: int = Field(3, ge=1, le=8, description="text_seed: at most this many proxies in an answer")
    dedup: bool = True
    dedup_threshold: float = Field(0.8, gt=0, le=1, description="MinHash Jaccard above which a document is a near-duplicate")
    text: ProxyTextConfig = Field(default_factory=ProxyTextConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    seed: int = Field(0, description="choices made at random (input-image share) follow this seed")

    @model_validator(mode="after")
    def _needs_a_model(self) -> ProxyConfig:
        if not self.engine.model:
            raise ValueError("engine.model is required: build-proxy writes every description and narrative with it")
        if self.text.constrain and self.engine.backend == "transformers":
            raise ValueError("text.constrain needs the vllm or openai backend (structured outputs); set text.constrain=false for transformers")
        _staged_engine_serving(self.engine, "build-proxy")
        return self


M = TypeVar("M", bound=BaseModel)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", yaml-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not KEY=VALUE")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key, value


def _describe_errors(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid config ({origin}):"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{where}'")
        else:
            lines.append(f"  '{where}': {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def load_config(
    model: type[M],
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> M:
    """Load a YAML recipe into `model`, apply dotted overrides, validate; errors name key and file."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        origin = str(path)
        p = Path(path)
        if not p.is_file() and not p.suffix and (PIPELINES_DIR / f"{p.name}.yaml").is_file():
            p = PIPELINES_DIR / f"{p.name}.yaml"  # a bare recipe name: the shipped pipelines/NAME.yaml
            origin = str(p)
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    if overrides:
        origin += " + command-line overrides"
        for key, value in overrides.items():
            _set_dotted(data, key, value)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe_errors(exc, origin)) from exc
