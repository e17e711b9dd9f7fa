"""Does a stall in the context stop a Crafter dream from moving? A one-step probe.

    python benchmarks/stall_probe.py [--bundle B] [--data data/crafter] [--episodes 64]
                                     [--seed 0] [--temperature T] [--decoder block_diffusion:4]
                                     [--draws 2]

`benchmarks/scroll_misses.py` finds that most misses of the dream's scroll follow an earlier
miss: once the dream has stood still under a move key, it tends to stand still again under the
same key, even where its own way is open. In the real game a failed move is followed by another
failed move under the same key almost always (the way stays blocked), so a model may have
learned "a stall predicts a stall" instead of reading the tile in front of the player.

The probe takes every real step of the held-out windows (the eval's windows for the same
`--episodes` and `--seed`) where a move key scrolls the real view, and dreams that one frame
from real context two ways:
- plain: the two real frames before it, then the key;
- stalled: the same, with the last real frame shown twice, the key pressed in between without
  effect (a stall, as a dream that missed a move shows it), then the key again.
It reports how often the dream scrolls the real way in each. The real tile ahead is open in
both, so a model that reads the tile moves as often after the stall as without it.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from tqdm import tqdm

from _windows import add_options, load
from worldsim import metrics
from worldsim.commands._args import positive_int
from worldsim.evaluation import run as ev
from worldsim.inference.engine import Engine

MOVES = (1, 2, 3, 4)  # Crafter's move left, right, up, down


def probe_steps(real: ev.Real, keys: np.ndarray) -> list[tuple[int, int]]:
    """(window, frame index j) for every real frame j >= 2 reached by a move key that scrolled
    the view from frame j - 1."""
    B, T = real.frames.shape[:2]
    prev = torch.from_numpy(real.frames[:, 1:T - 1].reshape(-1, *real.shape))
    nxt = torch.from_numpy(real.frames[:, 2:T].reshape(-1, *real.shape))
    moved = metrics.scroll_direction(prev, nxt, real.tile, real.map_rows).view(B, T - 2).numpy()
    return [(b, j + 2) for b, j in zip(*np.nonzero(moved)) if int(keys[b, j + 1]) in MOVES]


def dream(engine: Engine, real: ev.Real, steps: list[tuple[int, int]], stalled: bool, seed: int,
          batch: int, bar: tqdm) -> np.ndarray:
    """The dreamed frame j of every probe step (P, H, W, 3)."""
    out = np.zeros((len(steps), *real.shape), np.uint8)
    acts = real.actions
    for lo in range(0, len(steps), batch):
        sessions = {}
        for k, (b, j) in enumerate(steps[lo:lo + batch]):
            ctx, a = real.tokens[b, j - 2:j], acts[b, j - 2:j - 1]
            if stalled:  # frame j-1 again, after the key that will move it (without effect)
                ctx = torch.cat([ctx, real.tokens[b, j - 1:j]])
                a = torch.cat([a, acts[b, j - 1:j]])
            s = ev._open(engine, ctx, a, seed + lo + k, real.windows[b].start + j - 2)
            sessions[s] = (lo + k, acts[b, j - 1])
        res = engine.step({s: key for s, (_, key) in sessions.items()})
        for s, (i, _) in sessions.items():
            out[i] = res[s][0]
            s.close()
        bar.update(len(sessions))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p)
    p.add_argument("--draws", type=positive_int, default=2, help="samples of each dream (sampling seeds; default: 2)")
    p.add_argument("--batch", type=positive_int, default=64, help="dreams per engine step (default: 64)")
    args = p.parse_args()
    w = load(args, "model to probe")
    if w.model.cfg.frames < 3:
        raise SystemExit(f"the probe needs a model that sees 3 frames; {w.bundle} sees {w.model.cfg.frames}")
    real, windows = w.real, w.windows
    keys = np.stack([np.asarray(x.actions).reshape(len(x.actions), -1)[:, 0] for x in windows])
    steps = probe_steps(real, keys)
    if not steps:
        raise SystemExit("no real moves in these windows")
    engine = Engine(w.model, w.image_tok, w.action_tok, w.decoder, max_sessions=args.batch, seed=args.seed)

    b_idx = np.array([b for b, _ in steps])
    j_idx = np.array([j for _, j in steps])
    prev = torch.from_numpy(real.frames[b_idx, j_idx - 1])
    want = metrics.scroll_direction(prev, torch.from_numpy(real.frames[b_idx, j_idx]),
                                    real.tile, real.map_rows).numpy()
    agree = {False: [], True: []}
    with tqdm(total=2 * args.draws * len(steps), desc="probe") as bar:
        for d in range(args.draws):
            for stalled in (False, True):
                img = dream(engine, real, steps, stalled, args.seed + 1000 * d, args.batch, bar)
                got = metrics.scroll_direction(prev, torch.from_numpy(img), real.tile, real.map_rows).numpy()
                agree[stalled].append(got == want)
    plain, stall = np.stack(agree[False]), np.stack(agree[True])  # (draws, P)
    print(f"{w.bundle}, {len(windows)} windows (seed {args.seed}), {args.decoder} at T={args.temperature}: "
          f"{len(steps)} real moves, {args.draws} draws each")
    print(f"dream scrolls the real way: plain context {plain.mean():.1%}, after a stall {stall.mean():.1%}")
    print(f"moves it makes plain but not after the stall: {(plain & ~stall).sum()}, "
          f"after the stall but not plain: {(stall & ~plain).sum()} (of {plain.size})")


if __name__ == "__main__":
    main()
