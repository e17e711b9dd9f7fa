"""Train the image tokenizer on an episode store, resumably, and report held-out quality.

The run writes into a bundle folder:
    config.json                  the tokenizer config, the run's settings and final metrics
    image_tokenizer.safetensors  the weights (written at the end)
    train_state.safetensors      model + optimizer + step, written atomically every few minutes
    reconstructions.png          held-out originals (top) over reconstructions (bottom)

A killed run started again with the same --out continues from its last checkpoint. The run is
a `TokenizerRun` (worldsim.trainer.TrainingRun: the loop, schedule, checkpoints and logging
cadence it shares with the world model's training).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from worldsim import bundle
from worldsim.data.store import EpisodeStore
from worldsim.device import pick_device
from worldsim.errors import WorldsimError
from worldsim.metrics import NIGHT, psnr, psnr_from_mse, ssim
from worldsim.tokenizers.image import PRESETS, ImageTokenizer, ImageTokenizerConfig, code_stats
from worldsim.train_settings import TokenizerTrainSettings
from worldsim.trainer import STATE_FILE, TrainingRun, lr_at, require_positive

__all__ = ["STATE_FILE", "TokenizerRun", "TokenizerTrainSettings", "train_tokenizer"]


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
        return float(psnr_from_mse(mse[sel].mean())) if sel.any() else None

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


class TokenizerRun(TrainingRun):
    """Training of the VQ image tokenizer on an episode store, then its held-out report."""

    desc = "train-tokenizer"
    kind = "image tokenizer"
    USAGE_WINDOW = 200  # steps over which the progress bar counts the codes in use

    def __init__(self, data: str | Path, out: str | Path, preset: str = "crafter",
                 settings: TokenizerTrainSettings | None = None, device: str = "auto",
                 max_frames: int | None = None, progress: bool = True) -> None:
        self.s = s = settings or TokenizerTrainSettings()
        require_positive(s, "steps", "batch", "eval_frames")
        super().__init__(out, s.steps, s.checkpoint_seconds, log_every=10, progress=progress)
        self.data, self.preset, self.max_frames = data, preset, max_frames
        self.store = EpisodeStore(data)
        if preset not in PRESETS:
            raise WorldsimError(f"unknown tokenizer preset {preset!r}; choose one of {', '.join(PRESETS)}")
        cfg = ImageTokenizerConfig(**asdict(PRESETS[preset]))
        h, w = self.store.info.frame_size
        if (cfg.height, cfg.width) != (h, w):
            try:  # a frame size that is not a multiple of the patch: one line, not a traceback
                cfg = ImageTokenizerConfig(**{**asdict(cfg), "height": h, "width": w})
            except ValueError as e:
                raise WorldsimError(f"{data}: {e}") from e
        self.cfg = cfg
        self.dev = pick_device(device)

    # -- setup and resume --------------------------------------------------------------------------
    def check_out(self) -> None:
        self.check_saved_run()
        if (self.out / "config.json").exists():
            old = bundle.read_config(self.out).get("image_tokenizer")
            if old is not None and old != self.cfg.to_dict():
                raise WorldsimError(f"{self.out} holds a tokenizer with another config; choose another --out")

    def load_data(self) -> None:
        s = self.s
        train_ids, val_ids = self.store.split(s.val_fraction)
        if not val_ids:
            raise WorldsimError(f"{self.data} needs at least 2 episodes for a held-out split")
        self.train_frames, _ = load_frames(self.store, train_ids, self.max_frames, self.progress)
        self.val_frames, self.val_light = load_frames(self.store, val_ids, s.eval_frames, self.progress)

    def setup(self) -> None:
        s = self.s
        torch.manual_seed(s.seed)
        self.model = ImageTokenizer(self.cfg).to(self.dev)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=s.lr, weight_decay=s.weight_decay,
                                     betas=(0.9, 0.99))
        self.recent = torch.zeros(self.cfg.codebook_size, dtype=torch.long)  # code counts, recent steps

    def write_bundle_config(self) -> None:
        s = self.s
        bundle.update_config(self.out, image_tokenizer=self.cfg.to_dict(), env=self.store.info.env,
                             frame_size=list(self.store.info.frame_size),
                             tokenizer_training={**asdict(s), "data": str(self.data), "preset": self.preset,
                                                 "train_frames": len(self.train_frames)})

    # -- step --------------------------------------------------------------------------------------
    def train_step(self) -> torch.Tensor:
        s = self.s
        g = torch.Generator().manual_seed(s.seed * 1_000_003 + self.step)  # same batches on resume
        idx = torch.randint(0, len(self.train_frames), (s.batch,), generator=g)
        # The codebook's dead-code restarts draw from the global generator: seeded by the step,
        # a resumed run draws what an uninterrupted one would have (a checkpoint holds no RNG).
        torch.manual_seed((s.seed * 1_000_003 + self.step) * 7 + 1)
        x = self.train_frames[idx].to(self.dev).permute(0, 3, 1, 2).float().div_(255)  # (B, 3, H, W)
        self.set_lr(lr_at(self.step, s.lr, s.warmup, s.steps))
        self.outp = outp = self.model(x)
        self.opt.zero_grad(set_to_none=True)
        outp["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return outp["loss"]

    def after_step(self, loss: torch.Tensor) -> None:
        self.recent += torch.bincount(self.outp["codes"].flatten().cpu(), minlength=self.cfg.codebook_size)

    def log(self, loss: torch.Tensor) -> None:
        self.bar.set_postfix(loss=f"{loss.item():.5f}",
                             psnr=f"{10 * math.log10(1 / max(self.outp['mse'].item(), 1e-10)):.1f}",
                             usage=f"{(self.recent > 0).float().mean():.0%}")
        if self.step % self.USAGE_WINDOW == 0:
            self.recent.zero_()

    # -- report ------------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Write the weights, then measure them on held-out frames and write the report."""
        model, val_frames = self.model, self.val_frames
        bundle.save_weights(self.out, "image_tokenizer", model)
        metrics = evaluate(model, val_frames, self.val_light)
        metrics["fps_batch1"] = measure_speed(model, val_frames, 1)
        metrics["fps_batch64"] = measure_speed(model, val_frames, 64)
        metrics["train_seconds"] = self.elapsed
        metrics["steps"] = self.step
        pick = torch.linspace(0, len(val_frames) - 1, 8).long()
        with torch.no_grad():
            recon = model.decode(model.encode(val_frames[pick])).cpu()
        save_grid(self.out / "reconstructions.png", val_frames[pick], recon)
        bundle.update_config(self.out, image_tokenizer_metrics=metrics)
        return metrics

    def run(self) -> dict[str, Any]:
        self.check_out()
        self.load_data()
        self.setup()
        self.resume()
        self.write_bundle_config()
        self.model.train()
        self.loop()
        return self.finish()


def train_tokenizer(data: str | Path, out: str | Path, preset: str = "crafter",
                    settings: TokenizerTrainSettings | None = None, device: str = "auto",
                    max_frames: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train (or resume training) the image tokenizer into the bundle `out`; returns its
    held-out metrics."""
    return TokenizerRun(data, out, preset, settings, device, max_frames, progress).run()
