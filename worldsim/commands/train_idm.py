"""`worldsim train-idm`: train an inverse dynamics model, the judge of action following."""

from __future__ import annotations

import argparse

from worldsim.commands._args import device, existing_dir, fraction, out_dir, positive_float, positive_int, seed

HELP = """\
Train a small inverse dynamics model on consecutive real frame pairs of an episode store: it
predicts the action taken between two frames. `worldsim eval --idm OUT` then scores dreamed
rollouts with it (precision, recall and F1 against the actions that drove the dream) beside its
score on real held-out pairs. Crafter: movement (left, right, up, down, none) apart from the
other actions; MineRL: MineWorld's key groups and camera bin error.

  worldsim train-idm --data data/crafter --out runs/idm            (a few CPU minutes)

Killed and started again with the same --out, training continues from its last checkpoint. It
ends with the held-out scores, also written into OUT/config.json."""


def register(sub: argparse._SubParsersAction) -> None:
    from worldsim.train_settings import IDMTrainSettings as S  # no torch: --help stays instant

    p = sub.add_parser("train-idm", help="train an inverse dynamics model (action from two frames)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=existing_dir, required=True, help="episode store folder")
    p.add_argument("--out", type=out_dir, required=True, help="folder to write (resumes if it has a checkpoint)")
    p.add_argument("--steps", type=positive_int, default=S.steps, help=f"optimizer steps (default: {S.steps})")
    p.add_argument("--batch", type=positive_int, default=S.batch, help=f"pairs per step (default: {S.batch})")
    p.add_argument("--lr", type=positive_float, default=S.lr, help=f"peak learning rate (default: {S.lr})")
    p.add_argument("--channels", type=positive_int, default=32, help="conv width (default: 32)")
    p.add_argument("--val-fraction", type=held_out_fraction, default=S.val_fraction,
                   help=f"held-out share of episodes, by the store's split rule, above 0 and below 1: "
                        f"the model is scored on them and trained on the rest (default: {S.val_fraction})")
    p.add_argument("--max-frames", type=positive_int, default=S.max_frames,
                   help=f"training frames held in memory (default: {S.max_frames})")
    p.add_argument("--seed", type=seed, default=S.seed, help="random seed (default: 0)")
    p.add_argument("--checkpoint-seconds", type=positive_float, default=S.checkpoint_seconds,
                   help=f"seconds between checkpoints (default: {S.checkpoint_seconds:.0f})")
    p.add_argument("--device", type=device, default="auto", help="cpu | cuda | auto (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def held_out_fraction(text: str) -> float:
    """A share strictly between 0 and 1: train-idm ends with scores on held-out episodes, so it
    needs some, and trains on the rest, so it needs those too."""
    x = fraction(text)
    if x == 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}: the model is scored on "
                                         "held-out episodes, and 0 holds none out")
    if x == 1:
        raise argparse.ArgumentTypeError(f"must be below 1, got {text}: the model is trained on "
                                         "the episodes not held out, and 1 holds them all out")
    return x


def run(args: argparse.Namespace) -> int:
    from worldsim.idm import IDMTrainSettings, train_idm

    s = IDMTrainSettings(steps=args.steps, batch=args.batch, lr=args.lr, val_fraction=args.val_fraction,
                         max_frames=args.max_frames, seed=args.seed,
                         checkpoint_seconds=args.checkpoint_seconds)
    r = train_idm(args.data, args.out, s, channels=args.channels, device=args.device,
                  progress=not args.no_progress)
    h = r["heldout"]
    groups = ", ".join(f"{k} F1 {v['macro_f1']:.3f}" for k, v in h.items() if isinstance(v, dict))
    if h.get("camera_bin_error") is not None:  # MineRL: how far its camera is off, in bins
        groups += f", camera {h['camera_bin_error']:.3f} bins off"
    print(f"idm: {r['steps']} steps in {r['seconds'] / 60:.1f} min; held-out {r['heldout_pairs']} pairs: "
          f"{groups} -> {args.out}")
    return 0
