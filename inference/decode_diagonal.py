"""diagonal: MineWorld's diagonal decoding for next-token models, training-free.

Algorithm: row r starts once row r-1 has w tokens, and every pass samples one token for each
active row, so the frame fills along a diagonal front. A row's first token is predicted from the
position of the previous row's last token; until that token exists, the previous frame's token
at that slot stands in (as MineWorld does) and is not written to the cache. Attention is
causal by position, so no token sees a later one in raster order.
Cost: (rows-1)*w + cols forward passes per frame (25 at w=2 on 9x9; 50 on 14x24); w = cols is `ar`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from worldsim.model import ModelConfig, WorldModel
from worldsim.inference.cache import KVCache
from worldsim.inference.common import FrameStats, StageClock, prev_hint_for, settings_from_dict
from worldsim.inference.graphs import PassGraphs
from worldsim.inference.sampling import SamplingSettings, sample

NAME = "diagonal"
OBJECTIVE = "ar"  # training-free: any next-token model
AUTO = True  # `auto` takes it for next-token models: ar's frames' quality in far fewer passes


@dataclass(frozen=True)
class Settings:
    window: int = 2  # w: how far a row runs ahead of the next; w >= cols is `ar`

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"diagonal window must be at least 1, got {self.window}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Settings":
        return settings_from_dict(cls, d, NAME)


def passes_per_frame(cfg: ModelConfig, settings: Settings) -> int:
    rows, cols = cfg.grid
    return (rows - 1) * min(settings.window, cols) + cols


@torch.inference_mode()
def decode(model: WorldModel, cache: KVCache, rows: list[int], last_frame_BN: torch.Tensor,
           action_BA: torch.Tensor, sampling: SamplingSettings,
           generator: torch.Generator | list[torch.Generator] | None = None,
           settings: Settings = Settings(), graphs: PassGraphs | None = None
           ) -> tuple[torch.Tensor, FrameStats]:
    """Frame t (B, N) and action t (B, A) -> frame t+1 (B, N). `graphs` is not used: a
    diagonal pass changes shape from one to the next."""
    cfg = model.cfg
    if cfg.objective != OBJECTIVE:
        raise ValueError("the diagonal decoder needs a model trained with the ar objective")
    R, C = cfg.grid
    N, L, K, A = cfg.tokens_per_frame, cfg.block_len, cfg.codebook_size, cfg.action_tokens
    w = min(settings.window, C)
    b, dev = last_frame_BN.shape[0], last_frame_BN.device
    clock = StageClock(dev)
    stats = FrameStats()
    cache.new_block(rows)
    base = cache.current_block(rows)[:, None] * L  # (B, 1) logical start of block t+1, on the host
    frame = torch.zeros(b, N, dtype=torch.long, device=dev)
    sampled_at: dict[int, int] = {}  # slot -> pass that sampled it
    persisted: set[int] = set()
    for p in range(passes_per_frame(cfg, settings)):
        # Each input: (token (B,), position offset from `base`, persist, slot it predicts or -1).
        inputs: list[tuple[torch.Tensor, int, bool, int]] = []
        if p == 0:  # frame t's last token and action t close block t; the action predicts (0, 0)
            inputs.append((last_frame_BN[:, N - 1], N - 1 - L, True, -1))
            for j in range(A):
                inputs.append((action_BA[:, j], N - L + j, True, 0 if j == A - 1 else -1))
        for r in range(R):
            c = p - r * w
            if not 0 <= c < C or (r == 0 and c == 0):
                continue
            if c == 0:  # row start, predicted from the slot of the previous row's last token
                s = r * C - 1
                real = sampled_at.get(s, p) < p
                inputs.append((frame[:, s] if real else last_frame_BN[:, s], s, real, r * C))
                if real:
                    persisted.add(s)
            else:
                s = r * C + c - 1
                inputs.append((frame[:, s], s, True, s + 1))
                persisted.add(s)
        for s, q in sampled_at.items():  # finished tokens not yet written (rows' last tokens)
            if q < p and s not in persisted and s != N - 1:
                inputs.append((frame[:, s], s, True, -1))
                persisted.add(s)
        inputs.sort(key=lambda x: x[1])
        tokens = torch.stack([x[0] for x in inputs], 1)  # (B, T)
        offs = torch.tensor([x[1] for x in inputs])  # planned on the host
        persist = torch.tensor([x[2] for x in inputs])
        # Causal by position; a stand-in is seen by no one but itself.
        eye = torch.eye(len(inputs), dtype=torch.bool)
        new_mask = ((offs[None, :] <= offs[:, None]) & persist[None, :]) | eye
        predict = [(i, x[3]) for i, x in enumerate(inputs) if x[3] >= 0]
        with clock("model"):
            pos = cache.prepare(rows, base + offs, persist[None].expand(b, -1), new_mask[None])
            prev = prev_hint_for(pos, last_frame_BN, N, L, K)
            h = model.hidden(tokens, pos, cache=cache, prev_BT=prev)
            at = cache.to_device(torch.tensor([i for i, _ in predict]))  # no host wait on CUDA
            logits = model.head(h.index_select(1, at), image_only=True)  # (B, P, K)
        stats.passes += 1
        stats.tokens_per_pass.append(len(inputs))
        with clock("sample"):
            tok, _ = sample(logits, sampling, generator)
        for j, (_, s) in enumerate(predict):
            frame[:, s] = tok[:, j]
            sampled_at[s] = p
    return frame, clock.add_to(stats)
