"""ar: one token per forward pass, the exact baseline for next-token models.

Algorithm: pass 1 writes the last token of frame t and action t into the cache and samples
frame t+1's first token from the action's output; pass i+1 writes token i and samples token
i+1. Raster order, causal attention over the cache.
Cost: N forward passes per frame (81 on Crafter's 9x9 grid, 336 on MineWorld's 14x24).
"""

from __future__ import annotations

import torch

from worldsim.model import WorldModel
from worldsim.inference.cache import KVCache
from worldsim.inference.common import FrameStats, Timer, prev_hint_for
from worldsim.inference.sampling import SamplingSettings, sample


@torch.inference_mode()
def decode(model: WorldModel, cache: KVCache, rows: list[int], last_frame_BN: torch.Tensor,
           action_BA: torch.Tensor, settings: SamplingSettings,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, FrameStats]:
    """Frame t (B, N) and action t (B, A) -> frame t+1 (B, N)."""
    cfg = model.cfg
    if cfg.objective != "ar":
        raise ValueError("the ar decoder needs a model trained with the ar objective")
    N, L, K = cfg.tokens_per_frame, cfg.block_len, cfg.codebook_size
    b, dev = last_frame_BN.shape[0], last_frame_BN.device
    timer = Timer(dev)
    stats = FrameStats()
    cache.new_block(rows)  # frame t+1's block (evicts the oldest when the window is full)
    base = (cache.current_block(rows) * L).to(dev)[:, None]  # (B, 1) logical start of block t+1
    # Pass 1 inputs: frame t's last token and action t, at the end of block t.
    tokens = torch.cat([last_frame_BN[:, -1:], action_BA], 1)  # (B, 1 + A)
    positions = base - L + N - 1 + torch.arange(1 + cfg.action_tokens, device=dev)
    frame = torch.empty(b, N, dtype=torch.long, device=dev)
    for i in range(N):
        t = tokens.shape[1]
        prev = prev_hint_for(positions, last_frame_BN, N, L, K)
        with timer:
            cache.prepare(rows, positions, torch.ones_like(tokens, dtype=torch.bool),
                          torch.ones(t, t, dtype=torch.bool, device=dev).tril()[None])
            logits = model.head(model.hidden(tokens, positions, cache=cache, prev_BT=prev)[:, -1],
                                image_only=True)
        stats.model_ms += timer.ms
        stats.passes += 1
        stats.tokens_per_pass.append(t)
        with timer:
            tok, _ = sample(logits, settings, generator)
        stats.sample_ms += timer.ms
        frame[:, i] = tok
        tokens, positions = tok[:, None], base + i
    return frame, stats
