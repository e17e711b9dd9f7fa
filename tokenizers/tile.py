"""The tile tokenizer: one code per tile, read from that tile alone, with the light factored out.

frames uint8 (B, H, W, 3) + daylight (B,) <-> codes (B, N), N = (H/p) * (W/p), row-major.

Why it exists: a code that flickers costs the world model loss on noise. The VQ tokenizer
(`tokenizers/image.py`) mixes each token with its neighbours (3x3 convolutions on the token grid)
and sees the daylight in the pixels, so as the light drifts about half of Crafter's day tokens
change from one frame to the next while only about 6% of the tiles change visibly. Here:

1. **Light out.** A light model maps a frame and its daylight back to the unlit canvas
   (`delight`), and the canvas and daylight forward to the expected frame (`render`). For
   Crafter (`light="crafter"`) it is the game's own blend, `d * canvas + (1 - d) * night(canvas)`,
   where `night` desaturates to 40%, tints towards (0, 16, 64) and, below daylight 0.5, mixes in
   uniform noise under a vignette; that map is affine per pixel, so it inverts exactly up to the
   frame's rounding and the noise, whose mean `render` draws. Only the map area is lit; the
   inventory rows below it are not. `light="none"` is the identity (any game without a light cycle).
2. **Tile by tile.** Each p x p tile of the canvas is looked up alone in a codebook of unlit tiles
   (nearest in squared error): a tile that does not change keeps its code whatever its
   neighbours do. On Crafter's 8-pixel tiles a tile is one texture (material, creature, item), so
   a few hundred codes reproduce day frames almost exactly.
3. **A codebook that does not split a texture.** `fit_codebook` first groups tiles that lie
   within a tolerance of each other (leader clustering, most frequent first), so the rounding
   noise of one texture can never become two codes, then merges the rarest groups by weighted
   k-means only if there are more groups than codes.

Daylight is not in the codes, so whoever decodes must supply it. Crafter's daylight is a clock,
a fixed function of the game step (`crafter_daylight`): the engine knows the step of every frame
it draws, from the step of its context (`Engine.open(..., start_step=...)`), and the episode
store records the daylight of every recorded frame. With `light="none"` no daylight is needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from worldsim.config import strict_from_dict
from worldsim.envs.crafter import CRAFTER_DAY_STEPS, crafter_daylight  # noqa: F401 (the game's clock)

LIGHTS = ("none", "crafter")
# Crafter's night: colour kept by `ImageEnhance.Color(...).enhance(0.4)`, then a 50% tint.
_SATURATION, _TINT_AMOUNT = 0.4, 0.5
_TINT = (0.0, 16.0, 64.0)
_NOISE_MEAN = (32.0 + 127.0) / 2  # the noise is uniform on [32, 127)
_LUMA = (0.299, 0.587, 0.114)  # PIL's "L" conversion


@dataclass
class TileTokenizerConfig:
    kind: str = "tile"
    height: int = 72
    width: int = 72
    patch: int = 8  # one token per patch x patch tile
    codebook_size: int = 256  # Crafter's day frames hold about 90 distinct tiles
    light: str = "crafter"  # the light model: "crafter" or "none"
    lit_rows: int = 7  # tile rows under the light (Crafter: the 9x7 map; the 2 inventory rows are not lit)

    def __post_init__(self) -> None:
        if self.kind != "tile":
            raise ValueError(f"a tile tokenizer config has kind 'tile', not {self.kind!r}")
        if self.height % self.patch or self.width % self.patch:
            raise ValueError(f"frame size {self.height}x{self.width} is not a multiple of patch {self.patch}")
        if self.light not in LIGHTS:
            raise ValueError(f"unknown light model {self.light!r}; choose one of {', '.join(LIGHTS)}")
        if not 0 <= self.lit_rows <= self.grid[0]:
            raise ValueError(f"lit_rows must lie in [0, {self.grid[0]}]")
        if self.codebook_size < 1:
            raise ValueError("codebook_size must be at least 1")

    @property
    def grid(self) -> tuple[int, int]:
        return self.height // self.patch, self.width // self.patch

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def tile_dim(self) -> int:
        return self.patch * self.patch * 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TileTokenizerConfig":
        return strict_from_dict(cls, d, "tile tokenizer")


PRESETS: dict[str, TileTokenizerConfig] = {
    "tiny": TileTokenizerConfig(height=32, width=32, patch=8, codebook_size=64, lit_rows=3),
    "crafter": TileTokenizerConfig(),
}


class TileTokenizer(nn.Module):
    """`encode(frames, light) -> codes_BN`, `decode(codes_BN, light) -> frames`; see the module doc."""

    uses_light = True  # encode and decode take the frames' daylight

    def __init__(self, cfg: TileTokenizerConfig):
        super().__init__()
        self.cfg = cfg
        # Unlit tiles in [0, 255], flattened (p, p, 3) row-major. A buffer, not a parameter:
        # the codebook is fitted (`fit_codebook`), not trained by gradient.
        self.register_buffer("codebook", torch.zeros(cfg.codebook_size, cfg.tile_dim))  # (K, D)
        self.register_buffer("vignette", _vignette(cfg), persistent=False)  # (H, W)

    @property
    def device(self) -> torch.device:
        return self.codebook.device

    def daylight_at(self, steps: np.ndarray) -> np.ndarray:
        """The daylight of frames at these game steps, by the light model's clock (float32)."""
        if self.cfg.light == "crafter":
            return crafter_daylight(steps)
        return np.ones(np.shape(steps), np.float32)

    # -- light ---------------------------------------------------------------------------------
    def _light_terms(self, light_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-pixel coefficients of `frame = a*c + g*luma(c) + b` on the lit rows:
        a, g (B, h, W, 1) and b (B, h, W, 3), h the lit pixel rows."""
        d = light_B.to(self.device, torch.float32).clamp(0, 1)[:, None, None, None]  # (B,1,1,1)
        lit = self.cfg.lit_rows * self.cfg.patch
        # Below daylight 0.5 a fraction mu of each pixel is noise (its mean is what we can draw).
        mu = (2 * (0.5 - d)).clamp_min(0) * self.vignette[None, :lit, :, None]  # (B, h, W, 1)
        keep = (1 - d) * (1 - mu)  # the night term's weight on the canvas
        a = d + keep * _TINT_AMOUNT * _SATURATION
        g = keep * _TINT_AMOUNT * (1 - _SATURATION)
        tint = torch.tensor(_TINT, device=self.device)
        b = (1 - d) * _TINT_AMOUNT * (mu * _NOISE_MEAN + tint)
        return a, g, b

    def delight(self, frames_BHWC: torch.Tensor, light_B: torch.Tensor | None) -> torch.Tensor:
        """uint8 frames -> float unlit canvas (B, H, W, 3) in [0, 255]."""
        x = frames_BHWC.to(self.device).float()
        if self.cfg.light == "none" or self.cfg.lit_rows == 0:
            return x
        lit = self.cfg.lit_rows * self.cfg.patch
        a, g, b = self._light_terms(_light(light_B, x.shape[0], self.device))
        y = x[:, :lit] + 0.5 - b  # + 0.5: Crafter truncates the blended frame to integers
        luma_w = torch.tensor(_LUMA, device=self.device)
        # luma(y) = (a + g) * luma(c), since the luma weights sum to 1; then solve for c.
        luma_c = (y * luma_w).sum(-1, keepdim=True) / (a + g)
        canvas = (y - g * luma_c) / a
        return torch.cat([canvas.clamp(0, 255), x[:, lit:]], 1)

    def render(self, canvas_BHWC: torch.Tensor, light_B: torch.Tensor | None) -> torch.Tensor:
        """float unlit canvas (B, H, W, 3) -> uint8 frames under the given daylight."""
        c = canvas_BHWC.float()
        if self.cfg.light != "none" and self.cfg.lit_rows:
            lit = self.cfg.lit_rows * self.cfg.patch
            a, g, b = self._light_terms(_light(light_B, c.shape[0], self.device))
            luma_w = torch.tensor(_LUMA, device=self.device)
            top = a * c[:, :lit] + g * (c[:, :lit] * luma_w).sum(-1, keepdim=True) + b
            c = torch.cat([top.floor(), c[:, lit:]], 1)  # floor: as the game truncates
        return c.round().clamp(0, 255).to(torch.uint8)

    # -- tiles ---------------------------------------------------------------------------------
    def tiles(self, canvas_BHWC: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) -> (B, N, p*p*3), tiles in row-major order."""
        p, (h, w) = self.cfg.patch, self.cfg.grid
        b = canvas_BHWC.shape[0]
        # The tile size is spelled out, not -1: with B = 0 a -1 is ambiguous and reshape fails.
        return canvas_BHWC.reshape(b, h, p, w, p, 3).permute(0, 1, 3, 2, 4, 5).reshape(b, h * w, p * p * 3)

    def untile(self, tiles_BND: torch.Tensor) -> torch.Tensor:
        p, (h, w) = self.cfg.patch, self.cfg.grid
        b = tiles_BND.shape[0]
        return tiles_BND.reshape(b, h, w, p, p, 3).permute(0, 1, 3, 2, 4, 5).reshape(b, h * p, w * p, 3)

    def nearest(self, tiles_MD: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """Index of the nearest code for each tile: (M,) int64."""
        e = self.codebook
        e2 = e.pow(2).sum(1)
        out = []
        for i in range(0, tiles_MD.shape[0], chunk):
            t = tiles_MD[i:i + chunk]
            # ||t - e||^2 = ||t||^2 - 2 t.e + ||e||^2; the first term does not change the argmin.
            out.append((e2[None, :] - 2 * t @ e.t()).argmin(1))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=self.device)

    # -- public API ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames_BHWC: torch.Tensor | np.ndarray,
               light: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """uint8 frames (B, H, W, 3) and daylight (B,) -> int64 codes (B, N)."""
        x = _frames(frames_BHWC, self.cfg)
        t = self.tiles(self.delight(x, light))
        return self.nearest(t.reshape(-1, t.shape[-1])).reshape(t.shape[0], t.shape[1])

    @torch.no_grad()
    def decode(self, tokens_BN: torch.Tensor | np.ndarray,
               light: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """int codes (B, N) and daylight (B,) -> uint8 frames (B, H, W, 3)."""
        tokens = torch.as_tensor(np.asarray(tokens_BN) if isinstance(tokens_BN, np.ndarray) else tokens_BN)
        tokens = tokens.to(self.device, torch.long)
        n = self.cfg.tokens_per_frame
        if tokens.ndim != 2 or tokens.shape[1] != n:
            raise ValueError(f"tokens must have shape (B, {n}), got {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.codebook_size):
            raise ValueError(f"image tokens must lie in [0, {self.cfg.codebook_size})")
        canvas = self.untile(self.codebook[tokens])
        return self.render(canvas, light)


def _light(light: torch.Tensor | np.ndarray | float | None, b: int, device: torch.device) -> torch.Tensor:
    if light is None:
        return torch.ones(b, device=device)  # full day: the light model is the identity
    t = torch.as_tensor(np.asarray(light, np.float32) if not isinstance(light, torch.Tensor) else light)
    t = t.to(device, torch.float32).reshape(-1)
    if t.numel() == 1:
        t = t.expand(b)
    if t.numel() != b:
        raise ValueError(f"light must have one daylight per frame ({b}), got {t.numel()}")
    # A NaN daylight would turn every lit pixel into NaN and every code into code 0 without a
    # word, and one out of [0, 1] (a percentage, a missing value's sentinel) would be clamped
    # to a light the frame was never drawn under: both are a caller's mistake, said here.
    if t.numel() and not bool(((t >= 0) & (t <= 1)).all()):
        bad = float(t[~((t >= 0) & (t <= 1))][0])
        raise ValueError(f"daylight must lie in [0, 1], got {bad}")
    return t


def _frames(frames_BHWC: torch.Tensor | np.ndarray, cfg: TileTokenizerConfig) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(frames_BHWC)) if isinstance(frames_BHWC, np.ndarray) else frames_BHWC
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (B, H, W, 3), got {t.dtype} {tuple(t.shape)}")
    if tuple(t.shape[1:3]) != (cfg.height, cfg.width):
        raise ValueError(f"frames must be {cfg.height}x{cfg.width}, got {t.shape[1]}x{t.shape[2]}")
    return t


def _vignette(cfg: TileTokenizerConfig) -> torch.Tensor:
    """Crafter's night-noise vignette over the lit area, (H, W) (zero outside it):
    0 at the centre, rising to the edges (`crafter.engine.LocalView._vignette`, stddev 0.5)."""
    lit = cfg.lit_rows * cfg.patch
    v = torch.zeros(cfg.height, cfg.width)
    if lit:
        ys = torch.linspace(-1, 1, lit, dtype=torch.float64)[:, None]
        xs = torch.linspace(-1, 1, cfg.width, dtype=torch.float64)[None, :]
        v[:lit] = (1 - torch.exp(-0.5 * (xs**2 + ys**2) / 0.5**2)).float()
    return v


# -- fitting the codebook ----------------------------------------------------------------------
@torch.no_grad()
def fit_codebook(tiles_MD: torch.Tensor, k: int, tolerance: float = 6.0, iters: int = 20
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """Codes for unlit tiles (M, D) in [0, 255]: (K, D) and a summary.

    Tiles within `tolerance` (largest absolute difference of any value) of a group's first,
    most frequent member join that group, so a texture's rounding noise never splits it into
    two codes; the groups' means are the codes. With more groups than codes, the rarest are
    merged by k-means weighted by the groups' sizes, the frequent ones seeding it.
    """
    x = tiles_MD.float()
    if not len(x):
        raise ValueError("no tiles to fit a codebook on")
    # Exact duplicates first (rounded): the leader pass then runs on distinct tiles only.
    uniq, inverse, counts = torch.unique(x.round().to(torch.int16), dim=0, return_inverse=True,
                                         return_counts=True)
    order = torch.argsort(counts, descending=True)
    u, c = uniq[order].float(), counts[order].double()
    leaders: list[torch.Tensor] = []
    lead = torch.zeros(0, x.shape[1])
    assign = torch.empty(len(u), dtype=torch.long)
    for i in range(0, len(u), 4096):
        block = u[i:i + 4096]
        a = torch.full((len(block),), -1, dtype=torch.long)
        if len(lead):
            d = torch.cdist(block, lead, p=float("inf"))
            best, arg = d.min(1)
            a = torch.where(best <= tolerance, arg, a)
        for j in torch.nonzero(a < 0).flatten().tolist():  # new leaders, most frequent first
            fresh = leaders[len(lead):]  # the leaders this block has made so far
            if fresh:
                d = (torch.stack(fresh) - block[j]).abs().amax(1)
                if float(d.min()) <= tolerance:
                    a[j] = len(lead) + int(d.argmin())
                    continue
            leaders.append(block[j])
            a[j] = len(leaders) - 1
        lead = torch.stack(leaders)
        assign[i:i + len(block)] = a
    g = len(lead)
    weight = torch.zeros(g, dtype=torch.float64).index_add_(0, assign, c)
    sums = torch.zeros(g, x.shape[1], dtype=torch.float64).index_add_(0, assign, u.double() * c[:, None])
    means = (sums / weight[:, None]).float()
    summary = {"tiles": float(len(x)), "distinct": float(len(u)), "groups": float(g)}
    if g <= k:
        codes = torch.cat([means, means[:1].expand(k - g, -1)]) if g < k else means
        summary["codes_used"] = float(g)
        return codes.round(), summary
    # More groups than codes: weighted k-means, seeded with the k most frequent groups.
    order = torch.argsort(weight, descending=True)
    cent = means[order[:k]].clone()
    w = weight.float()
    for _ in range(iters):
        lab = torch.cdist(means, cent).argmin(1)
        tot = torch.zeros(k).index_add_(0, lab, w)
        new = torch.zeros_like(cent).index_add_(0, lab, means * w[:, None])
        keep = tot > 0
        cent[keep] = new[keep] / tot[keep, None]
    summary["codes_used"] = float(k)
    summary["merged_weight"] = float(weight[order[k:]].sum() / weight.sum())
    return cent.round(), summary
