"""Train the world model on token shards, on one process or under torchrun.

    worldsim train --shards S --tokenizer TOK --out B --objective ar|block_diffusion
    torchrun --nproc-per-node 2 -m worldsim train ...      (the same command, data-parallel)

Optimisation: AdamW, linear warmup then cosine decay, gradient clipping, bf16 autocast where the
device runs it fast. Data: memory-mapped random windows of F frames, drawn from a generator
seeded by (seed, step, rank), so a resumed run sees the batches it would have seen.

Writes into the output bundle:
    config.json            image tokenizer, action tokenizer, model config, env, training settings
    image_tokenizer.safetensors, model.safetensors
    train_state.safetensors  model + optimizer + step (atomic, every --checkpoint-seconds)
    train_log.jsonl          one line per log interval: step, loss, val_loss, tokens/s, seconds
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from worldsim import bundle
from worldsim.checkpoint import load_checkpoint, save_checkpoint
from worldsim.data.store import split_ids
from worldsim.errors import WorldsimError
from worldsim.model import ModelConfig, WorldModel, preset_config
from worldsim.objectives import Objective
from worldsim.tokens import TokenShards

STATE_FILE = "train_state.safetensors"
LOG_FILE = "train_log.jsonl"


@dataclass
class TrainSettings:
    steps: int = 2000
    batch: int = 8  # windows per step per process
    frames: int = 0  # window length F; 0: the preset's
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dtype: str = "auto"  # auto | bf16 | fp32
    val_fraction: float = 0.05
    val_every: int = 100
    val_batches: int = 4
    log_every: int = 10
    seed: int = 0
    checkpoint_seconds: float = 120.0
    max_minutes: float = 0.0  # stop early (and write the bundle) after this much training time


def lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    t = min(1.0, (step - s.warmup) / max(1, s.steps - s.warmup))
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def cpu_has_fast_bf16() -> bool:
    """bf16 matmuls beat fp32 on CPUs with AMX or AVX512-BF16; elsewhere they are emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_for(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    use_bf16 = dtype == "bf16" or (dtype == "auto" and (
        (device.type == "cuda" and torch.cuda.is_bf16_supported()) or
        (device.type == "cpu" and cpu_has_fast_bf16())))
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Distributed:
    """torchrun's environment, or a single process."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        if requested == "auto":
            return torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")
        return torch.device(requested)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _build_config(preset: str, shards: TokenShards, objective: str, frames: int) -> ModelConfig:
    idx = shards.index
    tok = shards.action_tokenizer
    overrides: dict[str, Any] = dict(codebook_size=shards.K, tokens_per_frame=shards.N,
                                     action_tokens=shards.A, grid=tuple(idx["grid"]),
                                     action_ids=tok.num_ids, objective=objective, vocab_size=0)
    if frames:
        overrides["frames"] = frames
    try:
        return preset_config(preset, **overrides)
    except ValueError as e:
        raise WorldsimError(str(e)) from e


def train(shards_dir: str | Path, tokenizer: str | Path, out: str | Path, objective: str = "ar",
          preset: str = "crafter", settings: TrainSettings | None = None, device: str = "auto",
          progress: bool = True) -> dict[str, Any]:
    s = settings or TrainSettings()
    out = Path(out)
    ddp = Distributed()
    dev = ddp.device(device)
    all_shards = TokenShards(shards_dir)
    ids = all_shards.episode_ids
    train_ids, val_ids = split_ids(ids, s.val_fraction)  # the episode store's split rule
    train_shards = TokenShards(shards_dir, train_ids)
    val_shards = TokenShards(shards_dir, val_ids or train_ids)
    cfg = _build_config(preset, all_shards, objective, s.frames)
    F_ = cfg.frames
    f_starts, a_starts = train_shards.window_starts(F_)
    vf, va = val_shards.window_starts(F_)

    if ddp.main:
        tok_cfg = bundle.read_config(tokenizer)
        if "image_tokenizer" not in tok_cfg:
            raise WorldsimError(f"{tokenizer} has no image tokenizer")
        if (out / "config.json").exists():
            old = bundle.read_config(out).get("model")
            if old is not None and old != cfg.to_dict():
                raise WorldsimError(f"{out} holds a model with another config; choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "image_tokenizer.safetensors").exists():
            shutil.copyfile(Path(tokenizer) / "image_tokenizer.safetensors",
                            out / "image_tokenizer.safetensors")
        bundle.update_config(
            out, image_tokenizer=tok_cfg["image_tokenizer"],
            action_tokenizer=all_shards.index["action_tokenizer"], model=cfg.to_dict(),
            env=all_shards.index["env"], action_space=all_shards.index["action_space"],
            frame_size=all_shards.index["frame_size"], fps=all_shards.index["fps"],
            training={**asdict(s), "objective": objective, "preset": preset,
                      "shards": str(shards_dir), "world_size": ddp.world})
    ddp.barrier()

    torch.manual_seed(s.seed)
    model = WorldModel(cfg).to(dev)
    objective_mod: torch.nn.Module = Objective(model)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "emb" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=s.lr, betas=(0.9, 0.95), fused=dev.type == "cuda")
    step, elapsed = 0, 0.0
    state_path = out / STATE_FILE
    if state_path.exists():
        st = load_checkpoint(state_path, model, opt)
        step, elapsed = int(st["step"]), float(st.get("seconds", 0.0))
        if ddp.main:
            print(f"resuming from step {step} ({state_path})")
    if ddp.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # DDP broadcasts rank 0's weights at construction, so every rank starts identical.
        objective_mod = DDP(objective_mod, device_ids=[dev.index] if dev.type == "cuda" else None)

    def batch_at(step_: int, rank: int, starts: tuple[np.ndarray, np.ndarray], shards: TokenShards,
                 n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
        g = torch.Generator().manual_seed((s.seed * 1_000_003 + step_) * 4099 + rank)
        pick = torch.randint(0, len(starts[0]), (n,), generator=g).numpy()
        fr, ac = shards.gather(starts[0][pick], starts[1][pick], F_)
        return fr.to(dev, non_blocking=True), ac.to(dev, non_blocking=True), g

    @torch.no_grad()
    def val_loss() -> float:
        objective_mod.eval()
        losses = []
        for i in range(s.val_batches):
            fr, ac, g = batch_at(10**9 + i, 0, (vf, va), val_shards, s.batch)
            with autocast_for(dev, s.dtype):
                loss, _ = Objective(model)(fr, ac, g)
            losses.append(loss.item())
        objective_mod.train()
        return float(np.mean(losses))

    def checkpoint() -> None:
        if ddp.main:
            save_checkpoint(state_path, model, opt, {"step": step, "seconds": elapsed})

    log_path = out / LOG_FILE
    bar = tqdm(total=s.steps, initial=step, desc=f"train {objective}", unit="step",
               disable=not (progress and ddp.main))
    t_start = t_ckpt = time.perf_counter()
    elapsed0, tokens_seen, last_val = elapsed, 0, None
    tokens_per_window = F_ * cfg.block_len
    objective_mod.train()
    try:
        while step < s.steps:
            if s.max_minutes and elapsed > s.max_minutes * 60:
                break
            fr, ac, g = batch_at(step, ddp.rank, (f_starts, a_starts), train_shards, s.batch)
            for grp in opt.param_groups:
                grp["lr"] = lr_at(step, s)
            with autocast_for(dev, s.dtype):
                loss, _ = objective_mod(fr, ac, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            opt.step()
            step += 1
            tokens_seen += s.batch * tokens_per_window * ddp.world
            now = time.perf_counter()
            elapsed = elapsed0 + now - t_start
            bar.update(1)
            if step % s.val_every == 0 or step == s.steps:
                last_val = val_loss()
            if step % s.log_every == 0 or step == s.steps:
                tps = tokens_seen / max(now - t_start, 1e-9)
                bar.set_postfix(loss=f"{loss.item():.3f}", val=f"{last_val:.3f}" if last_val else "-",
                                tok_s=f"{tps:.0f}")
                if ddp.main:
                    with open(log_path, "a") as f:
                        f.write(json.dumps({"step": step, "loss": loss.item(), "val_loss": last_val,
                                            "grad_norm": float(gnorm), "lr": lr_at(step - 1, s),
                                            "tokens_per_s": tps, "seconds": elapsed}) + "\n")
            if now - t_ckpt > s.checkpoint_seconds:
                checkpoint()
                t_ckpt = now
    finally:
        bar.close()
        if step > 0:
            checkpoint()
    result = {"steps": step, "seconds": elapsed, "val_loss": last_val if last_val is not None else val_loss(),
              "tokens_per_s": tokens_seen / max(time.perf_counter() - t_start, 1e-9),
              "params": model.num_params(), "world_size": ddp.world, "rank": ddp.rank}
    if ddp.enabled:
        # Data parallelism must keep every replica identical; check it rather than assume it.
        sums = torch.stack([torch.cat([p.detach().double().flatten() for p in model.parameters()]).sum(),
                            sum((p.detach().double() ** 2).sum() for p in model.parameters())]).to(dev)
        gathered = [torch.zeros_like(sums) for _ in range(ddp.world)]
        dist.all_gather(gathered, sums)
        result["replica_checksums"] = [g.tolist() for g in gathered]
        result["replicas_identical"] = all(torch.equal(g, gathered[0]) for g in gathered)
    if ddp.main:
        bundle.save_weights(out, "model", model)
        bundle.update_config(out, model_metrics=result)
    ddp.barrier()
    ddp.close()
    return result

