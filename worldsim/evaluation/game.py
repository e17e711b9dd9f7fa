"""The game itself as a reference dream: what Crafter's own rules score against a real episode.

A dream sees the real context frames and nothing more. Whatever lies out of their view it must
invent, and whatever the creatures do it must guess; a dream that invents a tree in the real
player's path, and obeys it, stands still where the real view scrolled. So no dream matches the
real episode everywhere, and what the game's own rules score is the bar worth knowing.

For a store written by `worldsim collect` (every episode replays from its collection seed), each
window's game is rebuilt at its last context frame (the replayed frames are checked against the
stored ones) and a twin of it plays the recorded keys:
- everything the context frames showed is kept: the tiles in view, the creatures on them, the
  player with its inventory and health, the time of day;
- every tile and creature out of view comes from a fresh world of the same generator, and the
  creatures' dice (the world's random state) are drawn anew.
The twin's frames are measured like a decoder's dream: the "game" column of the report.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from worldsim.data.collect import NotReplayable, episode_seed, replay_episode
from worldsim.data.collect import check_replayable as check_store
from worldsim.data.store import EpisodeStore
from worldsim.envs.crafter import CrafterEnv

__all__ = ["NotReplayable", "check_store", "game_dreams", "replay", "twin", "VIEW"]

VIEW = (4, 3)  # Crafter's local view reaches 4 tiles left and right of the player, 3 up and down


def replay(store: EpisodeStore, episode: str, step: int, frames: np.ndarray) -> tuple[CrafterEnv, list]:
    """The game of `episode` after `step` recorded steps, and the player's position at each of
    `frames` (the stored frames from step `step - len(frames) + 1` to `step`, checked on the way)."""
    env, tiles = replay_episode(store, episode, step, frames)
    return env, tiles[len(tiles) - len(frames):]


def twin(env: CrafterEnv, seen: list, seed: int, source: CrafterEnv | None = None,
         shift: tuple[int, int] = (0, 0)) -> CrafterEnv:
    """A copy of `env` that keeps the tiles around the player positions `seen` and what stands on
    them, with the dice drawn anew from `seed` and the rest of the world and its creatures taken
    from `source` (default: a fresh world drawn from `seed`), whose tile x + `shift` lands on x."""
    out = copy.deepcopy(env)
    game = out._env
    world, player = game._world, game._player
    known = np.zeros(world.area, bool)
    for px, py in seen:
        known[max(px - VIEW[0], 0):px + VIEW[0] + 1, max(py - VIEW[1], 0):py + VIEW[1] + 1] = True
    if source is None:
        source = CrafterEnv(size=env.frame_size[0], seed=seed, length=game._length)
        source.reset()
    other = source._env._world
    (dx, dy), (X, Y) = shift, world.area
    xs, ys = np.meshgrid(np.arange(X), np.arange(Y), indexing="ij")
    sx, sy = xs + dx, ys + dy
    take = ~known & (sx >= 0) & (sx < other.area[0]) & (sy >= 0) & (sy < other.area[1])
    world._mat_map[take] = other._mat_map[sx[take], sy[take]]
    for obj in world.objects:
        if obj is not player and take[tuple(obj.pos)]:
            world.remove(obj)
    for obj in other.objects:
        pos = (int(obj.pos[0]) - dx, int(obj.pos[1]) - dy)
        if obj is source._env._player or not (0 <= pos[0] < X and 0 <= pos[1] < Y):
            continue
        if not take[pos] or world._obj_map[pos]:
            continue
        new = copy.copy(obj)  # the same creature, living in the twin's world
        new.world, new.pos, new.removed = world, np.array(pos), False
        if hasattr(new, "player"):
            new.player = player
        world.add(new)
    world.random = np.random.RandomState(seed)
    return out


def game_dreams(store: EpisodeStore, windows: list, context: int, horizon: int, seed: int,
                bar: Any = None) -> np.ndarray:
    """The twins' frames (B, horizon, H, W, 3) under each window's recorded keys. Raises
    NotReplayable when the store's episodes cannot be rebuilt."""
    check_store(store)  # one reason for the whole store, before any window
    out = np.zeros((len(windows), horizon, *windows[0].frames.shape[1:]), np.uint8)
    for i, w in enumerate(windows):
        env, seen = replay(store, w.episode, w.start + context - 1, np.asarray(w.frames[:context]))
        game = twin(env, seen, episode_seed(seed, 1_000_000 + i))
        keys = np.asarray(w.actions).reshape(len(w.actions), -1)[context - 1:context - 1 + horizon, 0]
        for t, key in enumerate(keys):
            out[i, t] = game.step(int(key))[0]
        if bar is not None:
            bar.update(1)
    return out
