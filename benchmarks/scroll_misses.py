"""Why a Crafter dream fails to scroll: each miss of `worldsim eval`'s scroll agreement, sorted.

    python benchmarks/scroll_misses.py [--bundle B] [--data data/crafter] [--episodes 64]
                                      [--seed 0] [--temperature T] [--decoder block_diffusion:4]

Runs the eval's rollouts (the same windows, seeds and decoder as `worldsim eval` with the same
arguments) and, for every step where the real view scrolls and the dream's does not scroll the
same way, asks:
- did the dream stay still, or scroll another way;
- was the dream's own way blocked: the tile the player walks into, in the dream's previous
  frame, is matched to its nearest day tile among real moves of training episodes, which are
  labelled by whether the real view then scrolled (walked) or not (blocked). A miss on a
  blocked tile is a dream that obeys its own world, which has drifted from the real one; a miss
  on an open tile is a move the model did not make. The same labelling of the hits gives the
  matcher's error rate;
- could a scroll be seen at all: if the dream's previous frame, shifted one tile the real way,
  differs from itself by less than the scroll detector's margin (a field of one tile, grass),
  the dream may have moved without the detector seeing it;
- was that tile in view in the real context frame (the dream's own moves so far tracked from
  it), or is it terrain the dream had to invent: a blocked tile it could have known is a dream
  that forgot or garbled the world; one it invented is as good a guess as any.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch
from tqdm import tqdm

from _windows import (CONTEXT, HORIZON, PLAYER, STEP, TARGET_TILE, add_options, load, plain_share,
                      scroll_visible, training_matcher)
from worldsim import metrics
from worldsim.commands._args import positive_int
from worldsim.evaluation import run as ev
from worldsim.inference.engine import Engine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p)
    p.add_argument("--library-episodes", type=positive_int, default=120,
                   help="training episodes for the tile matcher (default: 120)")
    args = p.parse_args()
    w = load(args, "model to measure")
    windows, real, codec = w.windows, w.real, w.codec
    C, H = CONTEXT, HORIZON
    engine = Engine(w.model, w.image_tok, w.action_tok, w.decoder, max_sessions=len(windows), seed=args.seed)
    with tqdm(total=H, desc="rollout") as bar:
        dream, _, _ = ev._rollout(engine, real, codec, args.seed, bar)
    B, t, rows = len(windows), real.tile, real.map_rows
    dream_prev = np.concatenate([real.frames[:, :C], dream[:, :-1]], 1)

    def directions(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return metrics.scroll_direction(torch.from_numpy(a.reshape(-1, *a.shape[2:])),
                                        torch.from_numpy(b.reshape(-1, *b.shape[2:])), t, rows).view(B, H).numpy()

    r = directions(real.frames[:, C - 1:C + H - 1], real.frames[:, C:C + H])
    g = directions(dream_prev, dream)
    acts = np.stack([np.asarray(w.actions).reshape(len(w.actions), -1)[C - 1:C - 1 + H, 0] for w in windows])

    matcher = training_matcher(w, args.library_episodes, vote=False)  # the first match, as always here

    def open_way(frame: np.ndarray, action: int, where: tuple[int, int] | None = None) -> bool:
        return bool(matcher.open(frame[None], np.array([action]), rows, [where])[0])

    # The dream's player, in tiles of the context frame's view, before each step.
    moves = np.array([(0, 0)] + [STEP[d] for d in sorted(STEP)])[g]  # (B, H, 2)
    pos = np.asarray(PLAYER) + np.concatenate([np.zeros((B, 1, 2), int), moves.cumsum(1)[:, :-1]], 1)

    def in_context_view(b: int, s: int, action: int) -> tuple[int, int] | None:
        r_, c_ = pos[b, s] + STEP[action]
        return (int(r_), int(c_)) if 0 <= r_ < rows and 0 <= c_ < real.frames.shape[3] // t else None

    moving = r != 0
    misses, hits, seen = Counter(), Counter(), Counter()
    for b, s in zip(*np.nonzero(moving)):
        a = int(acts[b, s])
        way = ("open" if open_way(dream_prev[b, s], a) else "blocked") if a in TARGET_TILE else "no move action"
        if g[b, s] == r[b, s]:
            hits[way] += 1
        else:
            kind = "still" if g[b, s] == 0 else "another way"
            misses[(kind, way)] += 1
            if kind == "still" and not scroll_visible(dream_prev[b, s], int(r[b, s]), t, rows):
                seen[(kind, way, "invisible")] += 1
            where = in_context_view(b, s, a) if a in TARGET_TILE else None
            if a in TARGET_TILE:
                # A tile the context frame showed: is it open there (the dream garbled it), or
                # blocked there too (the dream remembered it, having fallen behind the real player)?
                seen[(kind, way, "invented" if where is None else "shown")] += 1
                if where is not None:
                    seen[(kind, way, "open in context" if open_way(real.frames[b, C - 1], a, where)
                          else "blocked in context")] += 1
                earlier = bool((moving[b, :s] & (g[b, :s] != r[b, :s])).any())
                seen[(kind, way, "after a miss" if earlier else "first miss")] += 1
    n_miss = sum(misses.values())
    print(f"{w.bundle}, {B} windows (seed {args.seed}), {args.decoder} at T={args.temperature}: "
          f"the real view scrolls on {int(moving.sum())} steps, the dream agrees on "
          f"{sum(hits.values())} ({sum(hits.values()) / max(int(moving.sum()), 1):.1%})")
    print(f"tile matcher: {len(matcher)} real moves, {matcher.walked.mean():.0%} walked; on the hits it "
          f"calls the way blocked {hits['blocked']} times of {sum(hits.values())} (its error rate)")
    print(f"{n_miss} misses:")
    for (kind, way), n in sorted(misses.items(), key=lambda kv: -kv[1]):
        print(f"  dream {kind}, its own way {way}: {n}")
        if kind == "still" and way in ("open", "blocked"):
            c = {k[2]: v for k, v in seen.items() if k[:2] == (kind, way)}
            print(f"    its first miss in the window: {c.get('first miss', 0)}, after an earlier miss: "
                  f"{c.get('after a miss', 0)}; on a view where that scroll could not be seen: "
                  f"{c.get('invisible', 0)}")
            print(f"    terrain the dream invented: {c.get('invented', 0)}; a tile the context frame showed: "
                  f"{c.get('shown', 0)} (open there {c.get('open in context', 0)}, blocked there "
                  f"{c.get('blocked in context', 0)})")
    print(f"views at least 90% one tile (a move hardly shows): dream {plain_share(dream, t, rows):.1%}, "
          f"real {plain_share(real.frames[:, C:], t, rows):.1%}")
    late = moving & (g != r)
    print("misses per step:", late.sum(0).tolist())
    print("real scrolls per step:", moving.sum(0).tolist())


if __name__ == "__main__":
    main()
