"""The environment adapter interface and the action-space spec that tokenizers read.

An adapter is anything with `reset() -> frame`, `step(action) -> (frame, done, info)` and an
`action_space: ActionSpace`. Frames are uint8 arrays (H, W, 3).

Action spaces come in two kinds:
- `discrete`: one integer in [0, n) per step, with a name per action (Crafter's 17 actions).
  On disk: actions int16 [T].
- `dict`: binary buttons plus an optional 2-D camera in degrees, as MineRL uses.
  The action is a dict {button: 0|1, ..., "camera": [pitch, yaw]}.
  On disk: actions float32 [T, len(buttons) + 2], columns = buttons in spec order, then
  camera pitch, camera yaw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class ActionSpace:
    name: str  # the game it belongs to: "crafter", "minerl"
    kind: str  # "discrete" | "dict"
    names: tuple[str, ...] = ()  # discrete: one name per action id
    buttons: tuple[str, ...] = ()  # dict: binary keys, in column order
    camera: bool = False  # dict: whether a [pitch, yaw] camera column pair follows

    def __post_init__(self) -> None:
        if self.kind not in ("discrete", "dict"):
            raise ValueError(f"action space kind must be 'discrete' or 'dict', got {self.kind!r}")
        if self.kind == "discrete" and not self.names:
            raise ValueError("a discrete action space needs names")
        if self.kind == "dict" and not self.buttons:
            raise ValueError("a dict action space needs buttons")

    @property
    def n(self) -> int:
        """Number of discrete actions (discrete spaces only)."""
        if self.kind != "discrete":
            raise TypeError("n is defined for discrete action spaces only")
        return len(self.names)

    @property
    def width(self) -> int:
        """Columns of one action on disk (0 for discrete: a scalar per step)."""
        return 0 if self.kind == "discrete" else len(self.buttons) + (2 if self.camera else 0)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "names": list(self.names),
                "buttons": list(self.buttons), "camera": self.camera}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ActionSpace":
        if not isinstance(d, Mapping) or not {"name", "kind"} <= set(d):
            raise ValueError("an action space needs a 'name' and a 'kind'")
        known = {"name", "kind", "names", "buttons", "camera"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown action-space keys: {sorted(unknown)}")
        return cls(name=d["name"], kind=d["kind"], names=tuple(d.get("names", ())),
                   buttons=tuple(d.get("buttons", ())), camera=bool(d.get("camera", False)))

    def noop(self) -> Any:
        if self.kind == "discrete":
            return 0
        a: dict[str, Any] = {b: 0 for b in self.buttons}
        if self.camera:
            a["camera"] = [0.0, 0.0]
        return a

    def to_array(self, actions: Sequence[Any]) -> np.ndarray:
        """A list of actions -> the on-disk array (int16 [T] or float32 [T, width])."""
        if self.kind == "discrete":
            raw = np.asarray(actions)
            if raw.ndim != 1 or (raw.size and raw.dtype.kind not in "iu"):
                raise ValueError(f"{self.name} actions must be a list of integers, got {raw.dtype} "
                                 f"of shape {list(raw.shape)}")
            arr = raw.astype(np.int64)
            if arr.size and (arr.min() < 0 or arr.max() >= self.n):
                raise ValueError(f"{self.name} actions must lie in [0, {self.n})")
            return arr.astype(np.int16)
        out = np.zeros((len(actions), self.width), np.float32)
        for t, a in enumerate(actions):
            out[t] = self.action_to_row(a)
        return out

    def action_to_row(self, a: Mapping[str, Any]) -> np.ndarray:
        if not isinstance(a, Mapping):
            raise ValueError(f"a {self.name} action is a dict of keys, got {type(a).__name__}")
        unknown = set(a) - set(self.buttons) - ({"camera"} if self.camera else set())
        if unknown:
            raise ValueError(f"unknown {self.name} action keys: {sorted(unknown)}")
        row = np.zeros(self.width, np.float32)
        for i, b in enumerate(self.buttons):
            row[i] = float(bool(a.get(b, 0)))
        if self.camera:
            cam = a.get("camera", (0.0, 0.0))
            try:
                pitch_yaw = np.asarray(cam, dtype=np.float64)
            except (TypeError, ValueError):
                pitch_yaw = None
            if pitch_yaw is None or pitch_yaw.shape != (2,) or not np.isfinite(pitch_yaw).all():
                raise ValueError(f"camera must be two finite numbers [pitch, yaw], got {cam!r}")
            row[-2:] = pitch_yaw
        return row

    def from_array(self, arr: np.ndarray, t: int) -> Any:
        """Row t of an on-disk array -> one action (int, or dict)."""
        if self.kind == "discrete":
            return int(arr[t])
        row = arr[t]
        a: dict[str, Any] = {b: int(row[i] > 0.5) for i, b in enumerate(self.buttons)}
        if self.camera:
            a["camera"] = [float(row[-2]), float(row[-1])]
        return a


class Env(Protocol):
    """What every environment adapter provides."""

    action_space: ActionSpace
    frame_size: tuple[int, int]  # (H, W)
    fps: int

    def reset(self) -> np.ndarray:  # (H, W, 3) uint8
        ...

    def step(self, action: Any) -> tuple[np.ndarray, bool, dict[str, Any]]:
        ...

