"""Image and token metrics: the one home of every quality measure worldsim reports.

Frames are uint8 (or [0, 255] float) `(B, H, W, 3)` tensors or arrays; token grids are integer
`(B, N)`, row-major over the tokenizer's grid, so token i covers tile i (one `tile x tile` patch).
Functions return per-frame values or per-frame counts (numerator, denominator) rather than
means, so that callers can pool them over episodes, horizon steps, and day and night frames.

- PSNR per frame, and pooled from summed squared error (`pooled_psnr`): one exactly repeated
  frame has infinite PSNR, and a mean of per-frame PSNR would be ruled by it.
- SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1=0.01, K2=0.03, valid region,
  mean over channels (the settings of the paper and of scikit-image's `gaussian_weights=True`).
- Changed-tile accuracy: among tiles whose real pixels change visibly from t to t+1 (mean
  absolute difference above `VISIBLE` of 255), the fraction where the generated tile matches
  the real one within the same bound. Copy-last scores 0 by construction.
- Changed-token accuracy: the same among tokens that differ between real t and t+1.
- Code flicker: the fraction of tokens that change between consecutive real frames on tiles
  that do not change visibly (codes spent on invisible drift, such as daylight).
- Tiles from nowhere: inner map tiles of frame t+1 that look like no tile within one tile of
  the same place in frame t (a cow that appears mid-view, lava invented beside the player).
  Terrain enters a moving view at its border, so the border ring is not counted; the real
  game's own rate (placing, breaking, a turning player) is the reference.
- Scroll: the one-tile shift of the map (none, left, right, up, down, named by the player's
  move) that best explains a step, for views centred on the player (Crafter).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

VISIBLE = 4.0  # mean absolute difference (of 255) above which a tile changes visibly
NIGHT = 0.5  # Crafter paints per-pixel noise when daylight falls below this
SCROLLS = ("none", "left", "right", "up", "down")  # the player's move that scrolls the view so


def _f(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    return t.float()


def _long(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    return t.long()


# -- PSNR ----------------------------------------------------------------------------------------
def mse(a_BHWC: torch.Tensor | np.ndarray, b_BHWC: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Mean squared error per frame, in [0, 255] units: (B,)."""
    return (_f(a_BHWC) - _f(b_BHWC).to(_f(a_BHWC).device)).pow(2).flatten(1).mean(1)


def psnr_from_mse(mse_value: float | torch.Tensor) -> float | torch.Tensor:
    """PSNR in dB of a mean squared error in [0, 255] units (the error is floored at 1e-10, so an
    exact match gives a finite 148 dB)."""
    if isinstance(mse_value, torch.Tensor):
        return 10 * torch.log10(255.0**2 / mse_value.clamp_min(1e-10))
    return 10 * math.log10(255.0**2 / max(float(mse_value), 1e-10))


def psnr(a_BHWC: torch.Tensor | np.ndarray, b_BHWC: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Per-frame PSNR in dB: (B,)."""
    return psnr_from_mse(mse(a_BHWC, b_BHWC))


def pooled_psnr(a_BHWC: torch.Tensor | np.ndarray, b_BHWC: torch.Tensor | np.ndarray) -> float:
    """PSNR of the squared error pooled over every frame given (any leading dimensions)."""
    a, b = _f(a_BHWC), _f(b_BHWC)
    return float(psnr_from_mse((a - b).pow(2).mean()))


def pooled_psnr_per_step(x_BSHWC: torch.Tensor | np.ndarray, truth_BSHWC: torch.Tensor | np.ndarray
                         ) -> list[float]:
    """PSNR at each rollout step S from the squared error pooled over episodes B."""
    m_BS = (_f(x_BSHWC) - _f(truth_BSHWC)).pow(2).flatten(2).mean(2)
    return psnr_from_mse(m_BS.mean(0)).tolist()


# -- SSIM ----------------------------------------------------------------------------------------
def _gaussian_kernel(window: int, sigma: float, channels: int, device: torch.device) -> torch.Tensor:
    g = torch.exp(-((torch.arange(window, dtype=torch.float32) - (window - 1) / 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, window, window).contiguous().to(device)


def ssim(a_BHWC: torch.Tensor | np.ndarray, b_BHWC: torch.Tensor | np.ndarray, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Per-frame SSIM, mean over channels and the valid region: (B,). Identical frames give 1."""
    # float64: the variances are differences of nearly equal blurred moments, which float32
    # rounds to noise of the order of SSIM's own constants.
    x = _f(a_BHWC).double().permute(0, 3, 1, 2) / 255  # (B, 3, H, W)
    y = _f(b_BHWC).double().to(x.device).permute(0, 3, 1, 2) / 255
    c = x.shape[1]
    window = min(window, x.shape[-1], x.shape[-2])  # tiny test frames
    k = _gaussian_kernel(window, sigma, c, x.device).double()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, k, groups=c)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).float()


# -- tiles ---------------------------------------------------------------------------------------
def tile_mad(a_BHWC: torch.Tensor | np.ndarray, b_BHWC: torch.Tensor | np.ndarray, tile: int
             ) -> torch.Tensor:
    """Mean absolute difference per tile (over its pixels and channels), in [0, 255] units:
    (B, N) in the tokens' row-major order."""
    a, b = _f(a_BHWC), _f(b_BHWC)
    bsz, h, w, _ = a.shape
    if h % tile or w % tile:
        raise ValueError(f"frames of {h}x{w} do not split into {tile}-pixel tiles")
    d = (a - b.to(a.device)).abs().mean(-1)  # (B, H, W)
    return F.avg_pool2d(d[:, None], tile).flatten(1)  # (B, rows*cols)


def changed_tile_counts(prev_BHWC, real_BHWC, gen_BHWC, tile: int, bound: float = VISIBLE
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Changed-tile accuracy of one step, per frame: (matched, changed), each (B,) int64.

    `changed`: tiles whose real pixels change visibly from `prev` (real frame t) to `real`
    (frame t+1); `matched`: those of them where `gen` (the generated t+1) is within `bound`
    of the real tile."""
    changed = tile_mad(prev_BHWC, real_BHWC, tile) > bound  # (B, N)
    match = tile_mad(gen_BHWC, real_BHWC, tile) <= bound
    return (changed & match).sum(1), changed.sum(1)


def changed_token_counts(prev_BN, real_BN, gen_BN) -> tuple[torch.Tensor, torch.Tensor]:
    """Changed-token accuracy of one step, per frame: (matched, changed), each (B,) int64, over
    the tokens that differ between real frames t (`prev`) and t+1 (`real`)."""
    p, r, g = _long(prev_BN), _long(real_BN), _long(gen_BN).to(_long(real_BN).device)
    changed = p.to(r.device) != r
    return (changed & (g == r)).sum(1), changed.sum(1)


def flicker_counts(prev_BN, next_BN, prev_BHWC, next_BHWC, tile: int, bound: float = VISIBLE
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Code flicker of one step, per frame: (tokens that change on still tiles, still tiles),
    each (B,) int64. A still tile's real pixels change by at most `bound` from t to t+1."""
    still = tile_mad(prev_BHWC, next_BHWC, tile) <= bound  # (B, N)
    flips = _long(prev_BN).to(still.device) != _long(next_BN).to(still.device)
    return (still & flips).sum(1), still.sum(1)


def code_flicker(codes_TN, frames_THWC, tile: int, bound: float = VISIBLE,
                 pairs_T: Sequence[bool] | np.ndarray | torch.Tensor | None = None) -> dict[str, float]:
    """Code flicker of a tokenizer on consecutive real frames of one clip (or a batch of clips
    with a leading dimension: codes (B, T, N), frames (B, T, H, W, 3)).

    Returns {"flicker": tokens changed on visibly still tiles / still tiles, "token_change":
    tokens changed / tokens, "tile_change": tiles changed visibly / tiles, "pairs": pairs used}.
    `pairs_T` (length T-1) picks which consecutive pairs count (say, day pairs only)."""
    codes, frames = _long(codes_TN), _f(frames_THWC)
    if codes.ndim == 2:
        codes, frames = codes[None], frames[None]
    prev_c, next_c = codes[:, :-1].flatten(0, 1), codes[:, 1:].flatten(0, 1)
    prev_f, next_f = frames[:, :-1].flatten(0, 1), frames[:, 1:].flatten(0, 1)
    if pairs_T is not None:
        keep = torch.as_tensor(np.asarray(pairs_T, bool)).flatten()
        prev_c, next_c, prev_f, next_f = prev_c[keep], next_c[keep], prev_f[keep], next_f[keep]
    if not len(prev_c):
        return {"flicker": float("nan"), "token_change": float("nan"), "tile_change": float("nan"),
                "pairs": 0}
    flips, still = flicker_counts(prev_c, next_c, prev_f, next_f, tile, bound)
    n, n_still = prev_c.numel(), int(still.sum())
    # no still tile: flicker is undefined ("-"), not a perfect 0
    return {"flicker": float(flips.sum()) / n_still if n_still else float("nan"),
            "token_change": float((prev_c != next_c).sum()) / n,
            "tile_change": 1 - float(still.sum()) / n, "pairs": len(prev_c)}


def new_tile_counts(prev_BHWC, next_BHWC, tile: int, map_rows: int | None = None,
                    bound: float = VISIBLE) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiles from nowhere in one step, per frame: (new, inner tiles), each (B,) int64.

    A tile of `next` off the map's border ring is new when it is more than `bound` (mean
    absolute difference, of 255) from each of the 9 tiles of `prev` within one tile of its
    place: neither still, nor scrolled in by one tile, nor moved one tile. Only the top
    `map_rows` rows of tiles are the map (Crafter's inventory rows below are not)."""
    a = _f(prev_BHWC)
    b = _f(next_BHWC).to(a.device)
    bsz, h, w, ch = a.shape
    if h % tile or w % tile:
        raise ValueError(f"frames of {h}x{w} do not split into {tile}-pixel tiles")
    rows, cols = (map_rows or h // tile), w // tile
    if rows < 3 or cols < 3:
        zero = torch.zeros(bsz, dtype=torch.long)
        return zero, zero

    def tiles(x: torch.Tensor) -> torch.Tensor:  # (B, rows, cols, tile*tile*3)
        x = x[:, :rows * tile].reshape(bsz, rows, tile, cols, tile, ch)
        return x.permute(0, 1, 3, 2, 4, 5).flatten(3)

    ta, tb = tiles(a), tiles(b)
    inner = tb[:, 1:-1, 1:-1]  # (B, rows-2, cols-2, P)
    best = torch.full(inner.shape[:3], float("inf"), device=a.device)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            cand = ta[:, 1 + dr:rows - 1 + dr, 1 + dc:cols - 1 + dc]
            best = torch.minimum(best, (inner - cand).abs().mean(-1))
    new = (best > bound).flatten(1).sum(1)
    return new.long().cpu(), torch.full((bsz,), (rows - 2) * (cols - 2), dtype=torch.long)


# -- scroll --------------------------------------------------------------------------------------
def scroll_direction(prev_BHWC, next_BHWC, tile: int, map_rows: int | None = None,
                     margin: float = 0.5) -> torch.Tensor:
    """The one-tile shift of the map that best explains each step: (B,) int64 indexing SCROLLS.

    Named by the player's move in a view centred on the player: walking left moves the world
    one tile right on screen. Only the top `map_rows` tile rows count (Crafter: 7 rows of world
    over 2 of inventory). A shift wins over "none" only if its mean absolute difference over
    the overlap is lower by more than `margin` (of 255), so a still or noisy view stays "none"."""
    a, b = _f(prev_BHWC), _f(next_BHWC)
    if map_rows is not None:
        a, b = a[:, :map_rows * tile], b[:, :map_rows * tile]
    t = tile

    def err(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x - y).abs().flatten(1).mean(1)

    errs = torch.stack([
        err(b, a),  # none
        err(b[:, :, t:], a[:, :, :-t]),  # player left: the old column c shows at c+1
        err(b[:, :, :-t], a[:, :, t:]),  # player right
        err(b[:, t:], a[:, :-t]),  # player up: the old row r shows at r+1
        err(b[:, :-t], a[:, t:]),  # player down
    ], 1)  # (B, 5)
    best = errs[:, 1:].argmin(1) + 1
    shifted = errs.gather(1, best[:, None])[:, 0] < errs[:, 0] - margin
    return torch.where(shifted, best, torch.zeros_like(best))


def scroll_counts(real_prev, real_next, gen_prev, gen_next, tile: int, map_rows: int | None = None
                  ) -> dict[str, torch.Tensor]:
    """Scroll agreement of one step, per frame (each (B,) int64 of 0/1):
    `real_scroll` (the real view scrolls), `agree` (the dream scrolls the same way, on those),
    `real_still` (the real view does not scroll), `false_scroll` (the dream scrolls, on those)."""
    r = scroll_direction(real_prev, real_next, tile, map_rows)
    g = scroll_direction(gen_prev, gen_next, tile, map_rows)
    moving = r != 0
    return {"real_scroll": moving.long(), "agree": (moving & (g == r)).long(),
            "real_still": (~moving).long(), "false_scroll": (~moving & (g != 0)).long()}


# -- classification (inverse dynamics) -----------------------------------------------------------
def precision_recall_f1(pred: np.ndarray, truth: np.ndarray, labels: Sequence[int]) -> dict[int, dict[str, float]]:
    """Per label: precision, recall, F1 and support (count in `truth`). A label never predicted
    has precision 0 (and F1 0) unless it never occurs either, when all three are NaN."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    out = {}
    for c in labels:
        tp = int(((pred == c) & (truth == c)).sum())
        n_pred, n_true = int((pred == c).sum()), int((truth == c).sum())
        if n_pred == 0 and n_true == 0:
            out[c] = {"precision": float("nan"), "recall": float("nan"), "f1": float("nan"), "support": 0}
            continue
        p = tp / n_pred if n_pred else 0.0
        r = tp / n_true if n_true else 0.0
        out[c] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                  "support": n_true}
    return out


def code_stats(codes: torch.Tensor, k: int) -> tuple[float, float]:
    """A tokenizer's codes: (fraction of the K codes used, perplexity = exp(entropy of code
    frequencies))."""
    counts = torch.bincount(codes.flatten().cpu(), minlength=k).double()
    p = counts / counts.sum().clamp_min(1)
    nz = p[p > 0]
    return float((counts > 0).double().mean()), float(math.exp(-(nz * nz.log()).sum()))
