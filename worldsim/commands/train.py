"""`worldsim train`: train the world model on token shards (one process, or under torchrun)."""

from __future__ import annotations

import argparse

from worldsim.commands._args import (device, existing_dir, fraction, nonneg_float, nonneg_int,
                                     out_dir, positive_float, positive_int, seed)

HELP = """\
Train the world model on token shards and write a playable bundle.

  worldsim train --shards data/crafter-tokens --tokenizer runs/tok --out runs/wm \\
      --objective block_diffusion --preset crafter --steps 2000
  torchrun --nproc-per-node 2 -m worldsim train ...   (data-parallel, same arguments)

Objectives: ar (next-token, decoded by `ar` or `diagonal`) and block_diffusion (masked within
a frame, causal across frames, decoded in a few passes per frame). Killed and started again with
the same --out, training continues from its last checkpoint, and may go on with longer windows
(--frames). The loss curve goes to
train_log.jsonl in --out.

To train a trained model further on new data, start a new --out from it:

  worldsim train --init assets/models/crafter --shards data/mix-tokens --tokenizer \\
      assets/models/crafter --out runs/ft --objective block_diffusion --lr 1.5e-4 --ema 0.99"""


def window_frames(text: str) -> int:
    """0 (the preset's window) or at least 2: the first frame of a window is context only."""
    n = nonneg_int(text)
    if n == 1:
        raise argparse.ArgumentTypeError("must be 0 (the preset's) or at least 2: the first frame "
                                         "of a window is context")
    return n


def ema_decay(text: str) -> float:
    """0 (off) or a decay in (0, 1)."""
    x = fraction(text)
    if x == 1.0:
        raise argparse.ArgumentTypeError("must be below 1 (a decay of 1 never leaves the first weights)")
    return x


def register(sub: argparse._SubParsersAction) -> None:
    from worldsim.train_settings import TrainSettings as S

    p = sub.add_parser("train", help="train the world model on token shards",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=existing_dir, required=True, help="token shards folder (from `worldsim tokenize`)")
    p.add_argument("--tokenizer", type=existing_dir, required=True, help="bundle with the image tokenizer used for the shards")
    p.add_argument("--out", type=out_dir, required=True, help="bundle folder to write (resumes if it has a checkpoint)")
    p.add_argument("--objective", default="ar", choices=["ar", "block_diffusion"],
                   help="training objective (default: ar)")
    p.add_argument("--preset", default="crafter", help="model preset: tiny | crafter | mineworld-300m")
    p.add_argument("--steps", type=positive_int, default=S.steps, help=f"optimizer steps (default: {S.steps})")
    p.add_argument("--batch", type=positive_int, default=S.batch, help=f"windows per step per process (default: {S.batch})")
    p.add_argument("--frames", type=window_frames, default=S.frames, help="frames per window; a resumed bundle may go on with another window, "
                        "which no weight depends on (default: the preset's, or a resumed bundle's)")
    p.add_argument("--lr", type=positive_float, default=S.lr, help=f"peak learning rate (default: {S.lr})")
    p.add_argument("--warmup", type=nonneg_int, default=S.warmup,
                   help=f"warmup steps, at most half of --steps (default: {S.warmup})")
    p.add_argument("--dtype", default=S.dtype, choices=["auto", "bf16", "fp32"],
                   help="autocast dtype; auto uses bf16 where the device runs it fast (default: auto)")
    p.add_argument("--val-every", type=positive_int, default=S.val_every, help=f"steps between validations (default: {S.val_every})")
    p.add_argument("--log-every", type=positive_int, default=S.log_every,
                   help="steps between lines of train_log.jsonl; under torchrun also between the ranks' "
                        f"agreements on the clock of --max-minutes (default: {S.log_every})")
    p.add_argument("--max-minutes", type=nonneg_float, default=0.0,
                   help="stop after this many minutes of training and write the bundle; the learning rate's "
                        "cosine ends with them, or at --steps if that comes first (default: no limit)")
    p.add_argument("--context-noise", type=fraction, default=S.context_noise,
                   help="block_diffusion: fraction of context image tokens replaced by random codes "
                        "in training, to recover from its own mistakes in rollouts (default: 0)")
    p.add_argument("--context-dreams", type=fraction, default=S.context_dreams,
                   help="block_diffusion: fraction of windows whose context frames after the first "
                        "are the model's own one-step dreams (two extra forward passes each, without "
                        "gradients); targets stay real. It lost to plain training in the study "
                        "(benchmarks/results/cpu/study) (default: 0)")
    p.add_argument("--context-stalls", type=fraction, default=S.context_stalls,
                   help="block_diffusion: fraction of windows in which one step is played twice, the "
                        "first time without effect (no loss on the repeated frame), so that a dream "
                        "that once fails to move does not stay still from then on (default: 0)")
    p.add_argument("--rope", default=None, choices=["1d", "3d"],
                   help="rotary positions: 1d (frame * L + slot) or 3d (frame, row, column, the same "
                        "offset for a one-tile scroll anywhere in the frame) (default: the preset's)")
    p.add_argument("--ema", type=ema_decay, default=S.ema,
                   help="keep an exponential moving average of the weights with this decay per step "
                        "(0.999 averages over about the last 1,000 steps) and write it to the bundle "
                        "instead of the last step's weights (default: 0, off)")
    p.add_argument("--optimizer", default=S.optimizer, choices=["adamw", "muon"],
                   help="muon: Muon (orthogonalised momentum) for the matrices of the transformer's "
                        "blocks and AdamW for embeddings, head and norms, both on --lr's schedule; "
                        "or adamw for all (default: a resumed run's own, else muon)")
    p.add_argument("--width", type=nonneg_int, default=S.width,
                   help="model dimension instead of the preset's; the feed-forward dimension "
                        "scales with it (default: 0, the preset's)")
    p.add_argument("--depth", type=nonneg_int, default=S.depth,
                   help="transformer layers instead of the preset's (default: 0, the preset's)")
    p.add_argument("--init", type=existing_dir, default=None,
                   help="a trained bundle to start from: its model and weights, with a fresh optimizer "
                        "(to go on training a shipped model on new data); the bundle records it, and "
                        "plays at its temperature until one is chosen for it (default: random weights)")
    p.add_argument("--seed", type=seed, default=S.seed, help="random seed (default: 0)")
    p.add_argument("--checkpoint-seconds", type=nonneg_float, default=S.checkpoint_seconds,
                   help=f"seconds between checkpoints (default: {S.checkpoint_seconds:.0f})")
    p.add_argument("--device", type=device, default="auto", help="cpu | cuda | auto (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from worldsim.train import TrainSettings, train

    s = TrainSettings(steps=args.steps, batch=args.batch, frames=args.frames, lr=args.lr,
                      warmup=args.warmup, dtype=args.dtype, val_every=args.val_every,
                      seed=args.seed, checkpoint_seconds=args.checkpoint_seconds,
                      max_minutes=args.max_minutes, context_noise=args.context_noise,
                      context_dreams=args.context_dreams, context_stalls=args.context_stalls,
                      rope=args.rope or "", ema=args.ema, optimizer=args.optimizer,
                      width=args.width, depth=args.depth, init=str(args.init or ""), log_every=args.log_every)
    r = train(args.shards, args.tokenizer, args.out, objective=args.objective, preset=args.preset,
              settings=s, device=args.device, progress=not args.no_progress)
    if r.get("rank", 0) == 0 and r.get("budget_spent"):
        print(f"nothing to do: {args.out} has trained its --max-minutes {args.max_minutes:g} ({r['steps']} "
              f"steps, val loss {r['val_loss']:.4f}); raise --max-minutes to train it further, or "
              "choose another --out")
    elif r.get("rank", 0) == 0 and r.get("finished"):
        print(f"nothing to do: {args.out} is already trained to {r['steps']} steps (val loss "
              f"{r['val_loss']:.4f}); raise --steps to train it further, or choose another --out")
    elif r.get("rank", 0) == 0:
        print(f"trained {args.objective} ({r['params'] / 1e6:.1f}M params) for {r['steps']} steps in "
              f"{r['seconds'] / 60:.1f} min on {r['world_size']} process(es): val loss "
              f"{r['val_loss']:.4f}{' (moving average of the weights)' if r.get('ema') else ''}, "
              f"{r['tokens_per_s']:.0f} tokens/s -> {args.out}")
    return 0
