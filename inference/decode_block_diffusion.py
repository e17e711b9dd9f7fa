"""block_diffusion: a frame in K passes by confidence-ordered unmasking (MaskGIT, cosine schedule).

Algorithm: frame t+1 starts fully masked; each pass predicts every masked token, samples them
(temperature on logits), and keeps the most confident ones so that the masked count follows
cos(pi/2 * k/K); with a confidence threshold, every token above it is kept too (at least one
per pass), and the frame ends early once nothing is masked. The first pass is fused with the
clean pass that writes frame t and action t into the cache, exactly as in training.
Cost: K forward passes per frame (4-8), fewer with a threshold on easy frames.

Which drawn tokens a pass keeps (`peak`): MaskGIT keeps the most probable of the tokens drawn,
so a rare token drawn (a tree in a field) is put back and drawn again more often than a common
one, and a frame ends with fewer rare tokens than the model's distribution holds. With `peak`
a pass keeps the tokens at the positions whose distribution is most peaked, whatever was drawn
there. On the shipped Crafter model, which is sure of most tokens, the two give nearly the same
dreams (the same scroll agreement on both draws of windows, benchmarks/results/cpu/study).

Action guidance (`guidance` w > 0): every pass also runs the frame under the null action (the
space's no-op) in a shadow row of the cache that holds the same past, and samples from
`logits + w * (logits - null_logits)`, which pushes the frame away from what would have happened
had the player done nothing. The model needs no training for it; each pass runs twice the rows.
On the shipped Crafter model it lost: at w = 0.5 and 1 its dreams scroll with the player less
often and make more tiles from nowhere (benchmarks/results/cpu/study).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping

import torch

from worldsim.model import ModelConfig, WorldModel
from worldsim.inference.cache import KVCache
from worldsim.inference.common import FrameStats, StageClock, pass_logits, settings_from_dict
from worldsim.inference.graphs import PassGraphs
from worldsim.inference.sampling import SamplingSettings, sample

NAME = "block_diffusion"
OBJECTIVE = "block_diffusion"  # masked within the frame, causal across frames
AUTO = True  # `auto` takes it for block-diffusion models: the only decoder they have


@dataclass(frozen=True)
class Settings:
    steps: int = 4  # K: passes per frame (at most, with a threshold)
    threshold: float | None = None  # also unmask every token whose confidence is above this
    # Replay each pass shape from static buffers, captured as a CUDA graph on CUDA
    # (worldsim.inference.graphs); elsewhere it only adds copies.
    graphs: bool = False
    guidance: float = 0.0  # w: action guidance against the null action (0: off)
    # Which drawn tokens a pass keeps. False: the most probable of those drawn (MaskGIT). True:
    # those at the most peaked positions, whatever was drawn there, so that a rare token drawn
    # is kept as readily as a common one at the same position
    peak: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"block_diffusion steps must be at least 1, got {self.steps}")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError(f"block_diffusion threshold must lie in [0, 1], got {self.threshold}")
        if not self.guidance >= 0:
            raise ValueError(f"block_diffusion guidance must be at least 0, got {self.guidance}")
        if self.guidance and self.graphs:
            raise ValueError("block_diffusion guidance does not run with graphs")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Settings":
        return settings_from_dict(cls, d, NAME)


def passes_per_frame(cfg: ModelConfig, settings: Settings) -> int:
    """At most: with a threshold an easy frame takes fewer."""
    return settings.steps


def masked_after(n: int, steps: int) -> list[int]:
    """Tokens still masked after each of `steps` passes: cosine, strictly decreasing, ends at 0."""
    out, prev = [], n
    for k in range(steps):
        m = math.floor(n * math.cos(math.pi / 2 * (k + 1) / steps))
        m = min(m, prev - 1)  # at least one token per pass
        m = max(m, min(steps - k - 1, n - k - 1), 0)  # keep one per remaining pass when possible
        out.append(m)
        prev = m
    out[-1] = 0
    return out


@torch.inference_mode()
def decode(model: WorldModel, cache: KVCache, rows: list[int], last_frame_BN: torch.Tensor,
           action_BA: torch.Tensor, sampling: SamplingSettings,
           generator: torch.Generator | list[torch.Generator] | None = None,
           settings: Settings = Settings(), graphs: PassGraphs | None = None,
           guide: tuple[list[int], torch.Tensor] | None = None) -> tuple[torch.Tensor, FrameStats]:
    """Frame t (B, N) and action t (B, A) -> frame t+1 (B, N) in at most `settings.steps` passes.

    Without a threshold nothing here waits for the device: every pass's count of tokens to
    unmask is known in advance, so the host queues all passes back to back. With `graphs`,
    passes replay from static buffers (see `worldsim.inference.graphs`). With guidance, `guide`
    is (the shadow row of each row, the null action's tokens (A,)); the shadow rows are
    overwritten."""
    cfg = model.cfg
    if cfg.objective != OBJECTIVE:
        raise ValueError("the block_diffusion decoder needs a model trained with block diffusion")
    steps, threshold = settings.steps, settings.threshold
    N, L, K = cfg.tokens_per_frame, cfg.block_len, cfg.codebook_size
    b, dev = last_frame_BN.shape[0], last_frame_BN.device
    clock = StageClock(dev)
    stats = FrameStats()
    w = settings.guidance
    if w:  # rows, then their shadows under the null action, in one batch
        if guide is None:
            raise ValueError("block_diffusion guidance needs shadow cache rows: make the engine "
                             "with a guidance decoder")
        shadow, null_A = guide
        cache.copy_rows(rows, shadow)
        rows = list(rows) + list(shadow)
        last_frame_BN = last_frame_BN.repeat(2, 1)
        action_BA = torch.cat([action_BA, null_A.to(action_BA).expand_as(action_BA)])
    branches = 2 if w else 1
    cache.new_block(rows)  # block t: frame t + action t
    # Positions are planned on the host; `prepare` hands back their device copy.
    base_t = cache.current_block(rows)[:, None] * L  # (B, 1)
    noisy_pos = base_t + L + torch.arange(N)  # frame t+1 at the next block
    frame = torch.full((b, N), cfg.mask_id, dtype=torch.long, device=dev)
    # Pass 1 is [clean frame t + action t ; noisy frame t+1]: clean tokens see their own block
    # (and the cache), noisy tokens see everything, as in training.
    clean = torch.cat([last_frame_BN, action_BA], 1)  # (B, L)
    tokens = torch.cat([clean, frame.repeat(branches, 1)], 1)
    positions = torch.cat([base_t + torch.arange(L), noisy_pos], 1)
    persist = torch.arange(L + N) < L  # (L + N,)
    new_mask = torch.ones(1, L + N, L + N, dtype=torch.bool, device=dev)
    new_mask[:, :L, L:] = False
    prev = torch.cat([torch.full_like(clean, K), last_frame_BN], 1)
    schedule = masked_after(N, steps)
    run = graphs.run if graphs is not None else partial(pass_logits, model, cache)
    for k in range(steps):
        with clock("model"):
            pos = cache.prepare(rows, positions, persist[None].expand(len(rows), -1), new_mask)
            logits = run(tokens, pos, prev, N)  # (B, N, K), or (2B, N, K) with guidance
            if w:
                cond, null = logits.float().chunk(2)
                logits = cond + w * (cond - null)
        stats.passes += 1
        stats.tokens_per_pass.append(tokens.shape[1])
        with clock("sample"):
            masked = frame == cfg.mask_id
            if threshold is not None and k > 0 and isinstance(generator, (list, tuple)):
                # Rows finish at different passes here. A finished row draws nothing more, so
                # that its session's generator does not move on in the passes its batch
                # partners still need (its next frames would then depend on its batch). This
                # path waits on the device for `done` anyway.
                live = masked.any(1).nonzero()[:, 0].tolist()
                tok = torch.full_like(frame, cfg.mask_id)
                conf = torch.full(frame.shape, -1.0, device=dev)
                if live:
                    tok[live], conf[live] = sample(logits[live], sampling, [generator[i] for i in live],
                                                   peak=settings.peak)
            else:
                tok, conf = sample(logits, sampling, generator, peak=settings.peak)
            conf = conf.masked_fill(~masked, -1.0)
            if threshold is None:  # the schedule alone: the same count for every row
                n = (N if k == 0 else schedule[k - 1]) - schedule[k]
                chosen = torch.zeros_like(masked).scatter_(1, conf.topk(n, 1).indices, True)
            else:
                reveal = (masked.sum(1) - schedule[k]).clamp(min=0)  # (B,)
                reveal = torch.maximum(reveal, (conf > threshold).sum(1)).clamp(min=1)
                rank = conf.argsort(1, descending=True).argsort(1)
                chosen = (rank < reveal[:, None]) & masked
            frame = torch.where(chosen, tok, frame)
            # With a threshold the frame may finish early, which only the device knows.
            done = k == steps - 1 or (threshold is not None and not bool((frame == cfg.mask_id).any()))
        if done:
            break
        # Later passes: the noisy frame alone, against the cache that now holds block t.
        tokens, positions, prev = frame.repeat(branches, 1), noisy_pos, last_frame_BN
        persist = torch.zeros(N, dtype=torch.bool)
        new_mask = None  # the noisy tokens all see each other (and, once the window is full,
        # every cached slot too: the cache then plans an unmasked pass)
    return frame, clock.add_to(stats)
