"""Environment adapters: `make_env(name, **kwargs)`.

Every adapter has `reset() -> frame`, `step(action) -> (frame, done, info)`, `action_space`
(an `ActionSpace` spec the action tokenizers read), `frame_size` and `fps`.
"""

from __future__ import annotations

from typing import Any

from worldsim.envs.base import ActionSpace, Env

ENVS = ("crafter", "minerl")


def make_env(name: str, **kwargs: Any) -> Env:
    if name == "crafter":
        from worldsim.envs.crafter import CrafterEnv

        return CrafterEnv(**kwargs)
    if name == "minerl":
        from worldsim.envs.minerl import MineRLEnv

        return MineRLEnv(**kwargs)
    raise ValueError(f"unknown env {name!r}; choose one of {', '.join(ENVS)}")


def action_space_for(name: str) -> ActionSpace:
    """The action-space spec of a named game, without starting the game."""
    if name == "crafter":
        from worldsim.envs.crafter import CRAFTER_SPACE

        return CRAFTER_SPACE
    if name == "minerl":
        from worldsim.envs.minerl_space import MINERL_SPACE

        return MINERL_SPACE
    raise ValueError(f"unknown env {name!r}; choose one of {', '.join(ENVS)}")


__all__ = ["ActionSpace", "Env", "ENVS", "make_env", "action_space_for"]
