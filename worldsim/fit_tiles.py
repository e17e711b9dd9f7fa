"""Fit a tile tokenizer (`tokenizers/tile.py`) to an episode store and write it as a bundle.

    worldsim train-tokenizer --kind tile --data data/crafter --out runs/tok-tile

No gradient training: the codebook is the set of unlit tiles seen on the training episodes'
day frames (grouped within a tolerance, `fit_codebook`), which takes a minute. The held-out
episodes then give the figures that decide whether the codes are fit for a world model:
PSNR of day and night frames, and code flicker (tokens that change on tiles that do not change
visibly). The bundle holds `config.json` (`image_tokenizer` with `"kind": "tile"`, metrics) and
`image_tokenizer.safetensors` (the codebook).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from worldsim import bundle, metrics
from worldsim.data.store import EpisodeStore
from worldsim.errors import WorldsimError
from worldsim.tokenizers.tile import PRESETS, TileTokenizer, TileTokenizerConfig, fit_codebook

NIGHT = 0.5  # Crafter paints per-pixel noise when daylight falls below this
FIT_LIGHT = 0.5  # tiles for the codebook come from frames at least this bright (no noise)


def _frames_and_light(ep) -> tuple[np.ndarray, np.ndarray]:
    # (A daylight outside [0, 1], or NaN, makes the episode corrupt: the store skips it.)
    light = ep.daylight if ep.daylight is not None else np.ones(len(ep.frames), np.float32)
    return ep.frames, light.astype(np.float32)


def fit_tile_tokenizer(data: str | Path, out: str | Path, preset: str = "crafter",
                       codebook_size: int | None = None, light: str | None = None,
                       max_episodes: int = 200, eval_episodes: int = 16, val_fraction: float = 0.05,
                       seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Fit the codebook on (at most `max_episodes`) training episodes; report on held-out ones."""
    if preset not in PRESETS:
        raise WorldsimError(f"unknown tile tokenizer preset {preset!r}; choose one of {', '.join(PRESETS)}")
    store = EpisodeStore(data)
    h, w = store.info.frame_size
    over: dict[str, Any] = {"height": h, "width": w}
    if codebook_size:
        over["codebook_size"] = codebook_size
    if light:
        over["light"] = light
    elif store.info.env != "crafter":
        over["light"] = "none"  # only Crafter's light model is known
    if store.info.env != "crafter":
        import warnings

        warnings.warn(f"the tile tokenizer gives one code per fixed {over.get('patch', PRESETS[preset].patch)}-pixel "
                      f"tile, which fits a game drawn in tiles (Crafter); for {store.info.env} frames the VQ "
                      "tokenizer (--kind vq) is the one", stacklevel=2)
    if store.info.env == "crafter" and preset == "crafter" and h == w and h % 9 == 0:
        # Crafter draws its view 9 tiles across at any size: one token per game tile (8 pixels
        # at 72x72), where the preset's 8-pixel patch would straddle tiles of another size.
        over["patch"] = h // 9
    try:
        cfg = TileTokenizerConfig(**{**asdict(PRESETS[preset]), **over})
    except ValueError as e:
        raise WorldsimError(str(e)) from e
    out = Path(out)
    if (out / "config.json").exists():
        held = bundle.read_config(out)
        old = held.get("image_tokenizer")
        if old is not None and old != cfg.to_dict():
            raise WorldsimError(f"{out} holds a tokenizer with another config; choose another --out")
        fitted = held.get("tokenizer_training") or {}
        if old is not None and (out / "image_tokenizer.safetensors").is_file() and fitted.get("kind") == "tile":
            # Fitted already: shards and models made with it check its weights' hash, so a fit
            # again (another store, or the same grown since) would orphan them. Run again with
            # the same inputs, it is done; with others, it is refused.
            same = (Path(str(fitted.get("data"))).resolve() == Path(data).resolve()
                    and fitted.get("seed") == seed and fitted.get("val_fraction") == val_fraction
                    and isinstance(held.get("image_tokenizer_metrics"), dict))
            if not same:
                raise WorldsimError(f"{out} holds a tile tokenizer fitted on {fitted.get('data')} (seed "
                                    f"{fitted.get('seed')}); shards and models made with it need it as "
                                    "it is: fit into another --out")
            if progress:
                print(f"nothing to do: {out} holds the tile tokenizer fitted on {data}")
            return dict(held["image_tokenizer_metrics"])
    train_ids, val_ids = store.split(val_fraction)
    if not val_ids:
        raise WorldsimError(f"{data} needs at least 2 episodes for a held-out split")
    rng = np.random.default_rng(seed)
    if len(train_ids) > max_episodes:
        train_ids = sorted(rng.choice(train_ids, max_episodes, replace=False).tolist())
    tok = TileTokenizer(cfg)
    t0 = time.perf_counter()
    tiles = []
    for ep in tqdm(store.iter_episodes(train_ids), total=len(train_ids), desc="reading tiles",
                   unit="episode", disable=not progress):
        frames, day = _frames_and_light(ep)
        keep = day >= FIT_LIGHT
        if keep.any():
            canvas = tok.delight(torch.from_numpy(frames[keep]), torch.from_numpy(day[keep]))
            tiles.append(tok.tiles(canvas).reshape(-1, cfg.tile_dim).round().to(torch.int16))
    if not tiles:
        raise WorldsimError(f"{data} has no frames with daylight >= {FIT_LIGHT} to fit tiles on")
    codebook, summary = fit_codebook(torch.cat(tiles).float(), cfg.codebook_size)
    tok.codebook.copy_(codebook)
    fit_seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    bundle.update_config(out, image_tokenizer=cfg.to_dict(), env=store.info.env,
                         frame_size=[h, w],
                         tokenizer_training={"kind": "tile", "data": str(data), "preset": preset,
                                             "train_episodes": len(train_ids), "seed": seed,
                                             "val_fraction": val_fraction, **summary})
    bundle.save_weights(out, "image_tokenizer", tok)
    result = evaluate_tile_tokenizer(tok, store, val_ids[:eval_episodes], progress)
    result.update(fit_seconds=round(fit_seconds, 1), groups=int(summary["groups"]),
                  codes_fitted=int(summary["codes_used"]))
    bundle.update_config(out, image_tokenizer_metrics=result)
    return result


@torch.no_grad()
def evaluate_tile_tokenizer(tok: TileTokenizer, store: EpisodeStore, ids: list[str],
                            progress: bool = True) -> dict[str, Any]:
    """PSNR (pooled squared error) and code flicker on day and night frames of the given episodes."""
    sq = {"day": [0.0, 0], "night": [0.0, 0]}
    flick = {"day": [0.0, 0.0, 0.0, 0.0], "night": [0.0, 0.0, 0.0, 0.0]}  # flips, still, changed, tokens
    all_codes = []
    t_enc = 0.0
    n_frames = 0
    for ep in tqdm(store.iter_episodes(ids), total=len(ids), desc="evaluating tokenizer",
                   unit="episode", disable=not progress):
        frames, day = _frames_and_light(ep)
        t0 = time.perf_counter()
        codes = tok.encode(frames, day)
        recon = tok.decode(codes, day)
        t_enc += time.perf_counter() - t0
        n_frames += len(frames)
        all_codes.append(codes)
        err = metrics.mse(recon, frames).double()  # (T,)
        for part, m in (("day", day >= NIGHT), ("night", day < NIGHT)):
            sel = torch.from_numpy(m)
            sq[part][0] += float(err[sel].sum())
            sq[part][1] += int(sel.sum())
            pairs = m[1:] & m[:-1]
            if pairs.any():  # consecutive frames both of this part: counts, pooled over episodes
                keep = torch.from_numpy(pairs)
                prev_c, next_c = codes[:-1][keep], codes[1:][keep]
                flips, still = metrics.flicker_counts(prev_c, next_c, frames[:-1][pairs],
                                                      frames[1:][pairs], tok.cfg.patch)
                flick[part][0] += int(flips.sum())
                flick[part][1] += int(still.sum())
                flick[part][2] += int((prev_c != next_c).sum())
                flick[part][3] += prev_c.numel()
    out: dict[str, Any] = {"episodes": len(ids), "frames": n_frames}
    for part in ("day", "night"):
        total, n = sq[part]
        out[f"{part}_frames"] = n
        out[f"{part}_psnr_pooled"] = round(float(metrics.psnr_from_mse(total / n)), 2) if n else None
        flips, still, changed, toks = flick[part]
        out[f"{part}_flicker"] = round(flips / still, 5) if still else None
        out[f"{part}_token_change"] = round(changed / toks, 5) if toks else None
    usage, perplexity = metrics.code_stats(torch.cat(all_codes), tok.cfg.codebook_size) if all_codes else (0.0, 0.0)
    out.update(codes_used=round(usage * tok.cfg.codebook_size), perplexity=round(perplexity, 1),
               frames_per_s=round(n_frames / max(t_enc, 1e-9), 1))
    return out


def summary_line(r: dict[str, Any]) -> str:
    def f(v: Any, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)
    return (f"tile tokenizer: day {f(r['day_psnr_pooled'], '.2f')} dB, flicker {f(r['day_flicker'], '.2%')}; "
            f"night {f(r['night_psnr_pooled'], '.2f')} dB, flicker {f(r['night_flicker'], '.2%')}; "
            f"{r['codes_used']} codes used, {r['frames_per_s']:.0f} frames/s encode+decode")
