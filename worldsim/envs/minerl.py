"""MineRL 1.0 adapter: Minecraft through MineRL's gym API, in worldsim's Env interface.

MineRL 1.0 registers its environments with `gym` when imported (`import minerl`), and
`gym.make("MineRLBasaltFindCave-v0")` starts a Minecraft instance (Java 8 required). Its
observations are dicts with "pov" uint8 (360, 640, 3); its actions are dicts with the buttons of
`MINERL_SPACE` (0/1 each) and "camera", a 2-array [pitch, yaw] in degrees within [-180, 180].
`step` returns (obs, reward, done, info) in the gym 0.19 API that MineRL 1.0 pins.

The adapter resizes "pov" to `frame_size` (default 224x384, MineWorld's size and the default
of `worldsim.data.vpt.convert_vpt`, so collected episodes and converted VPT recordings can share
a store); `size=None` keeps MineRL's own resolution.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from worldsim.envs.minerl_space import MINERL_FPS, MINERL_SPACE

DEFAULT_ENV_ID = "MineRLBasaltFindCave-v0"
DEFAULT_SIZE = (224, 384)  # (H, W)
NATIVE_SIZE = (360, 640)  # (H, W) of MineRL 1.0's "pov"
INSTALL_HELP = ("the minerl env needs MineRL 1.0 and Java 8 (JDK 8), which are not installed; "
                "see https://minerl.readthedocs.io/en/latest/tutorials/index.html")


class MineRLEnv:
    """`reset() -> frame`, `step(action) -> (frame, done, info)`; frames are uint8 (H, W, 3).

    An action is a MineRL action dict ({button: 0|1, ..., "camera": [pitch, yaw]}, missing
    buttons count as 0) or an on-disk row float32 (25,) of `MINERL_SPACE`. info holds the
    step's "reward" and MineRL's own info entries."""

    action_space = MINERL_SPACE
    fps = MINERL_FPS

    def __init__(self, env_id: str = DEFAULT_ENV_ID, size: tuple[int, int] | None = DEFAULT_SIZE,
                 seed: int | None = None):
        try:
            import minerl  # noqa: F401  (importing registers the MineRL envs with gym)
            import gym
        except ImportError as e:
            raise RuntimeError(INSTALL_HELP) from e

        try:
            self._env = gym.make(env_id)
        except Exception as e:  # noqa: BLE001 - Minecraft failing to launch, unknown ids, ...
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RuntimeError(f"could not start MineRL env {env_id!r}: {first} (MineRL 1.0 needs "
                               "Java 8; see https://minerl.readthedocs.io/en/latest/tutorials/"
                               "index.html)") from e
        if seed is not None and hasattr(self._env, "seed"):
            self._env.seed(seed)
        self.env_id = env_id
        self._resize = size is not None
        self.frame_size: tuple[int, int] = (
            (int(size[0]), int(size[1])) if size is not None else self._native_size())

    def _native_size(self) -> tuple[int, int]:
        try:
            shape = self._env.observation_space["pov"].shape  # (H, W, 3)
            return int(shape[0]), int(shape[1])
        except (AttributeError, KeyError, TypeError, IndexError):
            return NATIVE_SIZE

    # -- the Env interface ---------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        out = self._env.reset()
        obs = out[0] if isinstance(out, tuple) else out  # newer gym returns (obs, info)
        return self._frame(obs)

    def step(self, action: Mapping[str, Any] | np.ndarray) -> tuple[np.ndarray, bool, dict[str, Any]]:
        out = self._env.step(self.to_minerl(action))
        if len(out) == 5:  # gym >= 0.26: obs, reward, terminated, truncated, info
            obs, reward, terminated, truncated, info = out
            done = bool(terminated) or bool(truncated)
        else:  # gym 0.19 (MineRL 1.0): obs, reward, done, info
            obs, reward, done, info = out
            done = bool(done)
        return self._frame(obs), done, {"reward": float(reward), **dict(info or {})}

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> "MineRLEnv":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- conversions ---------------------------------------------------------------------------
    @staticmethod
    def to_minerl(action: Mapping[str, Any] | np.ndarray) -> dict[str, Any]:
        """A worldsim action (dict or on-disk row) -> the dict MineRL 1.0's `step` takes.

        Every button is present (int 0/1); camera is float32 (2,) [pitch, yaw], clipped to
        MineRL's [-180, 180]. Unknown keys raise ValueError."""
        if isinstance(action, Mapping):
            row = MINERL_SPACE.action_to_row(action)  # (25,) float32; validates the keys
        else:
            row = np.asarray(action, np.float32).reshape(-1)
            if row.shape != (MINERL_SPACE.width,):
                raise ValueError(f"a MineRL action row must have {MINERL_SPACE.width} values, "
                                 f"got shape {list(np.shape(action))}")
        out: dict[str, Any] = {b: int(row[i] > 0.5) for i, b in enumerate(MINERL_SPACE.buttons)}
        out["camera"] = np.clip(row[-2:], -180.0, 180.0).astype(np.float32)  # (2,) [pitch, yaw]
        return out

    def _frame(self, obs: Mapping[str, Any]) -> np.ndarray:
        pov = np.asarray(obs["pov"], dtype=np.uint8)  # (H, W, 3)
        if self._resize and pov.shape[:2] != self.frame_size:
            from worldsim.frames import resize_frames

            pov = resize_frames(pov[None], self.frame_size)[0]  # (h, w, 3)
        return pov


__all__ = ["DEFAULT_ENV_ID", "INSTALL_HELP", "MineRLEnv"]
