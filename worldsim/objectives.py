"""Training objectives over windows of F frames: `ar` (next token) and `block_diffusion`.

Both take frame tokens (B, F, N) and action tokens (B, F, A) and return a scalar loss. The first
frame of a window is context only: no loss is taken on it, since at play the engine always
starts from real frames.

`ar`: the interleaved sequence [f0 a0 f1 a1 ...] under a causal mask; cross-entropy on image
tokens of frames 1..F-1. Actions are inputs, never targets.

`block_diffusion` (BD3-LM's vectorised form): the input is [x_noisy ; x_clean].
- x_clean holds blocks 0..F-2 (no noisy frame attends to the last block, so it is left out);
- x_noisy holds the image tokens of frames 1..F-1, each frame masked at its own ratio drawn
  from a cosine schedule, at the same positions as in x_clean;
- noisy frame b attends to itself (both ways) and to clean blocks before b; action b-1 sits in
  clean block b-1, so frame b sees the action that led to it;
- clean block b (frame b and action b) attends to clean blocks up to and including b;
- the loss covers masked image tokens only.
At play this is exactly what the KV cache holds: finished clean blocks, then one noisy frame.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

from worldsim.model import ModelConfig, WorldModel
from worldsim.sequence import ar_inputs, interleave, prev_frame_tokens


@lru_cache(maxsize=8)
def block_diffusion_mask(frames: int, n: int, block_len: int, device: str = "cpu") -> torch.Tensor:
    """Boolean (T, T), True = may attend, for [noisy frames 1..F-1 ; clean blocks 0..F-2]."""
    nn_ = (frames - 1) * n
    t = nn_ + (frames - 1) * block_len
    q_frame = torch.cat([torch.arange(1, frames).repeat_interleave(n),
                         torch.arange(frames - 1).repeat_interleave(block_len)])
    q_noisy = torch.cat([torch.ones(nn_, dtype=torch.bool), torch.zeros(t - nn_, dtype=torch.bool)])
    qf, kf = q_frame[:, None], q_frame[None, :]
    qn, kn = q_noisy[:, None], q_noisy[None, :]
    noisy_rows = qn & ((kn & (kf == qf)) | (~kn & (kf < qf)))
    clean_rows = ~qn & ~kn & (kf <= qf)
    return (noisy_rows | clean_rows).to(device)


def mask_ratios(shape: tuple[int, ...], generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Cosine schedule (MaskGIT): ratio = cos(pi/2 * u), u ~ U(0, 1)."""
    u = torch.rand(shape, generator=generator).to(device)
    return torch.cos(math.pi / 2 * u)


def corrupt_context(frames_BFN: torch.Tensor, rate: float, k: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each image token with a uniformly random code with probability `rate`."""
    if rate <= 0:
        return frames_BFN
    hit = torch.rand(frames_BFN.shape, generator=generator).to(frames_BFN.device) < rate
    codes = torch.randint(0, k, frames_BFN.shape, generator=generator).to(frames_BFN.device)
    return torch.where(hit, codes, frames_BFN)


def block_diffusion_inputs(cfg: ModelConfig, frames_BFN: torch.Tensor, actions_BFA: torch.Tensor,
                           generator: torch.Generator | None = None, context_noise: float = 0.0
                           ) -> dict[str, torch.Tensor]:
    b, f, n = frames_BFN.shape
    K, L, dev = cfg.codebook_size, cfg.block_len, frames_BFN.device
    # What the model reads as context (clean blocks and previous-frame hints) may be corrupted;
    # what it must predict never is.
    context_BFN = corrupt_context(frames_BFN, context_noise, K, generator)
    clean = interleave(context_BFN[:, :-1], actions_BFA[:, :-1])  # (B, (F-1)*L)
    target = frames_BFN[:, 1:]  # (B, F-1, N)
    m = (mask_ratios((b, f - 1), generator, dev) * n).ceil().clamp(1, n)  # tokens to mask
    scores = torch.rand((b, f - 1, n), generator=generator).to(dev)
    rank = scores.argsort(-1).argsort(-1)
    masked = rank < m[..., None]  # (B, F-1, N)
    noisy = torch.where(masked, torch.full_like(target, cfg.mask_id), target)
    pos_clean = torch.arange((f - 1) * L, device=dev)
    pos_noisy = (torch.arange(1, f, device=dev)[:, None] * L + torch.arange(n, device=dev)).flatten()
    hints_noisy = prev_frame_tokens(context_BFN, K)[:, 1:].flatten(1)
    hints_clean = torch.full_like(clean, K)
    return {"tokens": torch.cat([noisy.flatten(1), clean], 1),
            "positions": torch.cat([pos_noisy, pos_clean]).expand(b, -1),
            "prev": torch.cat([hints_noisy, hints_clean], 1),
            "targets": torch.cat([target.flatten(1), clean], 1),
            "loss_mask": torch.cat([masked.flatten(1), torch.zeros_like(clean, dtype=torch.bool)], 1),
            "mask": block_diffusion_mask(f, n, L, str(dev))}


class Objective(nn.Module):
    """Wraps the model so that forward returns the loss (what DistributedDataParallel wraps)."""

    def __init__(self, model: WorldModel, context_noise: float = 0.0):
        super().__init__()
        self.model = model
        if context_noise and model.cfg.objective != "block_diffusion":
            raise ValueError("context noise is implemented for the block_diffusion objective only")
        self.context_noise = context_noise

    def forward(self, frames_BFN: torch.Tensor, actions_BFA: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (mean loss, number of loss tokens)."""
        cfg = self.model.cfg
        if cfg.objective == "ar":
            x = ar_inputs(cfg, frames_BFN, actions_BFA)
            h = self.model.hidden(x["tokens"], x["positions"], prev_BT=x["prev"], causal=True)
        else:
            x = block_diffusion_inputs(cfg, frames_BFN, actions_BFA, generator,
                                       self.context_noise if self.training else 0.0)
            h = self.model.hidden(x["tokens"], x["positions"], mask=x["mask"], prev_BT=x["prev"])
        sel = x["loss_mask"]
        # Only the positions with a loss go through the output head: the clean half of a block-
        # diffusion input and the action positions never need logits.
        logits = self.model.head(h[sel], image_only=True).float()
        return F.cross_entropy(logits, x["targets"][sel]), sel.sum()
