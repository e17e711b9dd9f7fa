"""ar: one token per forward pass, the exact baseline for next-token models.

Algorithm: pass 1 writes the last token of frame t and action t into the cache and samples
frame t+1's first token from the action's output; pass i+1 writes token i and samples token
i+1. Raster order, causal attention over the cache.
Cost: N forward passes per frame (81 on Crafter's 9x9 grid, 336 on MineWorld's 14x24).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from worldsim.model import ModelConfig, WorldModel
from worldsim.inference.cache import KVCache
from worldsim.inference.common import FrameStats, StageClock, pass_logits, prev_hint_for, settings_from_dict
from worldsim.inference.graphs import PassGraphs
from worldsim.inference.sampling import SamplingSettings, sample

NAME = "ar"
OBJECTIVE = "ar"  # the model must be trained with next-token prediction
AUTO = False  # `auto` takes diagonal for next-token models: the same model, fewer passes


@dataclass(frozen=True)
class Settings:
    """Nothing to set: one token per pass, in raster order."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Settings":
        return settings_from_dict(cls, d, NAME)


def passes_per_frame(cfg: ModelConfig, settings: Settings) -> int:
    return cfg.tokens_per_frame


@torch.inference_mode()
def decode(model: WorldModel, cache: KVCache, rows: list[int], last_frame_BN: torch.Tensor,
           action_BA: torch.Tensor, sampling: SamplingSettings,
           generator: torch.Generator | list[torch.Generator] | None = None,
           settings: Settings = Settings(), graphs: PassGraphs | None = None
           ) -> tuple[torch.Tensor, FrameStats]:
    """Frame t (B, N) and action t (B, A) -> frame t+1 (B, N). `graphs` is not used: only
    block diffusion replays its passes."""
    cfg = model.cfg
    if cfg.objective != OBJECTIVE:
        raise ValueError("the ar decoder needs a model trained with the ar objective")
    N, L, K = cfg.tokens_per_frame, cfg.block_len, cfg.codebook_size
    b, dev = last_frame_BN.shape[0], last_frame_BN.device
    clock = StageClock(dev)
    stats = FrameStats()
    cache.new_block(rows)  # frame t+1's block (evicts the oldest when the window is full)
    base = cache.current_block(rows)[:, None] * L  # (B, 1) logical start of block t+1, on the host
    # Pass 1 inputs: frame t's last token and action t, at the end of block t.
    tokens = torch.cat([last_frame_BN[:, -1:], action_BA], 1)  # (B, 1 + A)
    positions = base - L + N - 1 + torch.arange(1 + cfg.action_tokens)
    frame = torch.empty(b, N, dtype=torch.long, device=dev)
    causal = {t: torch.ones(t, t, dtype=torch.bool, device=dev).tril()[None] for t in (1, tokens.shape[1])}
    for i in range(N):
        t = tokens.shape[1]
        with clock("model"):
            pos = cache.prepare(rows, positions, torch.ones(b, t, dtype=torch.bool), causal[t])
            prev = prev_hint_for(pos, last_frame_BN, N, L, K)
            logits = pass_logits(model, cache, tokens, pos, prev, 1)[:, 0]  # (B, K)
        stats.passes += 1
        stats.tokens_per_pass.append(t)
        with clock("sample"):
            tok, _ = sample(logits, sampling, generator)
        frame[:, i] = tok
        tokens, positions = tok[:, None], base + i
    return frame, clock.add_to(stats)
