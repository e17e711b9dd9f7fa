"""`worldsim train-tokenizer`: train the VQ image tokenizer on an episode store."""

from __future__ import annotations

import argparse

HELP = """\
Train the VQ image tokenizer on an episode store and write it into a bundle folder.

  worldsim train-tokenizer --data data/crafter --out runs/tok --preset crafter --steps 3000

The progress bar shows loss, reconstruction PSNR and codebook usage. Killed and started again
with the same --out, the run continues from its last checkpoint. It ends with held-out PSNR
(day and night frames apart), SSIM, codebook usage and perplexity, encode+decode frames/s, and
writes reconstructions.png (originals over reconstructions) into --out."""


def register(sub: argparse._SubParsersAction) -> None:
    from worldsim.train_tokenizer import TokenizerTrainSettings as S

    p = sub.add_parser("train-tokenizer", help="train the VQ image tokenizer on an episode store",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="episode store folder (from `worldsim collect`)")
    p.add_argument("--out", required=True, help="bundle folder to write (resumes if it has a checkpoint)")
    p.add_argument("--preset", default="crafter", help="tokenizer preset: tiny | crafter (default: crafter)")
    p.add_argument("--steps", type=int, default=S.steps, help=f"optimizer steps (default: {S.steps})")
    p.add_argument("--batch", type=int, default=S.batch, help=f"frames per step (default: {S.batch})")
    p.add_argument("--lr", type=float, default=S.lr, help=f"peak learning rate (default: {S.lr})")
    p.add_argument("--max-frames", type=int, default=None,
                   help="load at most this many training frames (default: all)")
    p.add_argument("--eval-frames", type=int, default=S.eval_frames,
                   help=f"held-out frames for the final metrics (default: {S.eval_frames})")
    p.add_argument("--seed", type=int, default=S.seed, help="random seed (default: 0)")
    p.add_argument("--checkpoint-seconds", type=float, default=S.checkpoint_seconds,
                   help=f"seconds between checkpoints (default: {S.checkpoint_seconds:.0f})")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from worldsim.train_tokenizer import TokenizerTrainSettings, train_tokenizer

    if args.steps < 1 or args.batch < 1:
        from worldsim.errors import WorldsimError

        raise WorldsimError("--steps and --batch must be at least 1")
    s = TokenizerTrainSettings(steps=args.steps, batch=args.batch, lr=args.lr,
                               eval_frames=args.eval_frames, seed=args.seed,
                               checkpoint_seconds=args.checkpoint_seconds)
    m = train_tokenizer(args.data, args.out, preset=args.preset, settings=s, device=args.device,
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
