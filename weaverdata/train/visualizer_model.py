"""TinyDiT: a small diffusion transformer conditioned on reference images and a text embedding.

Tokens: the noisy target's patches (with position and timestep embeddings), one text token (the
open_clip text embedding, projected), one timestep token, and every reference image's patches
(with position and a per-slot embedding; missing references are masked out of attention). The
output head reads the target tokens and predicts the rectified-flow velocity of each patch. Any
`module:Class` with the same constructor keywords and forward signature can replace it.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, p*p*C)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    b = x.shape[0]
    x = x.reshape(b, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, h, w)


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class TinyDiT(nn.Module):
    def __init__(self, resolution: int = 32, channels: int = 3, patch: int = 4, dim: int = 128, depth: int = 4, heads: int = 4, text_dim: int = 512, max_refs: int = 4):
        super().__init__()
        if resolution % patch:
            raise ValueError(f"resolution {resolution} is not a multiple of patch {patch}")
        self.resolution, self.channels, self.patch, self.max_refs = resolution, channels, patch, max_refs
        n = (resolution // patch) ** 2
        d_in = patch * patch * channels
        self.target_in = nn.Linear(d_in, dim)
        self.ref_in = nn.Linear(d_in, dim)
        self.pos = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        self.ref_slot = nn.Parameter(torch.randn(max_refs, dim) * 0.02)
        self.text_in = nn.Linear(text_dim, dim)
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, d_in)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, refs: torch.Tensor, ref_mask: torch.Tensor) -> torch.Tensor:
        """x_t (B,C,H,W) at times t (B,) in [0, 1]; text (B, text_dim); refs (B,R,C,H,W) with
        ref_mask (B,R) True where a reference is present. Returns the velocity (B,C,H,W)."""
        b, c, h, w = x_t.shape
        time = self.time_mlp(timestep_features(t, self.pos.shape[-1]))
        target = self.target_in(patchify(x_t, self.patch)) + self.pos + time[:, None]
        parts = [target, self.text_in(text)[:, None], time[:, None]]
        masks = [torch.zeros(b, target.shape[1] + 2, dtype=torch.bool, device=x_t.device)]
        r = refs.shape[1]
        if r:
            ref_tokens = self.ref_in(patchify(refs.reshape(b * r, c, h, w), self.patch)).reshape(b, r, -1, self.pos.shape[-1])
            ref_tokens = ref_tokens + self.pos[:, None] + self.ref_slot[:r][None, :, None]
            parts.append(ref_tokens.reshape(b, -1, self.pos.shape[-1]))
            masks.append((~ref_mask)[:, :, None].expand(b, r, target.shape[1]).reshape(b, -1))
        hidden = self.blocks(torch.cat(parts, 1), src_key_padding_mask=torch.cat(masks, 1))
        return unpatchify(self.out(self.norm(hidden[:, : target.shape[1]])), self.patch, c, h, w)
