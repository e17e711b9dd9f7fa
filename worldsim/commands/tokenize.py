"""`worldsim tokenize`: encode an episode store into token shards for training."""

from __future__ import annotations

import argparse

from worldsim.commands._args import device, existing_dir, out_dir, positive_int

HELP = """\
Encode every episode of a store into token shards that training memory-maps: frame tokens
uint16 [T+1, N] and action tokens [T, A] per episode, packed into frames.npy / actions.npy with
an index.json (see worldsim.data.shards for the layout).

  worldsim tokenize --data data/crafter --tokenizer runs/tok --out data/crafter-tokens

Several stores of one game go into one set of shards with --data repeated, for a model trained
on all of them (a new collection beside an old one):

  worldsim tokenize --data data/crafter --data data/crafter-idle5 --tokenizer runs/tok --out data/mix

The first store's episodes keep their ids, so its held-out episodes stay the ones `worldsim eval`
judges (but a store of a few dozen episodes or fewer, which holds out only its lowest-scoring one,
may hold out another or none among the others'); another store's are named <its folder name>/<id>
and are held out by those names, not as in that store alone.
Stores collected with the same --seed are refused: episode i of each plays the same world, so
one store's held-out worlds would be trained on through the other's (collect with --seed 5);
so are VPT stores that hold one recording (a copy of a store, a folder converted twice).

Resumable: an episode already tokenized from the same file with the same tokenizer is kept;
one that differs (written again, or another store's under the same id) is done again. Corrupt
episodes are skipped with a warning."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenize", help="encode an episode store into token shards",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=existing_dir, required=True, action="append",
                   help="episode store folder; repeat it to tokenize several stores of one game together")
    p.add_argument("--tokenizer", type=existing_dir, required=True, help="bundle with an image tokenizer")
    p.add_argument("--out", type=out_dir, required=True, help="token shards folder (made if missing)")
    p.add_argument("--batch", type=positive_int, default=256, help="frames per encode batch (default: 256)")
    p.add_argument("--device", type=device, default="auto", help="cpu | cuda | auto (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from worldsim.data.shards import tokenize_store

    s = tokenize_store(args.data, args.tokenizer, args.out, batch=args.batch, device=args.device,
                       progress=not args.no_progress)
    corrupt = f", {s['corrupt']} corrupt skipped" if s["corrupt"] else ""
    print(f"tokenized {s['tokenized']} episodes ({s['episodes'] - s['tokenized']} already there{corrupt}), "
          f"{s['new_frames']} frames at {s['new_frames'] / max(s['seconds'], 1e-9):.0f} frames/s; "
          f"{s['episodes']} episodes, {s['frames']} frames in {args.out}")
    return 0
