"""Reference decode loops without a KV cache: every pass re-reads the whole context.

Slow but simple: the reference for the cached decoders, which give the same greedy frames
until the window fills (after that a cached block keeps keys computed with older frames in
view). Windows are re-based to position 0, as in training: the
context is the last `cfg.frames - 1` frames, so context plus the new frame fit the window.
  ar:               N passes per frame, one token each.
  block_diffusion:  `steps` passes per frame, MaskGIT unmasking on a cosine schedule.
The diagonal decoder has no loop here: with w = cols it is ar, and its own golden frames pin
the rest (tests/test_golden.py).
"""

from __future__ import annotations

import torch

from worldsim.model import WorldModel
from worldsim.sequence import ar_inputs, interleave, prev_frame_tokens
from worldsim.inference.decode_block_diffusion import masked_after
from worldsim.inference.sampling import SamplingSettings, sample


def _window(model: WorldModel, frames_BCN: torch.Tensor, actions_BCA: torch.Tensor):
    keep = model.cfg.frames - 1
    return frames_BCN[:, -keep:], actions_BCA[:, -keep:]


@torch.no_grad()
def ar_next_frame(model: WorldModel, frames_BCN: torch.Tensor, actions_BCA: torch.Tensor,
                  sampling: SamplingSettings, generator: torch.Generator | None = None) -> torch.Tensor:
    """Frames 0..c-1 and the actions taken at them -> frame c's tokens (B, N)."""
    cfg = model.cfg
    frames_BCN, actions_BCA = _window(model, frames_BCN, actions_BCA)
    b, c, n = frames_BCN.shape
    frames = torch.cat([frames_BCN, torch.zeros_like(frames_BCN[:, :1])], 1)
    actions = torch.cat([actions_BCA, torch.zeros_like(actions_BCA[:, :1])], 1)
    x = ar_inputs(cfg, frames, actions)
    tokens, start = x["tokens"].clone(), c * cfg.block_len
    for i in range(n):
        t = start + i  # the input position whose output predicts slot i
        logits = model(tokens[:, :t], x["positions"][:, :t], prev_BT=x["prev"][:, :t], causal=True)
        tok, _ = sample(logits[:, -1, : cfg.codebook_size], sampling, generator)
        if i + 1 < n:
            tokens[:, t] = tok
        frames[:, c, i] = tok
    return frames[:, c]


@torch.no_grad()
def block_diffusion_next_frame(model: WorldModel, frames_BCN: torch.Tensor,
                               actions_BCA: torch.Tensor, sampling: SamplingSettings,
                               steps: int = 8, generator: torch.Generator | None = None
                               ) -> torch.Tensor:
    cfg = model.cfg
    frames_BCN, actions_BCA = _window(model, frames_BCN, actions_BCA)
    b, c, n = frames_BCN.shape
    L, dev = cfg.block_len, frames_BCN.device
    clean = interleave(frames_BCN, actions_BCA)  # (B, c*L)
    # Queries: [clean context ; noisy frame c]. Clean blocks are block-causal; the noisy frame
    # sees every clean block and itself, as in training.
    qf = torch.cat([torch.arange(c).repeat_interleave(L), torch.full((n,), c)]).to(dev)
    qn = torch.cat([torch.zeros(c * L, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]).to(dev)
    mask = qn[:, None] | (~qn[None, :] & (qf[None, :] <= qf[:, None]))  # (Q, K) True = attend
    positions = torch.cat([torch.arange(c * L), c * L + torch.arange(n)]).to(dev).expand(b, -1)
    prev_noisy = prev_frame_tokens(torch.cat([frames_BCN, frames_BCN[:, -1:]], 1), cfg.codebook_size)[:, -1]
    prev = torch.cat([torch.full_like(clean, cfg.codebook_size), prev_noisy], 1)
    frame = torch.full((b, n), cfg.mask_id, dtype=torch.long, device=dev)
    for k, left in enumerate(masked_after(n, steps)):
        tokens = torch.cat([clean, frame], 1)
        logits = model(tokens, positions, mask=mask, prev_BT=prev)[:, c * L:, : cfg.codebook_size]
        tok, conf = sample(logits, sampling, generator)  # (B, N)
        masked = frame == cfg.mask_id
        conf = torch.where(masked, conf, torch.full_like(conf, -1.0))
        n_masked = int(masked[0].sum())
        reveal = n_masked - left
        order = conf.argsort(-1, descending=True)[:, :reveal]
        chosen = torch.zeros_like(masked).scatter(-1, order, True) & masked
        frame = torch.where(chosen, tok, frame)
    return frame


@torch.no_grad()
def rollout(model: WorldModel, context_BCN: torch.Tensor, context_actions_BCA: torch.Tensor,
            actions_BTA: torch.Tensor, sampling: SamplingSettings, steps: int = 8,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Dream T frames: context frames (B, C, N) with the actions taken at them, then the actions
    of the next T-1 steps (B, T-1, A) (the action after the last dreamed frame is not needed).
    `context_actions_BCA[:, -1]` leads to the first dreamed frame. Returns (B, T, N)."""
    frames, actions = context_BCN, context_actions_BCA
    out = []
    T = actions_BTA.shape[1] + 1
    for t in range(T):
        if model.cfg.objective == "ar":
            f = ar_next_frame(model, frames, actions, sampling, generator)
        else:
            f = block_diffusion_next_frame(model, frames, actions, sampling, steps, generator)
        out.append(f)
        if t + 1 < T:
            frames = torch.cat([frames, f[:, None]], 1)
            actions = torch.cat([actions, actions_BTA[:, t:t + 1]], 1)
    return torch.stack(out, 1)
