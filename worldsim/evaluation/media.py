"""Pictures for a report, drawn with Pillow (which crafter brings) and imageio: line plots
against the horizon, and side-by-side videos (real | each decoder) as mp4 and one small GIF."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

# Line colours, in order: the game gets the green, copy-last the grey and the tokenizer the black.
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
           (23, 190, 207), (140, 86, 75)]
BASELINE_COLOURS = {"game": (0, 120, 60), "copy-last": (150, 150, 150), "tokenizer": (0, 0, 0)}


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = max(hi - lo, 1e-9)
    step = 10 ** math.floor(math.log10(span / n))
    for m in (1, 2, 5, 10):
        if span / (step * m) <= n:
            step *= m
            break
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 2)
            if lo - 1e-9 <= start + i * step <= hi + 1e-9]


def line_plot(path: str | Path, title: str, ylabel: str, series: dict[str, Sequence[float | None]],
              xs: Sequence[int] | None = None, size: tuple[int, int] = (640, 400)) -> None:
    """A PNG line plot: one line per series (None values are gaps), x = horizon step."""
    from PIL import Image, ImageDraw

    left, right, top, bottom = 64, 150, 36, 44
    # The legend takes what its longest name needs (decoder variants differ at the end of the
    # name, so a cut name would label two lines alike); the plot keeps its width.
    d = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend = max((d.textlength(name) for name in series), default=0.0)
    right = max(right, int(legend) + 44)
    size = (size[0] + right - 150, size[1])
    w, h = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    vals = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    n = max((len(s) for s in series.values()), default=1)
    xs = list(xs) if xs is not None else list(range(1, n + 1))
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    x0, x1, y0, y1 = left, w - right, h - bottom, top

    def px(i: int) -> float:
        return x0 + (x1 - x0) * ((xs[i] - xs[0]) / max(xs[-1] - xs[0], 1))

    def py(v: float) -> float:
        return y0 + (y1 - y0) * (v - lo) / (hi - lo)

    d.text((left, 10), title, fill="black")
    for t in _nice_ticks(lo, hi):
        y = py(t)
        d.line([(x0, y), (x1, y)], fill=(230, 230, 230))
        d.text((4, y - 6), f"{t:.3g}", fill="black")
    for i, x in enumerate(xs):
        if len(xs) <= 20 or i % math.ceil(len(xs) / 20) == 0:
            d.text((px(i) - 4, y0 + 6), str(x), fill="black")
    d.rectangle([x0, y1, x1, y0], outline="black")
    d.text(((x0 + x1) // 2 - 40, h - 18), "horizon step", fill="black")
    d.text((4, top - 18), ylabel, fill="black")
    colours = iter(PALETTE * 4)
    for k, (name, s) in enumerate(series.items()):
        colour = BASELINE_COLOURS.get(name) or next(colours)
        pts = [(px(i), py(v)) for i, v in enumerate(s) if v is not None and math.isfinite(v)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for x, y in pts:
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        ly = top + 16 * k
        d.line([(x1 + 10, ly + 6), (x1 + 30, ly + 6)], fill=colour, width=3)
        d.text((x1 + 36, ly), name, fill="black")
    img.save(path)


def _label(frame: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(frame)
    ImageDraw.Draw(img).text((3, 2), text, fill=(255, 255, 0))
    return np.asarray(img)


def side_by_side(columns: dict[str, np.ndarray], scale: int = 3, context: int = 0) -> np.ndarray:
    """Frames (T, H*scale, W*k*scale + gaps, 3): each column is (T, H, W, 3), labelled; the
    first `context` frames are real for every column and marked "ctx"."""
    cols = []
    for name, frames in columns.items():
        big = frames.repeat(scale, 1).repeat(scale, 2)
        cols.append(np.stack([_label(f, name if t >= context else f"{name} (ctx)")
                              for t, f in enumerate(big)]))
        cols.append(np.full((len(frames), big.shape[1], 4, 3), 255, np.uint8))
    return np.concatenate(cols[:-1], 2)


def write_videos(folder: Path, clips: list[np.ndarray], gif: np.ndarray | None, fps: int) -> dict[str, str]:
    """One mp4 per clip (frames (T, H, W, 3)) and `gif` (a small clip for a README) as a GIF.
    Returns the file names written, and `mp4_error` where ffmpeg could not be used."""
    import imageio.v2 as imageio
    import imageio.v3 as iio

    out: dict[str, str] = {}
    try:
        import imageio_ffmpeg  # noqa: F401  (imageio's ffmpeg plugin; without it no mp4)
    except ImportError:
        if clips:
            out["mp4_error"] = "mp4 not written: install imageio-ffmpeg"
        clips = []
    for i, clip in enumerate(clips):
        path = folder / f"rollout_{i:02d}.mp4"
        try:
            # libx264 wants sizes in 16-pixel macro blocks: pad rather than let ffmpeg rescale.
            ph, pw = (-clip.shape[1]) % 16, (-clip.shape[2]) % 16
            padded = np.pad(clip, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=255)
            imageio.mimwrite(path, list(padded), format="FFMPEG", fps=fps, codec="libx264", quality=8,
                             macro_block_size=1)
            out[path.name] = path.name
        except Exception as e:  # a broken ffmpeg: the GIF and the numbers still come
            path.unlink(missing_ok=True)
            out["mp4_error"] = f"{type(e).__name__}: {e}"
            break
    if gif is not None:
        path = folder / "rollouts.gif"
        iio.imwrite(path, gif, duration=1000 / fps, loop=0)
        out[path.name] = path.name
    return out
