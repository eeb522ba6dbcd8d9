"""open_clip image and text embeddings: loaded once per worker, batched, L2-normalised.

`load_clip(cfg)` accepts an open_clip model name plus a pretrained tag or local checkpoint file,
or `local-dir:/path` (open_clip_config.json + open_clip_model.safetensors, which also serves the
tokenizer). `ClipEmbedder` holds one model; `ClipImageStage` / `prepare_clip_batch` are its Ray
Data adapters: decoding and transforms run as cheap CPU tasks, the actor runs only the forward
pass (CPU preparation split from accelerator inference). `build_tiny_clip` writes a tiny model
with random weights for tests and the demo.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from weaverdata.config import ClipConfig
from weaverdata.runtime import node_cores


def _device_and_dtype(cfg: ClipConfig):
    import torch

    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    precision = cfg.precision
    if precision == "auto":
        precision = "fp16" if device == "cuda" else "fp32"
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    return device, dtype


def load_clip(cfg: ClipConfig):
    """(model in eval mode, image transform, tokenizer) on the configured device and precision."""
    import open_clip

    device, dtype = _device_and_dtype(cfg)
    name = cfg.model
    if not name.startswith(("local-dir:", "hf-hub:")) and Path(name).is_dir():
        name = f"local-dir:{name}"
    pretrained = None if name.startswith("local-dir:") else cfg.pretrained
    model, _, transform = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
    model = model.to(dtype=dtype).eval()
    tokenizer = open_clip.get_tokenizer(name)
    return model, transform, tokenizer


class ClipEmbedder:
    """One open_clip model; embeds images and texts in batches, unit-norm float32 out."""

    def __init__(self, cfg: ClipConfig):
        import torch

        self.cfg = cfg
        self.torch = torch
        self.model, self.transform, self.tokenizer = load_clip(cfg)
        self.device, self.dtype = _device_and_dtype(cfg)

    @property
    def dim(self) -> int:
        return int(self.model.text_projection.shape[-1]) if getattr(self.model, "text_projection", None) is not None else int(self.model.visual.output_dim)

    def pixels(self, images) -> np.ndarray:
        """PIL images -> the model's input tensor as a float32 array (N, 3, H, W)."""
        return np.stack([self.transform(im.convert("RGB")).numpy() for im in images])

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        out = []
        with self.torch.inference_mode():
            for start in range(0, len(pixels), self.cfg.batch_size):
                chunk = np.ascontiguousarray(pixels[start : start + self.cfg.batch_size])
                x = self.torch.from_numpy(chunk if chunk.flags.writeable else chunk.copy()).to(self.device, self.dtype)
                out.append(self._normalise(self.model.encode_image(x)))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def embed_images(self, images) -> np.ndarray:
        return self.embed_pixels(self.pixels(images)) if len(images) else np.zeros((0, self.dim), np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        out = []
        with self.torch.inference_mode():
            for start in range(0, len(texts), self.cfg.batch_size):
                tokens = self.tokenizer(texts[start : start + self.cfg.batch_size]).to(self.device)
                out.append(self._normalise(self.model.encode_text(tokens)))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def _normalise(self, x) -> np.ndarray:
        x = x.float()
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return x.cpu().numpy().astype(np.float32)


# -- Ray Data adapters ---------------------------------------------------------------------------

class PrepareClipBatch:
    """CPU stage: image bytes -> transformed pixels (loads only the transform, once per actor)."""

    def __init__(self, cfg: ClipConfig, image_column: str = "image"):
        import open_clip

        self.image_column = image_column
        name = cfg.model
        if not name.startswith(("local-dir:", "hf-hub:")) and Path(name).is_dir():
            name = f"local-dir:{name}"
        args = _transform_args(name)
        self.transform = open_clip.image_transform(*args)
        self.shape = (3, args[0], args[0])

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from weaverdata.media.image import ImageRejected, decode_image

        pixels, errors = [], []
        for data in batch[self.image_column]:
            try:
                pixels.append(self.transform(decode_image(bytes(data), with_phash=False, enough_side=self.shape[1]).rgb).numpy())
                errors.append("")
            except ImageRejected as exc:
                pixels.append(None)
                errors.append(exc.reason)
        batch = {k: v for k, v in batch.items() if k != self.image_column}
        batch["pixels"] = np.stack([p if p is not None else np.zeros(self.shape, np.float32) for p in pixels])
        batch["clip_error"] = np.array(errors, dtype=object)
        return batch


def _transform_args(name: str) -> tuple:
    """(image_size, is_train, mean, std) of an open_clip model, read from its config without weights."""
    import open_clip

    if name.startswith("local-dir:"):
        cfg = json.loads((Path(name[len("local-dir:") :]) / "open_clip_config.json").read_text())
        size = cfg["model_cfg"]["vision_cfg"]["image_size"]
        pp = cfg.get("preprocess_cfg", {})
    else:
        size = open_clip.get_model_config(name)["vision_cfg"]["image_size"]
        pp = {}
    mean = pp.get("mean", open_clip.OPENAI_DATASET_MEAN)
    std = pp.get("std", open_clip.OPENAI_DATASET_STD)
    return (size, False, mean, std)


def forward_threads(cfg: ClipConfig, cores: int) -> int:
    """torch threads for one embedding actor on a CPU node with `cores` cores.

    Ray sets OMP_NUM_THREADS to an actor's CPU reservation, so a ViT-B-32 actor reserving 1 CPU
    ran its forward on one thread at about half the speed of a plain loop (benchmarks/README.md).
    The forward is nearly all of the stage's work, so it gets the node's cores shared among the
    replicas (never fewer than it reserves); `clip.threads` sets it outright.

    >>> forward_threads(ClipConfig(), 8), forward_threads(ClipConfig(replicas=3), 8), forward_threads(ClipConfig(threads=1), 8)
    (8, 2, 1)
    """
    if cfg.threads is not None:
        return cfg.threads
    return max(1, math.ceil(cfg.cpus_per_replica), cores // cfg.replicas)


class ClipImageStage:
    """Accelerator stage: transformed pixels -> unit-norm embeddings (weights loaded once per actor)."""

    def __init__(self, cfg: ClipConfig):
        self.embedder = ClipEmbedder(cfg)
        if self.embedder.device == "cpu":
            self.embedder.torch.set_num_threads(forward_threads(cfg, node_cores()))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        emb = self.embedder.embed_pixels(np.asarray(batch.pop("pixels"), dtype=np.float32))
        emb[np.asarray([bool(e) for e in batch["clip_error"]], dtype=bool)] = 0.0  # never a plausible vector for a bad image
        batch["embedding"] = list(emb)
        return batch


def embed_dataset(ds, cfg: ClipConfig, image_column: str = "image"):
    """Ray Dataset with `id` and `image_column` (bytes) -> `id`, `embedding` (unit-norm), `clip_error`.

    Name the bytes column rather than renaming it: Ray Data's rename_columns merges blocks (into
    ~128 MiB ones, measured on ray 2.60), which defeats streaming on a small object store."""
    from ray.data import ActorPoolStrategy
    prepared = ds.map_batches(PrepareClipBatch, fn_constructor_kwargs={"cfg": cfg, "image_column": image_column}, batch_size=cfg.batch_size, compute=ActorPoolStrategy(size=cfg.prep_replicas), num_cpus=cfg.prep_cpus)
    return prepared.map_batches(
        ClipImageStage,
        fn_constructor_kwargs={"cfg": cfg},
        batch_size=cfg.batch_size,
        compute=ActorPoolStrategy(size=cfg.replicas),
        num_cpus=cfg.cpus_per_replica,
        num_gpus=cfg.gpus_per_replica or None,
    )


# -- storage ------------------------------------------------------------------------------------

def write_embeddings(ids: list[str], embeddings: np.ndarray, url: str) -> None:
    """Embeddings aligned by id: `<url>.parquet` (id, embedding) or `<url>.npy` + `<url>.ids.txt`."""
    from weaverdata.io.storage import Location

    if len(ids) != len(embeddings):
        raise ValueError(f"{len(ids)} ids for {len(embeddings)} embeddings")
    loc = Location.of(url.rsplit("/", 1)[0] if "/" in url else ".")
    name = url.rsplit("/", 1)[-1]
    import io

    if name.endswith(".npy"):
        buf = io.BytesIO()
        np.save(buf, embeddings.astype(np.float32))
        loc.write_bytes_atomic(name, buf.getvalue())
        loc.write_bytes_atomic(name[: -len(".npy")] + ".ids.txt", ("\n".join(ids) + "\n").encode())
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = embeddings.shape[1] if embeddings.ndim == 2 else 0
    table = pa.table({"id": ids, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.astype(np.float32).ravel()), dim)})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    loc.write_bytes_atomic(name, buf.getvalue())


def read_embeddings(url: str) -> tuple[list[str], np.ndarray]:
    import fsspec

    if url.endswith(".npy"):
        with fsspec.open(url, "rb") as f:
            emb = np.load(f)
        with fsspec.open(url[: -len(".npy")] + ".ids.txt", "rt") as f:
            ids = f.read().split("\n")[:-1]
        return ids, emb
    import pyarrow.parquet as pq

    with fsspec.open(url, "rb") as f:
        table = pq.read_table(f)
    col = table.column("embedding").combine_chunks()
    return table.column("id").to_pylist(), col.values.to_numpy(zero_copy_only=False).reshape(len(table), -1)


# -- a tiny model for tests ---------------------------------------------------------------------

TINY_CLIP_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def build_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny open_clip model with RANDOM weights as a local-dir folder (tests and demos only)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CFG)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")
    config = {
        "model_cfg": TINY_CLIP_CFG,
        "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD), "interpolation": "bicubic", "resize_mode": "shortest"},
        "weaverdata": {"random_weights": True, "seed": seed, "note": "RANDOM WEIGHTS - for tests and demos only; similarities carry no meaning"},
    }
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    (out / "README.md").write_text(
        "# tiny open_clip model (RANDOM WEIGHTS)\n\nBuilt by `weaverdata models tiny` with seed "
        f"{seed}. Its weights are random: embeddings are deterministic but carry no meaning. "
        "For tests and demos only.\n"
    )
    return out
