"""`worldsim train-tokenizer`: train the VQ image tokenizer, or fit the tile tokenizer, on an episode store."""

from __future__ import annotations

import argparse

from worldsim.commands._args import (device, existing_dir, nonneg_float, nonneg_int, out_dir,
                                     positive_float, positive_int, seed)
from worldsim.errors import WorldsimError

HELP = """\
Train the VQ image tokenizer (or fit the tile tokenizer, --kind tile) on an episode store and
write it into a bundle folder.

  worldsim train-tokenizer --data data/crafter --out runs/tok --preset crafter --steps 3000
  worldsim train-tokenizer --kind tile --data data/crafter --out runs/tok-tile

--kind tile fits the tile tokenizer instead (tokenizers/tile.py: one code per tile, read from
that tile alone with the game's light factored out, so codes change only where the picture
does); it takes a minute on the CPU, needs no gradient steps and ends with held-out PSNR and
code flicker for day and night frames. --steps, --batch, --lr, --checkpoint-seconds,
--max-frames, --eval-frames and --device train the VQ tokenizer and are refused with --kind tile
(it fits on at most 200 training episodes, judges 16 held out); --codebook is the tile
tokenizer's only (the VQ tokenizer's codebook size is its --preset's).

The progress bar shows loss, reconstruction PSNR and codebook usage. Killed and started again
with the same --out, the run continues from its last checkpoint. It ends with held-out PSNR
(day and night frames apart), SSIM, codebook usage and perplexity, encode+decode frames/s, and
writes reconstructions.png (originals over reconstructions) into --out."""


def register(sub: argparse._SubParsersAction) -> None:
    from worldsim.train_settings import TokenizerTrainSettings as S

    p = sub.add_parser("train-tokenizer", help="train the VQ image tokenizer, or fit the tile tokenizer, on an episode store",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=("vq", "tile"), default="vq",
                   help="vq: the convolutional VQ autoencoder; tile: the per-tile codebook (default: vq)")
    p.add_argument("--codebook", type=positive_int, default=None,
                   help="tile: codebook size (default: the preset's, 256 for crafter)")
    p.add_argument("--data", type=existing_dir, required=True, help="episode store folder (from `worldsim collect`)")
    p.add_argument("--out", type=out_dir, required=True, help="bundle folder to write (resumes if it has a checkpoint)")
    p.add_argument("--preset", default="crafter",
                   help="tokenizer preset: tiny | crafter (72x72 -> 9x9 tokens) | mineworld (VQ only: MineRL's "
                        "224x384 -> 14x24 = 336 tokens of 8192 codes, MineWorld's shape) (default: crafter)")
    # The VQ-only flags default to None, so that one given with --kind tile is refused, not ignored.
    p.add_argument("--steps", type=positive_int, default=None, help=f"optimizer steps (default: {S.steps})")
    p.add_argument("--batch", type=positive_int, default=None, help=f"frames per step (default: {S.batch})")
    p.add_argument("--lr", type=positive_float, default=None, help=f"peak learning rate (default: {S.lr})")
    p.add_argument("--max-frames", type=positive_int, default=None,
                   help="load at most this many training frames (default: all)")
    p.add_argument("--eval-frames", type=positive_int, default=None,
                   help=f"held-out frames for the final metrics (default: {S.eval_frames})")
    p.add_argument("--seed", type=seed, default=S.seed, help="random seed (default: 0)")
    p.add_argument("--checkpoint-seconds", type=nonneg_float, default=None,
                   help=f"seconds between checkpoints (default: {S.checkpoint_seconds:.0f})")
    p.add_argument("--device", type=device, default=None, help="cpu | cuda | auto (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


VQ_ONLY = ("steps", "batch", "lr", "max_frames", "eval_frames", "checkpoint_seconds", "device")


def run(args: argparse.Namespace) -> int:
    if args.kind == "tile":
        return run_tile(args)
    if args.codebook is not None:
        raise WorldsimError("--codebook sizes the tile tokenizer (--kind tile); the VQ tokenizer's "
                            "codebook size is its --preset's")
    from worldsim.train_tokenizer import TokenizerTrainSettings, train_tokenizer

    given = {k: getattr(args, k) for k in ("steps", "batch", "lr", "eval_frames", "checkpoint_seconds")
             if getattr(args, k) is not None}  # the rest keep the settings' defaults
    s = TokenizerTrainSettings(**given, seed=args.seed)
    m = train_tokenizer(args.data, args.out, preset=args.preset, settings=s, device=args.device or "auto",
                        max_frames=args.max_frames, progress=not args.no_progress)

    def db(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f} dB"

    print(f"tokenizer: held-out PSNR {db(m['psnr_day'])} day ({m['day_frames']} frames), "
          f"{db(m['psnr_night'])} night ({m['night_frames']}) [pooled MSE: {db(m['psnr_day_pooled'])} "
          f"day, {db(m['psnr_night_pooled'])} night], SSIM {m['ssim']:.4f}, "
          f"codes used {m['codes_used']} ({m['code_usage']:.0%}), perplexity {m['perplexity']:.0f}, "
          f"encode+decode {m['fps_batch1']:.0f} frames/s at batch 1, {m['fps_batch64']:.0f} at 64, "
          f"{m['steps']} steps in {m['train_seconds'] / 60:.1f} min -> {args.out}")
    return 0


def run_tile(args: argparse.Namespace) -> int:
    from worldsim.fit_tiles import fit_tile_tokenizer, summary_line

    given = [f"--{k.replace('_', '-')}" for k in VQ_ONLY if getattr(args, k) is not None]
    if given:
        raise WorldsimError(f"{', '.join(given)} train{'s' if len(given) == 1 else ''} the VQ tokenizer; "
                            "--kind tile fits its codebook on the CPU without them")
    m = fit_tile_tokenizer(args.data, args.out, preset=args.preset, codebook_size=args.codebook,
                           seed=args.seed, progress=not args.no_progress)
    print(f"{summary_line(m)}; {m['groups']} tile groups fitted in {m['fit_seconds']:.0f} s -> {args.out}")
    return 0
