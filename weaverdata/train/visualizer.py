"""The visualizer trainer: a reference-conditioned image generator trained with rectified flow.

Each reference sample gives a target image, its references (0 for text-to-image) and a text (the
instruction, or the description for text-to-image). Images are centre-cropped to a small square
(`visualizer.resolution`); the text goes through open_clip's text tower (frozen). Training
follows the curriculum of the shard task kinds: by default text-to-image, then adding
single-reference (and video) samples, then multi-reference ones, each stage a share of the steps.

Rectified flow: x_t = (1 - t) noise + t image, the model predicts the velocity image - noise;
t is drawn logit-normal. Noise and t come from a generator seeded by (seed, step, rank), so a
resumed run draws what an uninterrupted one would. At every checkpoint, sample images (Euler
integration from fixed noise) of held-out samples are saved as `samples.png`: each row shows the
references, the generated image and the real target.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass

import numpy as np

from weaverdata.io.storage import Location
from weaverdata.train.config import VisualizerTrainConfig
from weaverdata.train.contracts import Ranks, TrainError
from weaverdata.train.data import DataError, Sample, SampleIndex, SampleStream, decode_rgb
from weaverdata.train.models import CLASS_REF, cache_dir, import_class

log = logging.getLogger(__name__)


@dataclass
class VisualBatch:
    ids: list[str]
    tasks: list[str]
    texts: list[str]
    target: object  # (B, 3, S, S) float in [-1, 1]
    refs: object  # (B, R, 3, S, S)
    ref_mask: object  # (B, R) bool


def sample_text(record: dict) -> str:
    if record["task"] == "text_to_image":
        return record.get("description") or record.get("instruction") or ""
    return record.get("instruction") or record.get("description") or ""


def plan_stages(curriculum, kinds_present: dict[str, int], steps: int) -> list[tuple[list[str], int]]:
    """(tasks, last step) per curriculum stage that has samples; an empty stage's steps go to the
    next stage that has some (the last one's to the one before)."""
    bounds, acc = [], 0.0
    for stage in curriculum:
        acc += stage.fraction
        bounds.append(round(acc * steps))
    bounds[-1] = steps
    out = [(stage.tasks, end) for stage, end in zip(curriculum, bounds) if any(kinds_present.get(t, 0) for t in stage.tasks)]
    if not out:
        raise DataError(f"no samples of any curriculum task kind; the data holds {kinds_present}")
    out[-1] = (out[-1][0], steps)
    return out


def rectified_flow_inputs(target, step_seed: int):
    """(x_t, t, velocity target) for a batch of images, from a generator seeded by `step_seed`."""
    import torch

    gen = torch.Generator().manual_seed(step_seed)
    noise = torch.randn(target.shape, generator=gen)
    t = torch.sigmoid(torch.randn(target.shape[0], generator=gen))
    noise, t = noise.to(target.device), t.to(target.device)
    tt = t[:, None, None, None]
    return (1 - tt) * noise + tt * target, t, target - noise


class VisualizerTask:
    name = "visualizer"
    schema = "reference_sample"
    kind_column = "task"
    columns = ["id", "task", "instruction", "description", "target_image", "reference_images"]
    count_keys = ("references",)

    def __init__(self) -> None:
        self.skipped: dict[str, int] = {}
        self._text_cache: dict[str, np.ndarray] = {}

    def setup(self, cfg: VisualizerTrainConfig, out: Location, ranks: Ranks) -> None:
        from weaverdata.models.clip import ClipEmbedder, build_tiny_clip

        self.cfg, self.vcfg, self.device, self.rank = cfg, cfg.visualizer, ranks.device, ranks.rank
        text_cfg = self.vcfg.text
        if text_cfg.model == "tiny":
            text_cfg = text_cfg.model_copy(update={"model": str(build_tiny_clip(cache_dir() / "tiny-models" / "clip")), "pretrained": None})
        self.text_encoder = ClipEmbedder(text_cfg.model_copy(update={"device": "cuda" if str(self.device).startswith("cuda") else "cpu"}))
        if not CLASS_REF.match(self.vcfg.model):
            raise TrainError(f"visualizer.model must be module:Class, got {self.vcfg.model!r}")
        cls = import_class(self.vcfg.model)
        self.model_kwargs = {"resolution": self.vcfg.resolution, "max_refs": self.vcfg.max_refs, "text_dim": self.text_encoder.dim, **self.vcfg.model_kwargs}
        self.model = cls(**self.model_kwargs).to(self.device)
        self.stage_plan: list[tuple[list[str], int]] = []

    def trainable(self):
        return self.model

    def save_model(self, folder: str) -> None:
        import torch

        os.makedirs(folder, exist_ok=True)
        torch.save(self.model.state_dict(), os.path.join(folder, "weights.pt"))
        with open(os.path.join(folder, "model.json"), "w") as f:
            json.dump({"class": self.vcfg.model, "kwargs": self.model_kwargs, "text_encoder": self.vcfg.text.model_dump(mode="json")}, f, indent=1)

    def load_model(self, folder: str) -> None:
        import torch

        self.model.load_state_dict(torch.load(os.path.join(folder, "model", "weights.pt"), map_location=self.device, weights_only=True))

    # -- data ----------------------------------------------------------------------------
    def stages(self, train: SampleIndex, steps: int):
        present: dict[str, int] = {}
        for k in train.kinds:
            present[k] = present.get(k, 0) + 1
        self.stage_plan = plan_stages(self.vcfg.curriculum, present, steps)
        out = []
        for tasks, end in self.stage_plan:
            out.append(("+".join(tasks), train.of_kinds(tasks), end))
        if self.rank == 0:
            print(f"[train] curriculum: {[(name, len(pool), end) for name, pool, end in out]} (stage, samples, last step)", file=sys.stderr, flush=True)
        return out

    def _decode(self, sample: Sample):
        size = self.vcfg.resolution
        target = decode_rgb(sample.media["target_image"], size)
        refs = [decode_rgb(b, size) for b in (sample.media.get("reference_images") or [])[: self.vcfg.max_refs]]
        return target, refs

    def to_batch(self, samples: list[Sample]) -> VisualBatch | None:
        import torch

        rows = []
        for s in samples:
            try:
                target, refs = self._decode(s)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                reason = "undecodable_image" if isinstance(exc, (OSError, ValueError)) else "missing_image"
                self.skipped[reason] = self.skipped.get(reason, 0) + 1
                continue
            rows.append((s, target, refs))
        if not rows:
            return None
        r = max(len(refs) for _, _, refs in rows)
        size = self.vcfg.resolution

        def tensor(img: np.ndarray):
            return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 127.5 - 1.0

        target = torch.stack([tensor(t) for _, t, _ in rows])
        refs = torch.zeros(len(rows), r, 3, size, size)
        mask = torch.zeros(len(rows), r, dtype=torch.bool)
        for i, (_, _, rs) in enumerate(rows):
            for j, im in enumerate(rs):
                refs[i, j] = tensor(im)
                mask[i, j] = True
        return VisualBatch([s.id for s, _, _ in rows], [s.record["task"] for s, _, _ in rows], [sample_text(s.record) for s, _, _ in rows], target, refs, mask)

    def next_batch(self, stream: SampleStream):
        while True:
            samples = []
            while len(samples) < self.cfg.train.batch_size and (s := stream.take()) is not None:
                samples.append(s)
            if not samples:
                return None
            batch = self.to_batch(samples)
            if batch is not None:
                return batch

    def batch_ids(self, batch: VisualBatch) -> list[str]:
        return batch.ids

    def text_embeddings(self, texts: list[str]):
        import torch

        missing = sorted({t for t in texts if t not in self._text_cache})
        if missing:
            for t, e in zip(missing, self.text_encoder.embed_texts(missing)):
                self._text_cache[t] = e
            while len(self._text_cache) > 100_000:
                self._text_cache.pop(next(iter(self._text_cache)))
        return torch.from_numpy(np.stack([self._text_cache[t] for t in texts])).to(self.device)

    # -- loss ------------------------------------------------------------------------------
    def _loss_terms(self, batch: VisualBatch, seed: int):
        target = batch.target.to(self.device)
        x_t, t, v = rectified_flow_inputs(target, seed)
        pred = self.model(x_t, t, self.text_embeddings(batch.texts), batch.refs.to(self.device), batch.ref_mask.to(self.device))
        return ((pred - v) ** 2).mean(dim=(1, 2, 3))

    def loss(self, batch: VisualBatch, step: int, ranks: Ranks):
        per_sample = self._loss_terms(batch, self.cfg.optim.seed * 1_000_003 + step * 1009 + ranks.rank)
        return per_sample.sum(), float(len(batch.ids)), {"references": float(batch.ref_mask.sum())}

    def evaluate(self, samples: list[Sample], ranks: Ranks) -> dict[str, float]:
        import torch

        sums = {"loss_sum": 0.0, "samples": 0.0}
        self.model.eval()
        with torch.no_grad():
            for i in range(0, len(samples), self.cfg.train.batch_size):
                batch = self.to_batch(samples[i : i + self.cfg.train.batch_size])
                if batch is None:
                    continue
                per = self._loss_terms(batch, 7_777_777 + i)
                sums["loss_sum"] += float(per.sum())
                sums["samples"] += len(batch.ids)
        self.model.train()
        return sums

    @staticmethod
    def finish_eval(sums: dict[str, float]) -> dict[str, float]:
        return {"loss": sums["loss_sum"] / sums["samples"] if sums["samples"] else float("nan"), "samples": sums["samples"]}

    # -- sampling ----------------------------------------------------------------------------
    def generate(self, batch: VisualBatch, steps: int, seed: int = 0):
        """Euler integration of the learned velocity from fixed noise (t: 0 -> 1)."""
        import torch

        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(batch.target.shape, generator=gen).to(self.device)
        text = self.text_embeddings(batch.texts)
        refs, mask = batch.refs.to(self.device), batch.ref_mask.to(self.device)
        self.model.eval()
        with torch.no_grad():
            for k in range(steps):
                t = torch.full((x.shape[0],), k / steps, device=self.device)
                x = x + self.model(x, t, text, refs, mask) / steps
        self.model.train()
        return x.clamp(-1, 1)

    def on_checkpoint(self, folder: str, step: int, eval_samples: list) -> None:
        from PIL import Image

        chosen = eval_samples[: self.vcfg.samples_per_checkpoint]
        batch = self.to_batch(chosen) if chosen else None
        if batch is None:
            return
        made = self.generate(batch, self.vcfg.sample_steps)
        size, cols = self.vcfg.resolution, self.vcfg.max_refs + 2

        def img(t) -> Image.Image:
            return Image.fromarray(((t.detach().cpu().permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8))

        grid = Image.new("RGB", (cols * size, len(batch.ids) * size), (255, 255, 255))
        for i in range(len(batch.ids)):
            for j in range(batch.refs.shape[1]):
                if batch.ref_mask[i, j]:
                    grid.paste(img(batch.refs[i, j]), (j * size, i * size))
            grid.paste(img(made[i]), ((cols - 2) * size, i * size))
            grid.paste(img(batch.target[i]), ((cols - 1) * size, i * size))
        grid.resize((grid.width * 4, grid.height * 4), Image.NEAREST).save(os.path.join(folder, "samples.png"))
        with open(os.path.join(folder, "samples.json"), "w") as f:
            json.dump({"step": step, "layout": "each row: references (left), generated, real target (right)", "samples": [{"id": i, "task": k, "text": t} for i, k, t in zip(batch.ids, batch.tasks, batch.texts)]}, f, indent=1)

    def counters(self) -> dict[str, float]:
        return {f"skipped_{k}": v for k, v in self.skipped.items()}
