"""Sampling from logits: temperature (dividing logits), top-k, top-p, seeded generators.

`temperature == 0` is greedy (argmax). Probabilities returned are those of the tempered,
filtered distribution, which decoders use as confidences; greedy returns the untempered
probability of the argmax (tempered to 0, every argmax would have probability 1).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch


def _number(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off

    def __post_init__(self) -> None:
        # One line naming the bad value, here: a string failed with a TypeError, and a float
        # or bool top_k was taken and failed at the first draw, inside a frame.
        if not _number(self.temperature) or not 0 <= self.temperature < math.inf:  # NaN too
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if not _number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, numbers.Integral) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0: off), got {self.top_k!r}")


GREEDY = SamplingSettings(temperature=0.0)


def filtered_logits(logits_MV: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    x = logits_MV.float() / max(s.temperature, 1e-6)  # temperature divides logits
    if s.top_k and s.top_k < x.shape[-1]:
        kth = x.topk(s.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_x, order = x.sort(dim=-1, descending=True)
        cum = sorted_x.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_x.softmax(-1) > s.top_p  # keep the smallest set reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return x


def sample(logits_MV: torch.Tensor, s: SamplingSettings,
           generator: torch.Generator | list[torch.Generator] | None = None, peak: bool = False
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (tokens (...,), confidences (...,)) for logits (..., V): the probability of each
    chosen token, or with `peak` the highest probability at its position, whichever token was
    drawn there (so that a rare token drawn is as sure of its place as a common one).

    `generator` may be a list with one generator per row of the leading dimension (one per
    session), so that what a session draws does not depend on the batch it is stepped in."""
    if s.temperature == 0:
        probs = logits_MV.float().softmax(-1)
        conf, tok = probs.max(-1)
        return tok, conf
    probs = filtered_logits(logits_MV, s).softmax(-1)
    if isinstance(generator, (list, tuple)):
        if len(generator) != probs.shape[0]:  # zip would drop the rows past the shorter
            raise ValueError(f"one generator per row: {len(generator)} generators for {probs.shape[0]} rows")
        tok = torch.stack([torch.multinomial(p.reshape(-1, p.shape[-1]), 1, generator=g).view(p.shape[:-1])
                           for p, g in zip(probs, generator)])
    else:
        tok = torch.multinomial(probs.flatten(0, -2), 1, generator=generator).view(probs.shape[:-1])
    return tok, probs.amax(-1) if peak else probs.gather(-1, tok[..., None])[..., 0]
