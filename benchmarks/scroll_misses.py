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

from _windows import CONTEXT, HORIZON, add_options, load
from worldsim import metrics
from worldsim.data.store import EpisodeStore
from worldsim.evaluation import run as ev
from worldsim.inference.engine import Engine

# Crafter's discrete actions 1-4 move the player left, right, up, down; the player stands at
# tile (row 3, column 4) of the 9 x 7 map.
TARGET_TILE = {1: (3, 3), 2: (3, 5), 3: (2, 4), 4: (4, 4)}
STEP = {1: (0, -1), 2: (0, 1), 3: (-1, 0), 4: (1, 0)}  # a move (or scroll direction) in tiles
PLAYER = (3, 4)
DAY = 0.7  # daylight above which a tile's pixels are its texture


def tile_at(frame: np.ndarray, action: int, tile: int, where: tuple[int, int] | None = None) -> np.ndarray:
    """The tile the player walks into with `action`, or the tile at (row, column) `where`."""
    r, c = TARGET_TILE[action] if where is None else where
    return frame[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile].astype(np.float32)


def plain_share(frames: np.ndarray, tile: int, map_rows: int, share: float = 0.9) -> float:
    """The fraction of frames (..., H, W, 3) whose map is at least `share` one tile (every copy
    pixel for pixel the same): a view on which a move hardly shows."""
    f = frames.reshape(-1, *frames.shape[-3:])[:, :map_rows * tile]
    n, h, w = len(f), map_rows, f.shape[2] // tile
    tiles = f.reshape(n, h, tile, w, tile, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * w, -1)
    top = [np.unique(t, axis=0, return_counts=True)[1].max() / (h * w) for t in tiles]
    return float(np.mean(np.asarray(top) >= share))


def move_library(store: EpisodeStore, ids: list[str], tile: int, map_rows: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Day tiles the player tried to walk into, and whether the view then scrolled."""
    tiles, walked = [], []
    for ep in store.iter_episodes(ids):
        frames = np.asarray(ep.frames)
        acts = np.asarray(ep.actions).reshape(len(ep.actions), -1)[:, 0]
        n = min(len(frames) - 1, len(acts))
        moved = metrics.scroll_direction(torch.from_numpy(frames[:n]), torch.from_numpy(frames[1:n + 1]),
                                         tile, map_rows).numpy() != 0
        for t in range(n):
            if int(acts[t]) in TARGET_TILE and (ep.daylight is None or ep.daylight[t] > DAY):
                tiles.append(tile_at(frames[t], int(acts[t]), tile))
                walked.append(bool(moved[t]))
    return np.stack(tiles), np.array(walked)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p)
    p.add_argument("--library-episodes", type=int, default=120, help="training episodes for the tile matcher")
    args = p.parse_args()
    w = load(args, "model to measure")
    store, ids, windows, real, codec = w.store, w.ids, w.windows, w.real, w.codec
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

    held = set(ids)
    lib_tiles, lib_walked = move_library(store, [i for i in store.episode_ids() if i not in held]
                                         [:args.library_episodes], t, rows)

    def open_way(frame: np.ndarray, action: int, where: tuple[int, int] | None = None) -> bool:
        d = np.abs(lib_tiles - tile_at(frame, action, t, where)).reshape(len(lib_tiles), -1).mean(1)
        return bool(lib_walked[d.argmin()])

    # The dream's player, in tiles of the context frame's view, before each step.
    moves = np.array([(0, 0)] + [STEP[d] for d in sorted(STEP)])[g]  # (B, H, 2)
    pos = np.asarray(PLAYER) + np.concatenate([np.zeros((B, 1, 2), int), moves.cumsum(1)[:, :-1]], 1)

    def in_context_view(b: int, s: int, action: int) -> tuple[int, int] | None:
        r_, c_ = pos[b, s] + STEP[action]
        return (int(r_), int(c_)) if 0 <= r_ < rows and 0 <= c_ < real.frames.shape[3] // t else None

    def scroll_visible(frame: np.ndarray, direction: int, margin: float = 0.5) -> bool:
        """Whether a move `direction` over `frame`'s own terrain would show: the map and its
        copy moved one tile differ, over their overlap and away from the player (who stays in
        the middle), by more than the scroll detector's margin."""
        m = frame[:rows * t].astype(np.float32)
        dr, dc = STEP[direction]
        h, w = m.shape[0] - abs(dr) * t, m.shape[1] - abs(dc) * t
        new = m[max(dr, 0) * t:, max(dc, 0) * t:][:h, :w]  # what the moved view shows there: the old tile
        old = m[max(-dr, 0) * t:, max(-dc, 0) * t:][:h, :w]
        diff = np.abs(new - old).reshape(h // t, t, w // t, t, -1).mean((1, 3, 4))  # per tile
        pr, pc = PLAYER
        for r_, c_ in ((pr - max(dr, 0), pc - max(dc, 0)), (pr - max(-dr, 0), pc - max(-dc, 0))):
            diff[r_, c_] = 0.0  # the player's tile, in either copy
        return float(diff.mean()) > margin

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
            if kind == "still" and not scroll_visible(dream_prev[b, s], int(r[b, s])):
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
    print(f"tile matcher: {len(lib_tiles)} real moves, {lib_walked.mean():.0%} walked; on the hits it "
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
