"""What the decoders share: per-frame stats, prefill, and the inputs of autoregressive passes.

Cache invariant between frames (every decoder keeps it): the cache holds every finished block
before the newest frame. For autoregressive models the newest frame's tokens are in the cache
except its last one; for block diffusion none of them are (the fused pass writes the whole
block). Either way the newest frame's tokens and the action taken at it are what the next
`decode` call writes first.
"""

from __future__ import annotations

import time
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Iterator, Mapping, TypeVar

import torch

from worldsim.model import WorldModel
from worldsim.sequence import ar_inputs, block_causal, interleave
from worldsim.inference.cache import KVCache

S = TypeVar("S")


def settings_from_dict(cls: type[S], d: Mapping[str, Any], decoder: str) -> S:
    """A decoder's frozen settings from a plain dict (a config message, a command line), strictly:
    an unknown key or a value of the wrong type raises ValueError with one line that names it;
    ranges are checked by the settings' own `__post_init__`."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{decoder} decoder settings must be a map, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"unknown {decoder} decoder setting(s) {', '.join(map(repr, unknown))}; "
                         f"it takes {', '.join(known) or 'none'}")
    values = {}
    for name, v in d.items():
        allowed = typing.get_args(hints[name]) or (hints[name],)
        ok = (v is None and type(None) in allowed) or \
            (isinstance(v, bool) and bool in allowed) or \
            (isinstance(v, int) and not isinstance(v, bool) and (int in allowed or float in allowed)) or \
            (isinstance(v, float) and float in allowed)
        if not ok:
            want = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
            raise ValueError(f"{decoder} decoder setting {name!r} must be {want}, got {v!r}")
        values[name] = float(v) if float in allowed and isinstance(v, int) and not isinstance(v, bool) else v
    return cls(**values)


@dataclass
class FrameStats:
    passes: int = 0  # model forward passes for this frame
    model_ms: float = 0.0
    sample_ms: float = 0.0
    decode_ms: float = 0.0  # image decode, filled in by the engine
    tokens_per_pass: list[int] = field(default_factory=list)

    @property
    def total_ms(self) -> float:
        return self.model_ms + self.sample_ms + self.decode_ms


class StageClock:
    """Time per stage of a frame ("model", "sample", "decode") without making the host wait.

    On CUDA each stage is bracketed by events and read once, in `add_to`, after the frame's last
    kernel; a sync per stage would stall the host between passes, and the host queueing a
    pass's kernels while the device runs the previous one is where GPU frame rates come from.
    On other devices a stage is its wall time."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.spans: list[tuple[str, Any, Any]] = []

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
        else:
            start = time.perf_counter()
            yield
            end = time.perf_counter()
        self.spans.append((stage, start, end))

    def add_to(self, stats: "FrameStats") -> "FrameStats":
        """Add the timed stages to `stats` (waits for the device on CUDA) and forget them."""
        if self.cuda and self.spans:
            self.spans[-1][2].synchronize()
        for stage, start, end in self.spans:
            ms = start.elapsed_time(end) if self.cuda else (end - start) * 1000
            setattr(stats, f"{stage}_ms", getattr(stats, f"{stage}_ms") + ms)
        self.spans.clear()
        return stats


def pass_logits(model: WorldModel, cache: KVCache, tokens_BT: torch.Tensor, pos_BT: torch.Tensor,
                prev_BT: torch.Tensor | None, keep: int) -> torch.Tensor:
    """One cached forward (planned by `cache.prepare`) -> image-code logits (B, keep, K) of its
    last `keep` tokens; the head runs on those alone."""
    h = model.hidden(tokens_BT, pos_BT, cache=cache, prev_BT=prev_BT)
    return model.head(h[:, -keep:], image_only=True)


def prev_hint_for(positions_BT: torch.Tensor, last_frame_BN: torch.Tensor, n: int, L: int,
                  none_id: int) -> torch.Tensor:
    """The prev-frame hint of autoregressive inputs: the last frame's token at the slot of the
    *next* position (the one this input predicts), or `none_id` when that is an action slot."""
    nxt = (positions_BT + 1) % L
    hint = last_frame_BN.gather(1, nxt.clamp(max=n - 1))
    return torch.where(nxt < n, hint, torch.full_like(hint, none_id))


@torch.inference_mode()
def prefill(model: WorldModel, cache: KVCache, rows: list[int], frames_BCN: torch.Tensor,
            actions_BCA: torch.Tensor) -> int:
    """Write context frames 0..C-1 with the actions taken at frames 0..C-2 into fresh cache rows.

    Block diffusion: blocks 0..C-2 (frame + action), block-causal. Autoregressive: the same plus
    frame C-1's tokens but its last, causal. Returns the number of forward passes (0 or 1)."""
    cfg = model.cfg
    L, N, dev = cfg.block_len, cfg.tokens_per_frame, frames_BCN.device
    cache.reset(rows)
    c = frames_BCN.shape[1]
    keep = min(c, cache.blocks)
    if c > keep:
        # Older context would be evicted anyway, but for the sinks: a session keeps its first
        # `sink` frames (each with the action taken at it) whatever follows, so those, then the
        # most recent ones, as a session that had stepped through the context would hold.
        idx = list(range(cache.sink)) + list(range(c - (keep - cache.sink), c))
        frames_BCN, actions_BCA = frames_BCN[:, idx], actions_BCA[:, idx[:-1]]
    b, c, _ = frames_BCN.shape
    if cfg.objective == "block_diffusion":
        if c == 1:
            return 0
        tokens = interleave(frames_BCN[:, :-1], actions_BCA)  # (B, (C-1)*L)
        for _ in range(c - 1):
            cache.new_block(rows)
        mask = block_causal(c - 1, L, dev)
        prev = torch.full_like(tokens, cfg.codebook_size)
    else:
        dummy = actions_BCA.new_zeros(b, 1, cfg.action_tokens)  # never read: it lies past the cut
        x = ar_inputs(cfg, frames_BCN, torch.cat([actions_BCA, dummy], 1))
        t = (c - 1) * L + N - 1  # everything before the last frame's last token
        tokens, prev = x["tokens"][:, :t], x["prev"][:, :t]
        for _ in range(c):
            cache.new_block(rows)
        if t == 0:  # one context frame of one token: nothing precedes the token to decode
            return 0
        mask = torch.ones(t, t, dtype=torch.bool, device=dev).tril()
    positions = torch.arange(tokens.shape[1]).expand(b, -1)  # planned on the host
    positions = cache.prepare(rows, positions, torch.ones(b, tokens.shape[1], dtype=torch.bool), mask[None])
    model.hidden(tokens, positions, cache=cache, prev_BT=prev)  # writes the cache; no logits needed
    return 1
