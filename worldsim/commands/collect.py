"""`worldsim collect`: play a game with an exploration policy, or convert VPT recordings, into
an episode store."""

from __future__ import annotations

import argparse
import os

from worldsim.commands._args import existing_dir, out_dir, positive_int, seed
from worldsim.errors import WorldsimError

HELP = """\
Collect episodes into an episode store (see worldsim.data.store for the format).

  worldsim collect --env crafter --episodes 20 --steps 200 --out data/crafter
  worldsim collect --from-vpt recordings/ --out data/minerl --size 224x384

Run it again with the same arguments and it resumes: finished episodes are kept and only the
missing ones are collected."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="collect game episodes into an episode store",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=out_dir, required=True, help="episode store folder (made if missing)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--env", default="crafter", choices=["crafter"],
                     help="game to play with the exploration policy (default: crafter)")
    src.add_argument("--from-vpt", metavar="DIR", type=existing_dir,
                     help="convert VPT contractor recordings (NAME.mp4 + NAME.jsonl) instead")
    # The game's options default to None here, so that one given with --from-vpt (which plays
    # nothing) is refused rather than ignored; CRAFTER_DEFAULTS fills in the rest.
    p.add_argument("--episodes", type=positive_int, help="number of episodes (default: 20)")
    p.add_argument("--steps", type=positive_int,
                   help="steps per episode; an episode ends early if the player dies (default: 200)")
    p.add_argument("--seed", type=seed, help="base seed; episode i is fixed by (seed, i) (default: 0)")
    p.add_argument("--size", type=frame_size, default=None,
                   help="frame size: N for crafter (a multiple of 9 from 18 up, default 72), HxW "
                        "for VPT (default 224x384, MineWorld's)")
    p.add_argument("--workers", type=positive_int,
                   help="parallel game processes (default: up to 4, one per core)")
    p.add_argument("--idle-do", type=float, metavar="P",
                   help="crafter: the chance of pressing `do` facing grass, sand or path, where the game "
                        "changes nothing in view (but for a sapling in the inventory, one press on grass in "
                        "ten), so that a model learns that too (default: 0, the "
                        "policy the shipped model's store was collected with; 0.05 is suggested for new "
                        "stores, see benchmarks/idle_do.py)")
    p.add_argument("--integer-camera", action="store_true",
                   help="VPT: truncate camera degrees to integers, as MineWorld does")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


CRAFTER_DEFAULTS = {"episodes": 20, "steps": 200, "seed": 0, "workers": min(4, os.cpu_count() or 1),
                    "idle_do": 0.0}


def frame_size(text: str) -> tuple[int, int]:
    """`N` (square) or `HxW`, at least 8x8."""
    try:
        if "x" in text.lower():
            h, w = (int(v) for v in text.lower().split("x"))
        else:
            h = w = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be N or HxW, got {text!r}") from None
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"must be at least 8x8, got {text!r}")
    return h, w


def run(args: argparse.Namespace) -> int:
    if args.from_vpt:
        given = [k for k in CRAFTER_DEFAULTS if getattr(args, k) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise WorldsimError(f"{flag} applies to playing Crafter; --from-vpt converts every "
                                "recording in its folder as it is")
        return _run_vpt(args)
    for key, value in CRAFTER_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    # Crafter: the options that depend on the source are checked before anything is loaded
    if args.integer_camera:
        raise WorldsimError("--integer-camera applies to VPT recordings (--from-vpt); Crafter's "
                            "actions have no camera")
    from worldsim.envs.crafter import CRAFTER_MIN_SIZE

    h, w = args.size or (72, 72)
    if h != w or h % 9 or h < CRAFTER_MIN_SIZE:
        raise WorldsimError(f"crafter frames are square with 9 tiles a side, of at least "
                            f"{CRAFTER_MIN_SIZE // 9} pixels each: --size must be a multiple of 9 "
                            f"from {CRAFTER_MIN_SIZE} up, got {h}x{w}")
    from worldsim.data.collect import collect_crafter

    s = collect_crafter(args.out, args.episodes, args.steps, seed=args.seed, size=h,
                        workers=args.workers, progress=not args.no_progress, idle_do=args.idle_do)
    if s["episodes"] == 0:
        # --episodes may ask for fewer than the store holds: its counts are the whole store's
        n = s["skipped"]
        print(f"nothing to do: {n} episode{'s' if n != 1 else ''} already in {args.out} "
              f"(it holds {s['store_episodes']} episodes, {s['store_frames']} frames in all)")
    else:
        print(f"collected {s['episodes']} episodes ({s['skipped']} already there), "
              f"{s['frames']} frames, {s['bytes'] / 1e6:.1f} MB, "
              f"{s['frames'] / max(s['seconds'], 1e-9):.0f} frames/s -> {args.out} "
              f"({s['store_episodes']} episodes, {s['store_frames']} frames in all)")
    return 0


def _run_vpt(args: argparse.Namespace) -> int:
    import warnings
    from pathlib import Path

    from worldsim.data.vpt import VPTWarning, convert_vpt, find_recordings

    h, w = args.size or (224, 384)
    if h % 8 or w % 8:  # said before hours of video are converted into frames nothing reads
        raise WorldsimError(f"--size {h}x{w}: the image tokenizers read frames in 8-pixel patches (16 for "
                            "--preset mineworld); give sides that are multiples of 8, as the default 224x384")
    with warnings.catch_warnings():  # convert_vpt names unpaired files itself
        warnings.simplefilter("ignore", VPTWarning)
        found = len(find_recordings(args.from_vpt))
    if not found:
        raise WorldsimError(f"no VPT recording (NAME.mp4 with its NAME.jsonl) in {args.from_vpt}")
    out = Path(args.out)
    made = [p for p in (out, out / "episodes", out / "dataset.json") if not p.exists()]
    s = convert_vpt(args.from_vpt, args.out, size=args.size or (224, 384),
                    integer_camera=args.integer_camera, progress=not args.no_progress)
    if s["episodes"] == 0 and s["skipped"] == 0:
        # Nothing was written: take back the store this run made, so that its frame size and
        # camera rule do not hold the folder for the next try. Only the empty folders go.
        for p in reversed(made):
            try:
                if p.is_dir():
                    p.rmdir()
                else:
                    p.unlink()
            except OSError:  # not empty, or already gone: keep it
                pass
        raise WorldsimError(f"none of the {found} VPT recordings in {args.from_vpt} could be "
                            "converted (the warnings above say why)")
    print(f"converted {s['episodes']} recordings ({s['skipped']} already there, "
          f"{s['failed']} failed), {s['frames']} frames, {s['mb']:.1f} MB, "
          f"{s['frames'] / max(s['seconds'], 1e-9):.0f} frames/s -> {args.out}")
    return 0
