"""User models plugged into the trainers as `module:Class` (tests of the plug, not of the models)."""

from __future__ import annotations

import torch
from torch import nn


class GruLM(nn.Module):
    """A small GRU language model with the planner's contract: forward(input_ids, position_ids)
    returns logits; get_input_embeddings() and resize_token_embeddings(n) grow the vocabulary."""

    def __init__(self, vocab: int = 3000, dim: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def resize_token_embeddings(self, n: int) -> None:
        old_e, old_h = self.embed, self.head
        self.embed, self.head = nn.Embedding(n, old_e.embedding_dim), nn.Linear(old_h.in_features, n)
        with torch.no_grad():
            self.embed.weight[: old_e.num_embeddings] = old_e.weight
            self.head.weight[: old_h.out_features] = old_h.weight
            self.head.bias[: old_h.out_features] = old_h.bias

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.rnn(self.embed(input_ids))[0])


class ConvFlow(nn.Module):
    """A tiny conv generator with the visualizer's contract: the same constructor keywords as
    TinyDiT and forward(x_t, t, text, refs, ref_mask) -> velocity."""

    def __init__(self, resolution: int = 32, max_refs: int = 4, text_dim: int = 512, width: int = 16, **_):
        super().__init__()
        self.text = nn.Linear(text_dim + 1, width)
        self.inp = nn.Conv2d(6, width, 3, padding=1)
        self.out = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x_t, t, text, refs, ref_mask):
        if refs.shape[1]:
            w = ref_mask.float()[:, :, None, None, None]
            ref = (refs * w).sum(1) / w.sum(1).clamp_min(1)
        else:
            ref = torch.zeros_like(x_t)
        cond = self.text(torch.cat([text, t[:, None]], -1))[:, :, None, None]
        return self.out(torch.relu(self.inp(torch.cat([x_t, ref], 1)) + cond))
