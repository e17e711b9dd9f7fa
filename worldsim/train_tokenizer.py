"""Train the image tokenizer on an episode store, resumably, and report held-out quality.

The run writes into a bundle folder:
    config.json                  the tokenizer config, the run's settings and final metrics
    image_tokenizer.safetensors  the weights (written at the end)
    train_state.safetensors      model + optimizer + step, written atomically every few minutes
    reconstructions.png          held-out originals (top) over reconstructions (bottom)

A killed run started again with the same --out continues from its last checkpoint.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from worldsim import bundle
from worldsim.checkpoint import load_checkpoint, save_checkpoint
from worldsim.data.store import EpisodeStore
from worldsim.errors import WorldsimError
from worldsim.tokenizers.image import (PRESETS, ImageTokenizer, ImageTokenizerConfig, code_stats,
                                       psnr, ssim)

STATE_FILE = "train_state.safetensors"
NIGHT = 0.5  # Crafter paints per-pixel noise when daylight falls below this


@dataclass
class TokenizerTrainSettings:
    steps: int = 10000
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.0
    val_fraction: float = 0.05
    eval_frames: int = 4096
    seed: int = 0
    checkpoint_seconds: float = 120.0


def load_frames(store: EpisodeStore, ids: list[str], limit: int | None = None,
                progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """All frames of the given episodes in memory: uint8 (M, H, W, 3) and daylight (M,)."""
    frames, light = [], []
    total = 0
    for ep in tqdm(store.iter_episodes(ids), total=len(ids), desc="load", unit="ep",
                   disable=not progress, leave=False):
        frames.append(ep.frames)
        light.append(ep.daylight if ep.daylight is not None else np.ones(len(ep.frames), np.float32))
        total += len(ep.frames)
        if limit is not None and total >= limit:
            break
    if not frames:
        raise WorldsimError(f"no readable episodes in {store.root}")
    f = torch.from_numpy(np.concatenate(frames))
    d = torch.from_numpy(np.concatenate(light))
    if limit is not None:
        f, d = f[:limit], d[:limit]
    return f, d


def lr_at(step: int, s: TokenizerTrainSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    t = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


@torch.no_grad()
def evaluate(model: ImageTokenizer, frames: torch.Tensor, daylight: torch.Tensor,
             batch: int = 256) -> dict[str, Any]:
    """Held-out reconstruction quality, split into day and night frames."""
    model.eval()
    p_all, s_all, mse_all, codes = [], [], [], []
    for i in range(0, len(frames), batch):
        x = frames[i:i + batch]
        tok = model.encode(x)
        y = model.decode(tok).cpu()
        p_all.append(psnr(x, y))
        s_all.append(ssim(x, y))
        mse_all.append((x.float() - y.float()).pow(2).flatten(1).mean(1))
        codes.append(tok.cpu())
    p, s, mse = torch.cat(p_all), torch.cat(s_all), torch.cat(mse_all)
    day = daylight >= NIGHT

    def pooled(sel: torch.Tensor) -> float | None:
        # PSNR of the mean squared error over all pixels: not lifted by near-exact frames the
        # way a mean of per-frame PSNR is.
        return float(10 * torch.log10(255.0**2 / mse[sel].mean().clamp_min(1e-10))) if sel.any() else None

    usage, perplexity = code_stats(torch.cat(codes), model.cfg.codebook_size)

    def mean(t: torch.Tensor) -> float | None:
        return float(t.mean()) if t.numel() else None

    return {"frames": len(frames), "psnr": mean(p), "psnr_day": mean(p[day]),
            "psnr_night": mean(p[~day]), "psnr_day_pooled": pooled(day),
            "psnr_night_pooled": pooled(~day), "ssim": mean(s), "ssim_day": mean(s[day]),
            "day_frames": int(day.sum()), "night_frames": int((~day).sum()),
            "code_usage": usage, "codes_used": round(usage * model.cfg.codebook_size),
            "perplexity": perplexity}


@torch.no_grad()
def measure_speed(model: ImageTokenizer, frames: torch.Tensor, batch: int, repeats: int = 5) -> float:
    """Encode + decode frames per second at a batch size (median of repeats)."""
    model.eval()
    x = frames[:batch]
    if len(x) < batch:
        x = x.repeat(math.ceil(batch / len(x)), 1, 1, 1)[:batch]
    model.decode(model.encode(x))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.decode(model.encode(x))
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return batch / float(np.median(times))


def save_grid(path: Path, originals: torch.Tensor, recons: torch.Tensor, scale: int = 3) -> None:
    """PNG: originals in the top row, reconstructions below, upscaled for viewing."""
    import imageio.v3 as iio

    top = torch.cat(list(originals), dim=1)
    bottom = torch.cat(list(recons), dim=1)
    grid = torch.cat([top, torch.full_like(top[:2], 255), bottom], dim=0).numpy()
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    iio.imwrite(path, grid)


def train_tokenizer(data: str | Path, out: str | Path, preset: str = "crafter",
                    settings: TokenizerTrainSettings | None = None, device: str = "auto",
                    max_frames: int | None = None, progress: bool = True) -> dict[str, Any]:
    s = settings or TokenizerTrainSettings()
    out = Path(out)
    store = EpisodeStore(data)
    if preset not in PRESETS:
        raise WorldsimError(f"unknown tokenizer preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = ImageTokenizerConfig(**asdict(PRESETS[preset]))
    h, w = store.info.frame_size
    if (cfg.height, cfg.width) != (h, w):
        cfg = ImageTokenizerConfig(**{**asdict(cfg), "height": h, "width": w})
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)

    state_path = out / STATE_FILE
    if (out / "config.json").exists():
        old = bundle.read_config(out).get("image_tokenizer")
        if old is not None and old != cfg.to_dict():
            raise WorldsimError(f"{out} holds a tokenizer with another config; choose another --out")

    train_ids, val_ids = store.split(s.val_fraction)
    if not val_ids:
        raise WorldsimError(f"{data} needs at least 2 episodes for a held-out split")
    train_frames, _ = load_frames(store, train_ids, max_frames, progress)
    val_frames, val_light = load_frames(store, val_ids, s.eval_frames, progress)

    torch.manual_seed(s.seed)
    model = ImageTokenizer(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.99))
    step, elapsed = 0, 0.0
    if state_path.exists():
        st = load_checkpoint(state_path, model, opt)
        step, elapsed = int(st["step"]), float(st.get("seconds", 0.0))
        print(f"resuming from step {step} ({state_path})")
    bundle.update_config(out, image_tokenizer=cfg.to_dict(), env=store.info.env,
                         frame_size=list(store.info.frame_size),
                         tokenizer_training={**asdict(s), "data": str(data), "preset": preset,
                                             "train_frames": len(train_frames)})

    def checkpoint() -> None:
        save_checkpoint(state_path, model, opt, {"step": step, "seconds": elapsed})

    bar = tqdm(total=s.steps, initial=step, desc="train-tokenizer", unit="step", disable=not progress)
    recent = torch.zeros(cfg.codebook_size, dtype=torch.long)
    t_start, t_ckpt = time.perf_counter(), time.perf_counter()
    elapsed0 = elapsed
    model.train()
    try:
        while step < s.steps:
            g = torch.Generator().manual_seed(s.seed * 1_000_003 + step)  # same batches on resume
            idx = torch.randint(0, len(train_frames), (s.batch,), generator=g)
            x = train_frames[idx].to(dev).permute(0, 3, 1, 2).float().div_(255)
            for grp in opt.param_groups:
                grp["lr"] = lr_at(step, s)
            outp = model(x)
            opt.zero_grad(set_to_none=True)
            outp["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            recent += torch.bincount(outp["codes"].flatten().cpu(), minlength=cfg.codebook_size)
            now = time.perf_counter()
            elapsed = elapsed0 + now - t_start
            bar.update(1)
            if step % 10 == 0 or step == s.steps:
                bar.set_postfix(loss=f"{outp['loss'].item():.5f}",
                                psnr=f"{10 * math.log10(1 / max(outp['mse'].item(), 1e-10)):.1f}",
                                usage=f"{(recent > 0).float().mean():.0%}")
            if step % 200 == 0:
                recent.zero_()
            if now - t_ckpt > s.checkpoint_seconds:
                checkpoint()
                t_ckpt = now
    finally:
        bar.close()
        if step > 0:
            checkpoint()

    bundle.save_weights(out, "image_tokenizer", model)
    metrics = evaluate(model, val_frames, val_light)
    metrics["fps_batch1"] = measure_speed(model, val_frames, 1)
    metrics["fps_batch64"] = measure_speed(model, val_frames, 64)
    metrics["train_seconds"] = elapsed
    metrics["steps"] = step
    pick = torch.linspace(0, len(val_frames) - 1, 8).long()
    with torch.no_grad():
        recon = model.decode(model.encode(val_frames[pick])).cpu()
    save_grid(out / "reconstructions.png", val_frames[pick], recon)
    bundle.update_config(out, image_tokenizer_metrics=metrics)
    return metrics

