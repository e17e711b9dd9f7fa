"""How often could any dream scroll with the real player? The game itself, as a perfect dream.

    python benchmarks/scroll_ceiling.py [--data data/crafter] [--bundle B] [--episodes 64]
                                        [--seed 0] [--draws 4]

`worldsim eval` counts a dream's scroll agreement against the real episode: on every step where
the real view scrolls, does the dream's scroll the same way? A dream sees one real frame, the
9 x 7 tiles around the player. Whatever lies beyond them it must invent, and whatever the
creatures do it must guess; where its invention puts a tree or a cow in the player's way and
the real world did not, a dream that obeys its own world stands still and is counted a miss.

This script measures that ceiling with Crafter itself (`worldsim.evaluation.game`, whose `world`
twin is the "game" column of every Crafter eval report). For each of the eval's windows (the
same held-out episodes, starts and `--seed`) it rebuilds the real game at the window's first
frame, checking every replayed frame against the stored one, then plays the window's recorded
keys in twins of the game that keep everything the context frame showed (its tiles, the
creatures on them, the player) but
- `dice`: roll the creatures' dice anew (the world's random state);
- `world`: also redraw every tile and creature out of view from a fresh world of the same
  generator;
- `matched`: the same from the fresh world (of `--pool`) and place whose tiles look most like
  the view, so that what lies beyond the view continues it (a lake goes on, a forest thickens),
  as a dream that knew the game's rules exactly would invent it.
It reports each twin's scroll agreement with the real episode, measured by `worldsim eval`'s
own detector; `same` (the twin untouched) must score 100% and checks the machinery.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
from tqdm import tqdm

from worldsim import bundle, metrics
from worldsim.commands._args import existing_dir, nonneg_int, positive_int
from worldsim.data.store import EpisodeStore
from worldsim.envs.crafter import CrafterEnv
from worldsim.evaluation.game import VIEW, replay, twin
from worldsim.evaluation.episodes import held_out_ids, select_windows

MAP_ROWS = 7


class WorldPool:
    """Fresh worlds of Crafter's generator, to draw unseen terrain from."""

    def __init__(self, size: int, length: int, count: int, seed: int):
        self.envs = []
        for i in range(count):
            env = CrafterEnv(size=size, seed=seed + i, length=length)
            env.reset()
            self.envs.append(env)
        # every 9 x 7 patch of every world's materials: (worlds, X, Y, 9, 7)
        self.patches = np.stack([np.lib.stride_tricks.sliding_window_view(
            e._env._world._mat_map, (2 * VIEW[0] + 1, 2 * VIEW[1] + 1)) for e in self.envs])

    def nearest(self, view: np.ndarray, valid: np.ndarray, k: int, rng: np.random.Generator
                ) -> list[tuple[int, int, int]]:
        """The k patches (world, x, y) whose materials differ from `view` on the fewest `valid`
        tiles, from k different worlds, ties broken at random."""
        miss = ((self.patches != view) & valid).sum((-1, -2)).astype(np.float64)
        miss += rng.random(miss.shape) * 0.5
        best = miss.reshape(len(self.envs), -1).min(1)
        out = []
        for w in np.argsort(best)[:k]:
            x, y = np.unravel_index(int(miss[w].argmin()), miss.shape[1:])
            out.append((int(w), int(x), int(y)))
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=existing_dir, default="data/crafter", help="a store written by `worldsim collect`")
    p.add_argument("--bundle", type=existing_dir, default=None, help="the model whose held-out episodes to use "
                   "(default: the shipped model)")
    p.add_argument("--episodes", type=positive_int, default=64,
                   help="held-out episodes, one window each, as `worldsim eval` picks them (default: 64)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="the eval's --seed: which windows")
    p.add_argument("--draws", type=positive_int, default=4, help="twins per window, each with other dice and world")
    p.add_argument("--horizon", type=positive_int, default=15, help="steps played from the context frame (default: 15)")
    p.add_argument("--pool", type=positive_int, default=32, help="fresh worlds to draw unseen terrain from")
    args = p.parse_args()
    store = EpisodeStore(args.data)
    if store.info.env != "crafter" or store.info.source.get("collector") != "explorer":
        raise SystemExit(f"{args.data} is not a Crafter store made by `worldsim collect`")
    args.bundle = bundle.find_bundle(args.bundle, "model whose held-out episodes to use")
    cfg = bundle.read_config(args.bundle)
    ids, _ = held_out_ids(store, cfg, args.bundle)
    C, H = 1, args.horizon
    windows = select_windows(store, ids, args.episodes, max(C + H, int(cfg["model"]["frames"])), args.seed)
    tile = windows[0].frames.shape[1] // 9
    kinds = ("same", "dice", "world", "matched")
    src = store.info.source
    pool = WorldPool(int(src["size"]), int(src["steps"]), args.pool, seed=10_000_019)
    rng = np.random.default_rng(args.seed)
    counts = {k: {"real_scroll": 0, "agree": 0, "real_still": 0, "false_scroll": 0} for k in kinds}
    per_step = {k: np.zeros((2, H)) for k in kinds}  # (agree, real scroll) per horizon step
    mismatch = []
    with tqdm(total=len(windows) * (1 + 3 * args.draws), desc="twins") as bar:
        for w_i, w in enumerate(windows):
            env, seen = replay(store, w.episode, w.start, w.frames[:1])
            keys = np.asarray(w.actions).reshape(-1)[C - 1:C - 1 + H]
            real = torch.from_numpy(np.asarray(w.frames[C - 1:C + H]))
            world, player = env._env._world, env._env._player
            px, py = (int(v) for v in player.pos)
            padded = np.pad(world._mat_map.astype(np.int16), [(VIEW[0],), (VIEW[1],)], constant_values=-1)
            view = padded[px:px + 2 * VIEW[0] + 1, py:py + 2 * VIEW[1] + 1]
            near = pool.nearest(view, view >= 0, args.draws, rng)
            for kind in kinds:
                for d in range(1 if kind == "same" else args.draws):
                    seed = 1_000_003 * (w_i + 1) + d
                    if kind == "world":
                        game = twin(env, seen, seed, pool.envs[int(rng.integers(len(pool.envs)))])
                    elif kind == "matched":
                        k, cx, cy = near[d]
                        mismatch.append(int(((pool.patches[k, cx, cy] != view) & (view >= 0)).sum()))
                        game = twin(env, seen, seed, pool.envs[k], (cx - (px - VIEW[0]), cy - (py - VIEW[1])))
                    else:
                        game = copy.deepcopy(env)
                        if kind == "dice":
                            game._env._world.random = np.random.RandomState(seed)
                    frames = [w.frames[C - 1]] + [game.step(int(a))[0] for a in keys]
                    gen = torch.from_numpy(np.stack(frames))
                    c = metrics.scroll_counts(real[:-1], real[1:], gen[:-1], gen[1:], tile, MAP_ROWS)
                    for key, v in c.items():
                        counts[kind][key] += int(v.sum())
                    per_step[kind] += np.stack([c["agree"].numpy(), c["real_scroll"].numpy()])
                    bar.update(1)
    print(f"{args.data}, {len(windows)} held-out windows of {args.bundle} (seed {args.seed}), "
          f"1 real frame then {H} steps of the recorded keys, {args.draws} draws of each twin:")
    for kind in kinds:
        c = counts[kind]
        print(f"  {kind:5s}: scroll agreement {c['agree'] / max(c['real_scroll'], 1):.1%} "
              f"({c['agree']} of {c['real_scroll']}), false scroll "
              f"{c['false_scroll'] / max(c['real_still'], 1):.1%}")
    print(f"  matched patches differ from the view on {np.mean(mismatch):.1f} of 63 tiles on average "
          f"(median {np.median(mismatch):.0f})")
    for kind in ("world", "matched"):
        a, r = per_step[kind]
        print(f"  {kind}, agreement per step:", " ".join(f"{x:.0%}" for x in a / np.maximum(r, 1)))


if __name__ == "__main__":
    main()
