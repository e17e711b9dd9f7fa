"""The MineRL adapter: a one-line error without minerl, and its gym API use (with a fake minerl)."""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import pytest

from worldsim.envs import make_env
from worldsim.envs.minerl import MineRLEnv
from worldsim.envs.minerl_space import MINERL_FPS, MINERL_SPACE


@pytest.mark.parametrize("missing", ["minerl", "gym"])
def test_missing_minerl_is_one_line(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # `import <missing>` now raises ImportError
    if missing == "gym":
        monkeypatch.setitem(sys.modules, "minerl", types.ModuleType("minerl"))
    for make in (MineRLEnv, lambda: make_env("minerl")):
        with pytest.raises(RuntimeError) as exc:
            make()
        msg = str(exc.value)
        assert "\n" not in msg
        assert "MineRL 1.0" in msg and "Java 8" in msg
        assert "https://minerl.readthedocs.io/en/latest/tutorials/index.html" in msg


class FakeSpace(dict):
    pass


class FakePov:
    shape = (360, 640, 3)


class FakeMineRL:
    """MineRL 1.0's gym env, as far as the adapter uses it."""

    def __init__(self, env_id: str):
        self.env_id = env_id
        self.actions: list[dict[str, Any]] = []
        self.seeded: int | None = None
        self.closed = False
        self.observation_space = FakeSpace(pov=FakePov())

    def seed(self, s: int) -> None:
        self.seeded = s

    def _obs(self, v: int) -> dict[str, Any]:
        return {"pov": np.full((360, 640, 3), v, np.uint8), "inventory": {}}

    def reset(self) -> dict[str, Any]:
        return self._obs(10)

    def step(self, action: dict[str, Any]) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        self.actions.append(action)
        return self._obs(10 + len(self.actions)), 0.5, len(self.actions) >= 2, {"x": 1}

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_minerl(monkeypatch: pytest.MonkeyPatch) -> list[FakeMineRL]:
    made: list[FakeMineRL] = []

    def make(env_id: str) -> FakeMineRL:
        if env_id == "NoJava-v0":
            raise RuntimeError("Minecraft process failed to start\njava: not found")
        made.append(FakeMineRL(env_id))
        return made[-1]

    gym = types.ModuleType("gym")
    gym.make = make  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "minerl", types.ModuleType("minerl"))
    monkeypatch.setitem(sys.modules, "gym", gym)
    return made


def test_reset_and_step(fake_minerl: list[FakeMineRL]) -> None:
    env = MineRLEnv(seed=3)
    inner = fake_minerl[0]
    assert inner.env_id == "MineRLBasaltFindCave-v0" and inner.seeded == 3
    assert env.action_space == MINERL_SPACE and env.fps == MINERL_FPS
    assert env.frame_size == (224, 384)
    frame = env.reset()
    assert frame.shape == (224, 384, 3) and frame.dtype == np.uint8 and (frame == 10).all()

    a = MINERL_SPACE.noop()
    a.update(forward=1, attack=1, camera=[-3.6, 200.0])
    frame, done, info = env.step(a)
    assert frame.shape == (224, 384, 3) and (frame == 11).all()
    assert done is False and info == {"reward": 0.5, "x": 1}
    sent = inner.actions[0]
    assert set(sent) == set(MINERL_SPACE.buttons) | {"camera"}
    assert sent["forward"] == 1 and sent["attack"] == 1 and sent["back"] == 0
    assert sent["camera"].dtype == np.float32 and sent["camera"].shape == (2,)
    np.testing.assert_allclose(sent["camera"], [-3.6, 180.0], rtol=1e-6)  # clipped to MineRL's box

    row = MINERL_SPACE.to_array([{"jump": 1, "camera": [1.0, 2.0]}])[0]  # (25,)
    _, done, _ = env.step(row)
    assert done is True and inner.actions[1]["jump"] == 1
    np.testing.assert_allclose(inner.actions[1]["camera"], [1.0, 2.0])

    with pytest.raises(ValueError, match="fly"):
        env.step({"fly": 1})
    with env:
        pass
    assert inner.closed


def test_native_size_and_env_id(fake_minerl: list[FakeMineRL]) -> None:
    env = make_env("minerl", env_id="MineRLBasaltMakeWaterfall-v0", size=None)
    assert fake_minerl[0].env_id == "MineRLBasaltMakeWaterfall-v0"
    assert env.frame_size == (360, 640)
    assert env.reset().shape == (360, 640, 3)


def test_launch_failure_is_one_line(fake_minerl: list[FakeMineRL]) -> None:
    with pytest.raises(RuntimeError) as exc:
        MineRLEnv(env_id="NoJava-v0")
    msg = str(exc.value)
    assert "\n" not in msg and "NoJava-v0" in msg and "Java 8" in msg
