"""The sequence layout that training and decoding share (DESIGN.md, "Sequence layout").

Frame t is a block `[N image tokens][A action tokens]` of length L = N + A, blocks in time
order: [f0 a0 f1 a1 ...]. The action after frame t is what the player did at t; it conditions
frame t+1. A token's position is `frame * L + slot`. The prev-frame hint of a token is the
previous frame's token at the same slot (id K, one past the image codes, means "none").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from worldsim.model import ModelConfig


def interleave(frames_BFN: torch.Tensor, actions_BFA: torch.Tensor) -> torch.Tensor:
    """(B, F, N) + (B, F, A) -> (B, F*L): [f0 a0 f1 a1 ...]."""
    return torch.cat([frames_BFN, actions_BFA], dim=2).flatten(1)


def prev_frame_tokens(frames_BFN: torch.Tensor, none_id: int) -> torch.Tensor:
    """(B, F, N): frame b-1's token at each slot of frame b; `none_id` for frame 0."""
    first = torch.full_like(frames_BFN[:, :1], none_id)
    return torch.cat([first, frames_BFN[:, :-1]], dim=1)


def ar_inputs(cfg: "ModelConfig", frames_BFN: torch.Tensor, actions_BFA: torch.Tensor
              ) -> dict[str, torch.Tensor]:
    """Next-token inputs for F frames and their actions: "tokens", "positions" and "prev" (B,
    S-1) with S = F*L, and the "targets" (B, S-1) they predict, "loss_mask" True where a target
    is an image token of frames 1.. (frame 0 is context only)."""
    b, f, n = frames_BFN.shape
    K = cfg.codebook_size
    seq = interleave(frames_BFN, actions_BFA)  # (B, S)
    s = seq.shape[1]
    # The prev-frame hint belongs to the token being predicted, so it is shifted like targets.
    hints = interleave(prev_frame_tokens(frames_BFN, K), torch.full_like(actions_BFA, K))
    slot = torch.arange(s, device=seq.device) % cfg.block_len
    frame = torch.arange(s, device=seq.device) // cfg.block_len
    is_loss = (slot < n) & (frame >= 1)  # targets that are image tokens of frames >= 1
    return {"tokens": seq[:, :-1], "positions": torch.arange(s - 1, device=seq.device).expand(b, -1),
            "prev": hints[:, 1:], "targets": seq[:, 1:], "loss_mask": is_loss[1:].expand(b, -1)}


def block_causal(n_blocks: int, block_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean (T, T) with T = n_blocks * block_len, True = may attend: every token sees its own
    block and the blocks before it."""
    blk = torch.arange(n_blocks * block_len, device=device) // block_len
    return blk[None, :] <= blk[:, None]
