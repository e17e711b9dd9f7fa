"""Crafter adapter (the default game) and an exploration policy a world model can learn from.

At 72x72 Crafter draws a 9x9 grid of 8-pixel tiles (7 rows of world, 2 of inventory), which
lines up with an 8x downsampling image tokenizer: one token per tile.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import numpy as np

from worldsim.envs.base import ActionSpace

CRAFTER_ACTIONS = (
    "noop", "move_left", "move_right", "move_up", "move_down", "do", "sleep",
    "place_stone", "place_table", "place_furnace", "place_plant",
    "make_wood_pickaxe", "make_stone_pickaxe", "make_iron_pickaxe",
    "make_wood_sword", "make_stone_sword", "make_iron_sword",
)
CRAFTER_SPACE = ActionSpace(name="crafter", kind="discrete", names=CRAFTER_ACTIONS)
# Crafter's world ticks once per step; 10 steps per second plays like its own GUI.
CRAFTER_FPS = 10
# The smallest frame Crafter draws: 2 pixels a tile. At 9 (1 pixel a tile) its inventory icons,
# drawn at 0.8 of a tile, round to 0 pixels and PIL refuses to resize to them.
CRAFTER_MIN_SIZE = 18

# Crafter's day: its world's daylight follows the step count, a day every 300 steps.
CRAFTER_DAY_STEPS = 300


def crafter_daylight(step: int | np.ndarray) -> np.ndarray:
    """Crafter's daylight at a game step (1.0 at noon; below 0.5 the night noise starts)."""
    progress = (np.asarray(step, np.float64) / CRAFTER_DAY_STEPS) % 1 + 0.3
    return (1 - np.abs(np.cos(np.pi * progress)) ** 3).astype(np.float32)


_MOVES = (1, 2, 3, 4)  # move_left, move_right, move_up, move_down
_PLACE_OR_CRAFT = tuple(range(7, 17))
_BORING = {"grass", "sand", "path"}  # facing these, `do` does nothing worth showing


class CrafterEnv:
    """`reset() -> frame`, `step(action) -> (frame, done, info)`; info has `daylight` in [0, 1]."""

    action_space = CRAFTER_SPACE
    fps = CRAFTER_FPS

    def __init__(self, size: int = 72, seed: int = 0, length: int = 10000):
        import crafter  # a runtime dependency, imported here to keep `import worldsim` light

        if size % 9 or size < CRAFTER_MIN_SIZE:
            raise ValueError(f"--size must be a multiple of 9 (Crafter draws 9x9 tiles) of at least "
                             f"{CRAFTER_MIN_SIZE}, got {size}")
        self.frame_size = (size, size)
        self._env = crafter.Env(size=(size, size), seed=seed, length=length, reward=False)
        self._env._world.__class__ = _deterministic_world_class()

    def reset(self) -> np.ndarray:
        return self._env.reset()

    def step(self, action: Any) -> tuple[np.ndarray, bool, dict[str, Any]]:
        try:
            a = operator.index(action)  # an integer: 3.7 or "3" is no action
        except TypeError:
            a = -1
        if not 0 <= a < len(CRAFTER_ACTIONS):
            raise ValueError(f"crafter action must be in [0, {len(CRAFTER_ACTIONS)}), got {action!r}")
        frame, _reward, done, info = self._env.step(a)
        return frame, bool(done), {"daylight": self.daylight,
                                   "achievements": info.get("achievements", {})}

    @property
    def daylight(self) -> float:
        """1.0 at noon; below 0.5 Crafter paints per-pixel noise over the view (night)."""
        return float(self._env._world.daylight)

    def facing(self) -> tuple[str | None, bool]:
        """(material in front of the player, whether a creature stands there)."""
        player = self._env._player
        target = (player.pos[0] + player.facing[0], player.pos[1] + player.facing[1])
        world = self._env._world
        if not (0 <= target[0] < world.area[0] and 0 <= target[1] < world.area[1]):
            return None, False
        material, obj = world[target]
        return material, obj is not None


@functools.cache  # one class for the process: made on first use, since crafter loads lazily
def _deterministic_world_class() -> type:
    """Crafter's World keeps each chunk's objects in a set, iterated in memory-address order
    when creatures spawn and despawn, so the same seed and actions can give different episodes.
    This subclass lists them in the order they were added, which makes a seed reproducible."""
    from crafter import engine

    class DeterministicWorld(engine.World):
        @property
        def chunks(self):
            return {key: sorted(objs, key=lambda o: self._obj_map[tuple(o.pos)])
                    for key, objs in self._chunks.items()}

    return DeterministicWorld


class ExplorerPolicy:
    """Walks in runs, works what it faces, now and then places or crafts.

    Uniform random actions mostly jitter in place; a world model learns camera motion and
    interaction far better from runs of the same move (the view scrolls tile by tile) and from
    `do` aimed at trees, stone, water and creatures.

    `p_idle_do`: the chance of `do` facing grass, sand or path, where the game changes nothing in
    view (but for a sapling in the inventory, one press on grass in ten). A player presses it
    there all the time; a model that never saw it draws something in front (a table, on the
    shipped model, benchmarks/idle_do.py). 0 keeps the policy, and so the episodes of a seed, as
    they were before the option.
    """

    def __init__(self, seed: int, min_run: int = 2, max_run: int = 8,
                 p_do: float = 0.7, p_place: float = 0.04, p_noop: float = 0.03, p_idle_do: float = 0.0):
        self.rng = np.random.default_rng(seed)
        self.min_run, self.max_run = min_run, max_run
        self.p_do, self.p_place, self.p_noop, self.p_idle_do = p_do, p_place, p_noop, p_idle_do
        self._move = int(self.rng.choice(_MOVES))
        self._left = 0

    def __call__(self, env: CrafterEnv) -> int:
        rng = self.rng
        material, creature = env.facing()
        if (creature or (material is not None and material not in _BORING)) and rng.random() < self.p_do:
            return 5  # do: chop, mine, drink, hit
        # Drawn only when asked for, so that 0 leaves the random stream, and the episodes, as they were.
        if self.p_idle_do and material in _BORING and not creature and rng.random() < self.p_idle_do:
            return 5  # do where nothing in view changes
        r = rng.random()
        if r < self.p_place:
            return int(rng.choice(_PLACE_OR_CRAFT))
        if r < self.p_place + self.p_noop:
            return 0
        if self._left <= 0:
            self._move = int(rng.choice(_MOVES))
            self._left = int(rng.integers(self.min_run, self.max_run + 1))
        self._left -= 1
        return self._move
