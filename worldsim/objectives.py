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

Two augmentations change only what the model reads as context, never what it must predict:
context noise (random codes in place of some context tokens) and context dreams (the context
frames after the first replaced, in some windows, by the model's own one-step dreams of them,
decoded as at play), so that training meets the kind of frames a long rollout feeds back.

A third, context stalls, changes the window: in some windows one step is played twice, the
first time without effect (its frame repeated), and no loss is taken on the repeated frame. A
dream that once fails to move its player has a history the real game rarely shows (a stall on
an open way) and, taught by real windows that a blocked move stays blocked, tends to stay
still from then on; the stalled windows show it that after a stall the next move goes through
wherever the way is open.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

from worldsim.inference.decode_block_diffusion import masked_after
from worldsim.inference.sampling import SamplingSettings, filtered_logits
from worldsim.model import ModelConfig, WorldModel
from worldsim.sequence import ar_inputs, interleave, prev_frame_tokens

# Context dreams are decoded as `worldsim play` decodes by default (temperature 0.8), in two
# confidence-ordered passes: the decoder's errors at a fraction of its four passes' cost.
DREAM_SAMPLING = SamplingSettings(temperature=0.8)
DREAM_PASSES = 2


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


def stall_windows(frames_BFN: torch.Tensor, actions_BFA: torch.Tensor, rate: float,
                  generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """In a fraction `rate` of the windows, step k (drawn from 0..F-3) is played twice: frame k
    and action k are repeated at k+1, the rest of the window follows one frame later, and its
    last frame is dropped. Returns (frames (B, F, N), actions (B, F, A), the repeated frames
    (B, F) bool, which take no loss), or the inputs and None when no window stalls."""
    b, f, _ = frames_BFN.shape
    pick = torch.rand(b, generator=generator) < rate
    k = torch.randint(0, max(f - 2, 1), (b,), generator=generator)
    if f < 3 or rate <= 0 or not bool(pick.any()):
        return frames_BFN, actions_BFA, None
    j = torch.arange(f)[None, :]  # (1, F): new index -> old index, j - 1 after the repeat
    src = torch.where(pick[:, None] & (j > k[:, None]), j - 1, j).to(frames_BFN.device)  # (B, F)
    repeated = (pick[:, None] & (j == k[:, None] + 1)).to(frames_BFN.device)
    frames = frames_BFN.gather(1, src[..., None].expand_as(frames_BFN))
    actions = actions_BFA.gather(1, src[..., None].expand_as(actions_BFA))
    return frames, actions, repeated


def block_diffusion_inputs(cfg: ModelConfig, frames_BFN: torch.Tensor, actions_BFA: torch.Tensor,
                           generator: torch.Generator | None = None, context_noise: float = 0.0,
                           context_BFN: torch.Tensor | None = None, noisy_BFN: torch.Tensor | None = None,
                           no_loss_BF: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The model's input for windows of real frames (B, F, N) and actions (B, F, A).

    `context_BFN` (B, F, N), if given, is what the model reads as frames instead of the real
    ones (dreamed frames); targets stay real. `noisy_BFN` (B, F-1, N), if given, is frames
    1..F-1 as the model sees them, the mask id where masked, instead of a drawn mask.
    `no_loss_BF` (B, F) bool, if given, marks frames on which no loss is taken."""
    b, f, n = frames_BFN.shape
    K, L, dev = cfg.codebook_size, cfg.block_len, frames_BFN.device
    # What the model reads as context (clean blocks and previous-frame hints) may be corrupted;
    # what it must predict never is.
    context_BFN = corrupt_context(frames_BFN if context_BFN is None else context_BFN, context_noise,
                                  K, generator)
    clean = interleave(context_BFN[:, :-1], actions_BFA[:, :-1])  # (B, (F-1)*L)
    target = frames_BFN[:, 1:]  # (B, F-1, N)
    if noisy_BFN is None:
        m = (mask_ratios((b, f - 1), generator, dev) * n).ceil().clamp(1, n)  # tokens to mask
        scores = torch.rand((b, f - 1, n), generator=generator).to(dev)
        rank = scores.argsort(-1).argsort(-1)
        masked = rank < m[..., None]  # (B, F-1, N)
        noisy = torch.where(masked, torch.full_like(target, cfg.mask_id), target)
    else:
        noisy, masked = noisy_BFN, noisy_BFN == cfg.mask_id
    loss_BFN = masked if no_loss_BF is None else masked & ~no_loss_BF[:, 1:, None]
    pos_clean = torch.arange((f - 1) * L, device=dev)
    pos_noisy = (torch.arange(1, f, device=dev)[:, None] * L + torch.arange(n, device=dev)).flatten()
    hints_noisy = prev_frame_tokens(context_BFN, K)[:, 1:].flatten(1)
    hints_clean = torch.full_like(clean, K)
    return {"tokens": torch.cat([noisy.flatten(1), clean], 1),
            "positions": torch.cat([pos_noisy, pos_clean]).expand(b, -1),
            "prev": torch.cat([hints_noisy, hints_clean], 1),
            "targets": torch.cat([target.flatten(1), clean], 1),
            "loss_mask": torch.cat([loss_BFN.flatten(1), torch.zeros_like(clean, dtype=torch.bool)], 1),
            "mask": block_diffusion_mask(f, n, L, str(dev))}


@torch.no_grad()
def dream_frames(model: WorldModel, frames_BFN: torch.Tensor, actions_BFA: torch.Tensor,
                 generator: torch.Generator | None = None, passes: int = DREAM_PASSES,
                 sampling: SamplingSettings = DREAM_SAMPLING) -> torch.Tensor:
    """Frames 1..F-1 of each window (B, F-1, N) as the model dreams each one step ahead from the
    real frames and actions before it: `passes` confidence-ordered passes on the block-diffusion
    decoder's schedule, all frames of the window at once (one forward per pass)."""
    cfg = model.cfg
    b, f, n = frames_BFN.shape
    dream = torch.full((b, f - 1, n), cfg.mask_id, dtype=frames_BFN.dtype, device=frames_BFN.device)
    schedule = masked_after(n, passes)
    for k in range(passes):
        x = block_diffusion_inputs(cfg, frames_BFN, actions_BFA, noisy_BFN=dream)
        h = model.hidden(x["tokens"], x["positions"], mask=x["mask"], prev_BT=x["prev"])
        logits = filtered_logits(model.head(h[:, :(f - 1) * n], image_only=True), sampling)
        # Gumbel-max with noise from the (host) generator: a sample from softmax(logits), drawn
        # the same way on any device.
        u = torch.rand(logits.shape, generator=generator).to(logits.device).clamp_(1e-10, 1 - 1e-7)
        tok = (logits - (-u.log()).log()).argmax(-1).view(b, f - 1, n)
        conf = logits.softmax(-1).gather(-1, tok.view(b, -1, 1)).view(b, f - 1, n)
        masked = dream == cfg.mask_id
        count = (n if k == 0 else schedule[k - 1]) - schedule[k]  # tokens each frame reveals now
        top = conf.masked_fill(~masked, -1.0).topk(count, -1).indices
        chosen = torch.zeros_like(masked).scatter_(-1, top, True)
        dream = torch.where(chosen, tok, dream)
    return dream


def dream_context(model: WorldModel, frames_BFN: torch.Tensor, actions_BFA: torch.Tensor, rate: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The frames (B, F, N) the model reads as context: in a fraction `rate` of the windows,
    frames 1..F-2 are replaced by the model's one-step dreams of them. Frame 0 stays real (play
    starts from real frames) and frame F-1 is never context."""
    b, f, _ = frames_BFN.shape
    pick = torch.rand(b, generator=generator).to(frames_BFN.device) < rate
    if f < 3 or rate <= 0 or not bool(pick.any()):
        return frames_BFN
    dreams = dream_frames(model, frames_BFN[pick, :-1], actions_BFA[pick, :-1], generator)
    context = frames_BFN.clone()
    context[pick, 1:-1] = dreams[:, :f - 2]
    return context


class Objective(nn.Module):
    """Wraps the model so that forward returns the loss (what DistributedDataParallel wraps)."""

    def __init__(self, model: WorldModel, context_noise: float = 0.0, context_dreams: float = 0.0,
                 context_stalls: float = 0.0):
        super().__init__()
        self.model = model
        if (context_noise or context_dreams or context_stalls) and model.cfg.objective != "block_diffusion":
            raise ValueError("context noise, dreams and stalls are implemented for the "
                             "block_diffusion objective only")
        self.context_noise = context_noise
        self.context_dreams = context_dreams
        self.context_stalls = context_stalls

    def forward(self, frames_BFN: torch.Tensor, actions_BFA: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (mean loss, number of loss tokens)."""
        cfg = self.model.cfg
        b, f, n = frames_BFN.shape
        # Frame 0 is context only: a 1-frame window has no token to take a loss on, and its mean
        # over nothing is NaN (ar) or an empty sequence the model cannot run (block_diffusion).
        if f < 2:
            raise ValueError(f"a training window needs at least 2 frames (the first is context), got {f}")
        if n != cfg.tokens_per_frame or tuple(actions_BFA.shape) != (b, f, cfg.action_tokens):
            raise ValueError(f"expected frames (B, F, {cfg.tokens_per_frame}) and actions "
                             f"(B, F, {cfg.action_tokens}), got {tuple(frames_BFN.shape)} and "
                             f"{tuple(actions_BFA.shape)}")
        if cfg.objective == "ar":
            x = ar_inputs(cfg, frames_BFN, actions_BFA)
            h = self.model.hidden(x["tokens"], x["positions"], prev_BT=x["prev"], causal=True)
        else:
            context, no_loss = None, None
            if self.training and self.context_stalls > 0:
                frames_BFN, actions_BFA, no_loss = stall_windows(frames_BFN, actions_BFA,
                                                                 self.context_stalls, generator)
            if self.training and self.context_dreams > 0:
                context = dream_context(self.model, frames_BFN, actions_BFA, self.context_dreams, generator)
            x = block_diffusion_inputs(cfg, frames_BFN, actions_BFA, generator,
                                       self.context_noise if self.training else 0.0, context,
                                       no_loss_BF=no_loss)
            h = self.model.hidden(x["tokens"], x["positions"], mask=x["mask"], prev_BT=x["prev"])
        sel = x["loss_mask"]
        # Only the positions with a loss go through the output head: the clean half of a block-
        # diffusion input and the action positions never need logits.
        logits = self.model.head(h[sel], image_only=True).float()
        return F.cross_entropy(logits, x["targets"][sel]), sel.sum()
