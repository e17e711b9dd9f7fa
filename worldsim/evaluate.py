"""Rollout quality against ground truth: dream from real context frames with the recorded
actions, decode, and compare with the real frames, beside the copy-last-frame baseline.

Rollouts run on the engine (KV cache, all episodes as one batch); the cache-free loops in
`worldsim.inference.plain` give the same frames and serve as the reference in tests.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldsim.data.store import EpisodeStore
from worldsim.errors import WorldsimError
from worldsim.inference.engine import DecoderSettings, Engine
from worldsim.inference.sampling import SamplingSettings
from worldsim.tokenizers.action import action_tokenizer_from_config
from worldsim import bundle
from worldsim.bundle import load_image_tokenizer, load_world_model


@torch.no_grad()
def rollout_psnr(bundle_dir: str | Path, data: str | Path, episodes: int = 8, steps: int = 15,
                 context: int = 1, decode_steps: int = 8, temperature: float = 0.0,
                 val_fraction: float = 0.05, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Mean PSNR per dreamed step over held-out episodes; model vs copy-last-frame vs the
    tokenizer's own reconstruction (the ceiling a model with this tokenizer can reach)."""
    cfg = bundle.read_config(bundle_dir)
    image_tok = load_image_tokenizer(bundle_dir, device)
    model = load_world_model(bundle_dir, device)
    action_tok = action_tokenizer_from_config(cfg["action_tokenizer"])
    store = EpisodeStore(data)
    _, val_ids = store.split(val_fraction)
    rng = np.random.default_rng(seed)
    real, acts = [], []
    for ep in store.iter_episodes(val_ids):
        if ep.num_steps < context + steps:
            continue
        t0 = int(rng.integers(0, ep.num_steps - (context + steps) + 1))
        real.append(ep.frames[t0:t0 + context + steps])  # (C+S, H, W, 3)
        acts.append(action_tok.encode_array(ep.actions[t0:t0 + context + steps - 1]))
        if len(real) == episodes:
            break
    if not real:
        raise WorldsimError(f"no held-out episode in {data} has {context + steps} frames")
    real_BTHWC = torch.from_numpy(np.stack(real))
    acts_BTA = torch.from_numpy(np.stack(acts)).long().to(device)
    b = real_BTHWC.shape[0]
    ctx_tokens = image_tok.encode(real_BTHWC[:, :context].flatten(0, 1)).view(b, context, -1)
    # The engine's cached decoders; `ar` for next-token models (exact), block diffusion in
    # `decode_steps` passes.
    name = "block_diffusion" if model.cfg.objective == "block_diffusion" else "ar"
    engine = Engine(model, image_tok, action_tok, DecoderSettings(
        name, steps=decode_steps, sampling=SamplingSettings(temperature=temperature)),
        max_sessions=b, seed=seed)
    sessions = [engine.open(ctx_tokens[i], acts_BTA[i, :context - 1], seed=seed + i) for i in range(b)]
    t_start = time.perf_counter()
    images = []
    for t in range(steps):
        out = engine.step({s: acts_BTA[i, context - 1 + t] for i, s in enumerate(sessions)})
        images.append(np.stack([out[s][0] for s in sessions]))
    seconds = time.perf_counter() - t_start
    frames = torch.from_numpy(np.stack(images, 1))  # (B, S, H, W, 3)
    truth = real_BTHWC[:, context:]
    recon = image_tok.decode(image_tok.encode(truth.flatten(0, 1))).cpu().view_as(truth)
    last = real_BTHWC[:, context - 1:context].expand_as(truth)

    model_s, copy_s, recon_s = (pooled_psnr_per_step(x, truth) for x in (frames, last, recon))
    return {"episodes": b, "steps": steps, "context": context, "objective": model.cfg.objective,
            "psnr": float(np.mean(model_s)), "psnr_first3": float(np.mean(model_s[:3])),
            "copy_last_psnr": float(np.mean(copy_s)), "copy_last_first3": float(np.mean(copy_s[:3])),
            "tokenizer_psnr": float(np.mean(recon_s)), "per_step": model_s,
            "copy_last_per_step": copy_s, "seconds": seconds, "frames": frames, "truth": truth}


def pooled_psnr_per_step(x_BSHWC: torch.Tensor, truth_BSHWC: torch.Tensor) -> list[float]:
    """PSNR at each rollout step from the squared error pooled over episodes.

    Pooling the error (rather than averaging per-frame PSNR) keeps one exactly repeated frame,
    whose PSNR is infinite, from swamping the mean: a player standing still makes copy-last
    exact, and Crafter players often stand still."""
    mse_BS = (x_BSHWC.float() - truth_BSHWC.float()).pow(2).flatten(2).mean(2)
    return (10 * torch.log10(255.0**2 / mse_BS.mean(0).clamp_min(1e-10))).tolist()
