"""Typed configs of `weaverdata train planner` and `weaverdata train visualizer`.

Loaded from `pipelines/train-planner.yaml` / `pipelines/train-visualizer.yaml` like every recipe
config (unknown keys and wrong types fail at once, naming the key and the file), overridden from
the command line (`--steps`, `--workers`, `--set train.lr=1e-4`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, model_validator

from weaverdata.config import ClipConfig, RuntimeConfig, Strict


class TrainDataConfig(Strict):
    path: str | None = Field(None, description="an output folder of build-proxy, mix or build-refs (local path or fsspec URL)")
    format: Literal["parquet", "webdataset"] = Field("parquet", description="read the Parquet files or the WebDataset tars of the output (same samples)")
    groups: list[str] = Field(default_factory=list, description="shell patterns of the data/<group> folders to read; empty reads all")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="share of samples held out for evaluation, chosen by a hash of the id (stable as data grows)")
    eval_max_samples: int = Field(64, ge=0, description="cap on held-out samples")
    shuffle_window: int = Field(256, ge=1, description="samples shuffled together; windows of consecutive samples keep reads sequential")
    shard_cache: int = Field(2, ge=1, description="decoded shards each worker keeps in memory")


class OptimConfig(Strict):
    steps: int = Field(100, ge=1, description="optimizer steps of the whole run")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float | None = Field(1.0, gt=0)
    seed: int = 0


class TrainLoopConfig(Strict):
    workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel ranks)")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0, description="1 on GPU clusters (NCCL); 0 trains on CPU (gloo)")
    executor: Literal["ray", "local"] = Field("ray", description="ray: Ray Train TorchTrainer; local: one process, no Ray (debugging)")
    batch_size: int = Field(4, ge=1, description="per worker: sequences (planner, packed) or samples (visualizer)")
    log_every: int = Field(1, ge=1)
    eval_every: int = Field(0, ge=0, description="steps between evaluations on the held-out split (0: at the end only)")
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    probe_every: int = Field(0, ge=0, description="loss on one fixed batch (no update) every N steps; 0: off")
    log_sample_ids: bool = Field(False, description="write the ids each rank trained on per step to OUTPUT/sample_ids/ (data audits)")
    stop_after_steps: int | None = Field(None, ge=1, description="end this invocation (with a checkpoint) after this many steps; a rerun goes on. For time-limited or preemptible slots")
    max_failures: int = Field(0, ge=0, description="Ray Train restarts of a failed worker group (each resumes from the last checkpoint)")


class PlannerModelConfig(Strict):
    model: str = Field("tiny", description="hub id, local folder, module:Class, or 'tiny' (a RANDOM-WEIGHT Qwen2 built here)")
    tokenizer: str | None = Field(None, description="tokenizer hub id or folder (default: the model's)")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of module:Class")
    max_seq_len: int = Field(512, ge=16)
    pack: bool = Field(True, description="pack several samples per sequence (attention stays within a sample)")
    tags: tuple[str, str, str] = Field(("<imagine>", "</imagine>", "<BOI>"), description="open, close and begin-of-image tokens, added as special tokens")


class CurriculumStage(Strict):
    tasks: list[str] = Field(..., min_length=1, description="task kinds this stage trains on")
    fraction: float = Field(..., gt=0, le=1, description="share of the run's steps")


def _default_curriculum() -> list[CurriculumStage]:
    return [
        CurriculumStage(tasks=["text_to_image"], fraction=0.3),
        CurriculumStage(tasks=["text_to_image", "single_reference", "video_dynamics"], fraction=0.3),
        CurriculumStage(tasks=["text_to_image", "single_reference", "video_dynamics", "multi_reference"], fraction=0.4),
    ]


class VisualizerModelConfig(Strict):
    model: str = Field("weaverdata.train.visualizer_model:TinyDiT", description="module:Class of the generator (built-in: a small DiT)")
    model_kwargs: dict[str, Any] = Field(default_factory=lambda: {"dim": 128, "depth": 4, "heads": 4, "patch": 4})
    resolution: int = Field(32, ge=8, description="side of the square training images")
    max_refs: int = Field(4, ge=1, description="references used per sample (extra ones are dropped, first kept)")
    text: ClipConfig = Field(default_factory=lambda: ClipConfig(model="tiny"), description="open_clip text tower (frozen); model 'tiny' builds a RANDOM-WEIGHT one here")
    curriculum: list[CurriculumStage] = Field(default_factory=_default_curriculum)
    sample_steps: int = Field(16, ge=1, description="Euler steps when drawing sample images at checkpoints")
    samples_per_checkpoint: int = Field(4, ge=0)

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> VisualizerModelConfig:
        total = sum(s.fraction for s in self.curriculum)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"curriculum fractions sum to {total}, not 1")
        return self


class TrainConfig(Strict):
    data: TrainDataConfig = Field(default_factory=TrainDataConfig)
    output: str | None = Field(None, description="checkpoint folder (local or fsspec URL)")
    overwrite: bool = False
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainLoopConfig = Field(default_factory=TrainLoopConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    def identity(self) -> dict[str, Any]:
        """What fixes the trajectory of a run: a folder is resumed only with the same identity."""
        data = self.model_dump(mode="json")
        for key in ("runtime", "output", "overwrite"):
            data.pop(key, None)
        data["data"].pop("path", None)
        data["optim"].pop("steps", None)  # a run may be extended
        for key in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "probe_every", "log_sample_ids", "stop_after_steps", "max_failures", "executor", "cpus_per_worker", "gpus_per_worker"):
            data["train"].pop(key, None)
        return data

    def identity_sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()


class PlannerTrainConfig(TrainConfig):
    """`weaverdata train planner`: causal-LM fine-tuning on proxy documents."""

    planner: PlannerModelConfig = Field(default_factory=PlannerModelConfig)


class VisualizerTrainConfig(TrainConfig):
    """`weaverdata train visualizer`: reference-conditioned rectified-flow generator on reference samples."""

    visualizer: VisualizerModelConfig = Field(default_factory=VisualizerModelConfig)
