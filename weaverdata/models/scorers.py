"""Image scorers on CLIP embeddings: small heads (linear or MLP) applied to the image embeddings a
run already computes, the way LAION's aesthetic predictor, watermark and NSFW detectors work.

A head is a safetensors file of linear layers in order: ``<prefix>.<i>.weight`` ([out, in]) and
``<prefix>.<i>.bias`` ([out]), as ``torch.nn.Sequential`` saves them (LAION's improved aesthetic
predictor: ``layers.0``, ``layers.2``, ``layers.4``, ``layers.6``, ``layers.7``, no activation
between them), or a single ``weight``/``bias`` pair. The layers must chain and end in one
output. ``activation`` goes between layers (none for LAION's predictor), ``output: sigmoid``
turns a logit into a probability (watermark, NSFW). Scoring is numpy on the driver, where the
embeddings already are (a few multiply-adds per image): no model, no actor.

A head takes embeddings of one width (the CLIP model it was trained on: 768 for ViT-L/14, 512
for ViT-B/32); a head of another width is refused before the run starts (:func:`check_widths`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_INDEXED_KEY = re.compile(r"^(?:(.+)\.)?(\d+)\.(weight|bias)$")  # layers.4.weight, 4.weight
_SINGLE_KEY = re.compile(r"^(?:(.+)\.)?(weight|bias)$")  # weight, linear.weight


class ScorerError(ValueError):
    """A scorer head that cannot be used (missing, malformed, or the wrong width for the CLIP model)."""


@dataclass(frozen=True)
class ScoreHead:
    name: str
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]  # (weight [out, in], bias [out]) in order
    activation: str = "none"  # between layers: none | relu
    output: str = "raw"  # raw | sigmoid

    @property
    def width(self) -> int:
        return int(self.layers[0][0].shape[1])

    @classmethod
    def load(cls, cfg: Any) -> ScoreHead:
        """From a :class:`~weaverdata.config.ScorerConfig` (its ``path``: local or any fsspec URL)."""
        import fsspec
        from safetensors import SafetensorError
        from safetensors.numpy import load

        try:
            with fsspec.open(cfg.path, "rb") as f:
                tensors = load(f.read())
        except FileNotFoundError as exc:
            raise ScorerError(f"scorer {cfg.name}: no head at {cfg.path}") from exc
        except (OSError, ValueError, SafetensorError) as exc:
            raise ScorerError(f"scorer {cfg.name}: cannot read {cfg.path} as safetensors: {exc}") from exc
        return cls(cfg.name, layers_from_tensors(tensors, cfg.name), cfg.activation, cfg.output)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """One float32 score per row of ``embeddings`` ([n, width])."""
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.width:
            raise ScorerError(f"scorer {self.name}: its head takes {self.width}-wide embeddings, got shape {x.shape}")
        for k, (w, b) in enumerate(self.layers):
            x = x @ w.T + b
            if k < len(self.layers) - 1 and self.activation == "relu":
                np.maximum(x, 0, out=x)
        out = x[:, 0]
        if self.output == "sigmoid":
            out = 1.0 / (1.0 + np.exp(-out))
        return out.astype(np.float32)


def layers_from_tensors(tensors: dict[str, np.ndarray], name: str = "head") -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The linear layers of a head's tensors, in order (see the module docstring). Pure.

    >>> t = {"layers.2.weight": np.ones((1, 4)), "layers.0.weight": np.ones((4, 3)), "layers.0.bias": np.zeros(4)}
    >>> [(w.shape, b.shape) for w, b in layers_from_tensors(t)]
    [((4, 3), (4,)), ((1, 4), (1,))]
    """
    weights: dict[tuple[str, int], np.ndarray] = {}
    biases: dict[tuple[str, int], np.ndarray] = {}
    for key, value in tensors.items():
        m = _INDEXED_KEY.match(key)
        if m:
            slot, kind = (m.group(1) or "", int(m.group(2))), m.group(3)
        elif (m := _SINGLE_KEY.match(key)):
            slot, kind = (m.group(1) or "", -1), m.group(2)
        else:
            raise ScorerError(f"scorer {name}: tensor {key!r} is not a layer's weight or bias")
        (weights if kind == "weight" else biases)[slot] = np.asarray(value, dtype=np.float32)
    if not weights or len({p for p, _ in weights}) > 1:
        raise ScorerError(f"scorer {name}: expected the weights of one stack of linear layers, found {sorted(tensors)}")
    layers = []
    for slot in sorted(weights, key=lambda s: s[1]):
        w = weights[slot]
        if w.ndim != 2:
            raise ScorerError(f"scorer {name}: weight {slot} has shape {w.shape}, not [out, in]")
        b = biases.get(slot, np.zeros(w.shape[0], dtype=np.float32))
        if b.shape != (w.shape[0],):
            raise ScorerError(f"scorer {name}: bias {slot} has shape {b.shape}, expected ({w.shape[0]},)")
        if layers and layers[-1][0].shape[0] != w.shape[1]:
            raise ScorerError(f"scorer {name}: layer {slot} takes {w.shape[1]} inputs but the layer before gives {layers[-1][0].shape[0]}")
        layers.append((w, b))
    if layers[-1][0].shape[0] != 1:
        raise ScorerError(f"scorer {name}: the last layer gives {layers[-1][0].shape[0]} outputs, not one score")
    return tuple(layers)


def clip_width(clip_cfg: Any) -> int | None:
    """The image-embedding width of the configured CLIP model, read from its config without
    loading weights (a local-dir model's open_clip_config.json, or open_clip's named config);
    None if unknown."""
    name = clip_cfg.model
    local = name.removeprefix("local-dir:")
    if name.startswith("local-dir:") or Path(local).is_dir():
        try:
            return int(json.loads((Path(local) / "open_clip_config.json").read_text())["model_cfg"]["embed_dim"])
        except (OSError, KeyError, ValueError):
            return None
    try:
        import open_clip

        cfg = open_clip.get_model_config(name)
    except (ImportError, RuntimeError):
        return None
    return int(cfg["embed_dim"]) if cfg and "embed_dim" in cfg else None


def load_heads(scorers: list[Any], clip_cfg: Any) -> list[ScoreHead]:
    """Every configured head, checked against the CLIP model's width (ScorerError if any is wrong)."""
    heads = [ScoreHead.load(s) for s in scorers]
    check_widths(heads, clip_width(clip_cfg), clip_cfg.model)
    return heads


def check_widths(heads: list[ScoreHead], width: int | None, model: str) -> None:
    """Refuse a head whose input width is not the CLIP model's embedding width.

    >>> head = ScoreHead("aesthetic", ((np.ones((1, 768), np.float32), np.zeros(1, np.float32)),))
    >>> check_widths([head], 512, "ViT-B-32")
    Traceback (most recent call last):
    ...
    weaverdata.models.scorers.ScorerError: scorer aesthetic: its head takes 768-wide CLIP embeddings, but ViT-B-32 makes 512-wide ones (a head is trained for one CLIP model: use the head made for this one, or the CLIP model the head was made for)
    """
    for h in heads:
        if width is not None and h.width != width:
            raise ScorerError(f"scorer {h.name}: its head takes {h.width}-wide CLIP embeddings, but {model} makes {width}-wide ones "
                              "(a head is trained for one CLIP model: use the head made for this one, or the CLIP model the head was made for)")


def verdicts(heads: list[ScoreHead], scorers: list[Any], embeddings: np.ndarray) -> tuple[dict[str, np.ndarray], list[tuple[int, str, str]]]:
    """Every head's scores, and (row, reason, detail) for each row a threshold rejects (the
    first head that rejects it gives the reason ``score_<name>``). Pure."""
    scores: dict[str, np.ndarray] = {}
    rejected: dict[int, tuple[str, str]] = {}
    for head, cfg in zip(heads, scorers):
        s = head.score(embeddings)
        scores[head.name] = s
        if cfg.threshold is None:
            continue
        bad = (s < cfg.threshold) if cfg.keep == "above" else (s > cfg.threshold)
        for row in np.flatnonzero(bad).tolist():
            rel = "under" if cfg.keep == "above" else "over"
            rejected.setdefault(row, (f"score_{head.name}", f"{head.name} score {s[row]:.4f} {rel} the threshold {cfg.threshold}"))
    return scores, [(row, reason, detail) for row, (reason, detail) in sorted(rejected.items())]


def build_tiny_head(path: str | Path, width: int, *, hidden: tuple[int, ...] = (16,), seed: int = 0) -> Path:
    """A head with RANDOM weights (``layers.<i>.weight`` / ``bias``, as nn.Sequential saves them),
    for tests and demos only: its scores mean nothing."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    sizes = [width, *hidden, 1]
    tensors = {}
    for k, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        tensors[f"layers.{2 * k}.weight"] = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)
        tensors[f"layers.{2 * k}.bias"] = np.zeros(n_out, dtype=np.float32)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"weaverdata": "RANDOM WEIGHTS - for tests and demos only; scores carry no meaning"})
    return out
