"""The planner's training mix: generation (proxy) samples and understanding samples at a ratio. Pure.

Wan-Weaver trains the planner on 5 textual-proxy generation samples to 1 understanding sample
(image question-answer chats); without generation data the planner never learns to open an
image. :func:`mix_plan` decides, for a seed, which samples go in and in which order: all the
generation samples (or as many as the understanding pool allows, when it is the short side),
and ``round(n_generation / ratio)`` understanding samples, interleaved so that every window of
``ratio + 1`` consecutive samples holds close to the ratio. Same inputs and seed, same plan.
"""

from __future__ import annotations

import numpy as np


def mix_counts(n_generation: int, n_understanding: int, ratio: float) -> tuple[int, int]:
    """How many of each to take: the most generation samples such that
    ``round(gen / ratio) <= n_understanding``."""
    if ratio <= 0:
        raise ValueError("ratio must be > 0 (generation samples per understanding sample)")
    gen = n_generation
    und = int(round(gen / ratio))
    if und > n_understanding:
        und = n_understanding
        gen = min(n_generation, int(np.floor((und + 0.5) * ratio - 1e-9)))
        while gen > 0 and int(round(gen / ratio)) > und:
            gen -= 1
    return gen, und


def mix_plan(n_generation: int, n_understanding: int, ratio: float = 5.0, seed: int = 0) -> list[tuple[str, int]]:
    """``[("generation" | "understanding", index), ...]``: shuffled picks, evenly interleaved."""
    gen, und = mix_counts(n_generation, n_understanding, ratio)
    rng = np.random.default_rng(seed)
    g_idx = np.sort(rng.permutation(n_generation)[:gen]) if gen else np.zeros(0, dtype=int)
    u_idx = np.sort(rng.permutation(n_understanding)[:und]) if und else np.zeros(0, dtype=int)
    g_idx, u_idx = rng.permutation(g_idx), rng.permutation(u_idx)
    total = gen + und
    # position of the k-th understanding sample: evenly spread (k + 0.5) * total / und
    u_pos = {int((k + 0.5) * total / und) for k in range(und)} if und else set()
    out: list[tuple[str, int]] = []
    gi = ui = 0
    for p in range(total):
        if p in u_pos and ui < und:
            out.append(("understanding", int(u_idx[ui])))
            ui += 1
        else:
            out.append(("generation", int(g_idx[gi])))
            gi += 1
    return out
