"""The settings of the training runs, apart from the runs: the CLI reads their defaults while
building its parsers, and this module imports no torch, so `worldsim --help` stays instant."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainSettings:
    """The world model's training (worldsim.train)."""

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
    # block_diffusion: the fraction of context image tokens replaced by random codes, so the
    # model learns to read past its own mistakes in long rollouts (targets stay clean)
    context_noise: float = 0.0
    # block_diffusion: the fraction of windows whose context frames after the first are the
    # model's own one-step dreams, so it learns to go on from frames like those it feeds back
    # at play (targets stay real)
    context_dreams: float = 0.0
    # block_diffusion: the fraction of windows in which one step is played twice, the first time
    # without effect, so the model learns that a stall does not make the next move fail (no loss
    # on the repeated frame)
    context_stalls: float = 0.0
    rope: str = ""  # rotary positions, "1d" | "3d"; "": the preset's
    # decay per step of an exponential moving average of the weights, which the bundle gets
    # instead of the last step's weights; 0: off
    ema: float = 0.0
    # "adamw" | "muon" (Muon for the blocks' matrices, AdamW for the rest); "": a resumed run's
    # own, else worldsim.optim.DEFAULT_OPTIMIZER
    optimizer: str = ""
    width: int = 0  # model dimension; 0: the preset's (the feed-forward dimension scales with it)
    depth: int = 0  # transformer layers; 0: the preset's
    # a trained bundle whose model (config and weights) a fresh run starts from; "": none
    init: str = ""


@dataclass
class TokenizerTrainSettings:
    """The VQ image tokenizer's training (worldsim.train_tokenizer)."""

    steps: int = 10000
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.0
    val_fraction: float = 0.05
    eval_frames: int = 4096
    seed: int = 0
    checkpoint_seconds: float = 120.0


@dataclass
class IDMTrainSettings:
    """The inverse dynamics model's training (worldsim.idm)."""

    steps: int = 1500
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.05  # the episode store's split rule, as the world model's training
    max_frames: int = 30000  # training frames held in memory
    eval_pairs: int = 4096
    seed: int = 0
    checkpoint_seconds: float = 60.0
