"""OpenAI VPT contractor recordings -> MineRL actions and episodes in an `EpisodeStore`.

A VPT recording is a pair of files in one folder: `NAME.mp4` (the game at 20 fps, usually
640x360) and `NAME.jsonl`, one JSON object per video frame. The fields read here are

    keyboard.keys   list of held keys, e.g. "key.keyboard.w", "key.keyboard.left.shift"
                    (bare names such as "w" or "left.shift" are accepted too)
    mouse.dx/dy     mouse motion during the frame, in raw mouse units
    mouse.buttons   list of held mouse buttons: 0 left, 1 right, 2 middle

and everything else (inventory, GUI state, cursor position, ...) is ignored.

Mapping to a MineRL 1.0 action (the buttons of `MINERL_SPACE`, each 0 or 1, plus
"camera": [pitch, yaw] in degrees):

    w s a d -> forward back left right     space -> jump          left.shift -> sneak
    left.control -> sprint                 q -> drop              e -> inventory
    f -> swapHands                         escape -> ESC          1..9 -> hotbar.1..9
    mouse 0 1 2 -> attack use pickItem
    camera = [dy, dx] * 360 / 2400         (MineRL's mouse sensitivity: 2400 units = 360 deg)

Keys outside this table are ignored. Opposed presses cancel: when both keys of a pair in
`CONFLICTS` are held (forward+back, left+right, jump+sneak, sprint+sneak, attack+use) both
are set to 0. Pairs are judged one after another in that order, as MineWorld's loader does, so
holding jump, sneak and sprint together zeroes jump and sneak and keeps sprint (sneak is off by
the time its pair with sprint is judged).

The camera stays a float by default. VPT's own reference loader stored it in an integer
array, which truncates toward zero, and MineWorld was trained on that; `integer_camera=True`
reproduces it for parity (e.g. dx=10 -> 1.5 deg -> 1 deg; dx=-10 -> -1 deg).

Not applied here (raw mapping only): VPT's loader additionally drops "null" frames, removes an
attack button stuck down from the first frame, and infers hotbar changes made with the scroll
wheel. Converted episodes keep every frame so that frames and actions stay in step.

Alignment: a recording has N frames and N per-frame actions; action i is what the player did
while seeing frame i, and it leads to frame i+1. An episode therefore holds all N frames and
the first N-1 actions (the store's layout: frames [T+1], actions [T]); the last action, whose
outcome was never recorded, is dropped. When the video and the JSONL disagree in length the
shorter wins, with a warning.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from worldsim.envs.minerl_space import MINERL_FPS, MINERL_SPACE
from worldsim.frames import RESIZE_CHUNK, resize_frames

# MineRL's Java code maps 2400 raw mouse units to a full turn.
CAMERA_SCALE = 360.0 / 2400.0
DEFAULT_SIZE = (224, 384)  # (H, W): MineWorld's frame size, 14x24 tokens at 16x downsampling

# Key names after the "key.keyboard." prefix -> MineRL button.
KEY_TO_BUTTON: dict[str, str] = {
    "w": "forward", "s": "back", "a": "left", "d": "right",
    "space": "jump", "left.shift": "sneak", "left.control": "sprint",
    "q": "drop", "e": "inventory", "f": "swapHands", "escape": "ESC",
    **{str(i): f"hotbar.{i}" for i in range(1, 10)},
}
KEY_PREFIX = "key.keyboard."
MOUSE_TO_BUTTON: dict[int, str] = {0: "attack", 1: "use", 2: "pickItem"}
CONFLICTS: tuple[tuple[str, str], ...] = (
    ("forward", "back"), ("left", "right"), ("jump", "sneak"), ("sprint", "sneak"),
    ("attack", "use"),
)
_ID_BAD = re.compile(r"[^A-Za-z0-9._-]")


class VPTWarning(UserWarning):
    """A recording was skipped, or its video and actions disagreed in length."""


# -- actions ---------------------------------------------------------------------------------
def _camera(value: float, integer: bool) -> float:
    """Raw mouse units -> degrees (multiply first, so exact results stay exact)."""
    deg = float(value) * 360.0 / 2400.0
    if not math.isfinite(deg):
        raise ValueError(f"mouse move {value!r} is out of range")
    return float(math.trunc(deg)) if integer else deg


def json_to_action(step: Mapping[str, Any], integer_camera: bool = False) -> dict[str, Any]:
    """One VPT JSON object -> one MineRL action dict (every button of MINERL_SPACE + camera).

    Missing `keyboard` / `mouse` fields count as nothing pressed; fields of the wrong type
    raise ValueError."""
    if not isinstance(step, Mapping):
        raise ValueError(f"expected a JSON object, got {type(step).__name__}")
    keyboard = step.get("keyboard") or {}
    mouse = step.get("mouse") or {}
    if not isinstance(keyboard, Mapping) or not isinstance(mouse, Mapping):
        raise ValueError("'keyboard' and 'mouse' must be JSON objects")
    keys = keyboard.get("keys") or []
    buttons = mouse.get("buttons") or []
    if not isinstance(keys, list) or not isinstance(buttons, list):
        raise ValueError("'keyboard.keys' and 'mouse.buttons' must be lists")

    pressed: set[str] = set()
    for key in keys:
        if not isinstance(key, str):
            raise ValueError(f"keyboard key {key!r} is not a string")
        name = key.lower()
        if name.startswith(KEY_PREFIX):
            name = name[len(KEY_PREFIX):]
        if name in KEY_TO_BUTTON:
            pressed.add(KEY_TO_BUTTON[name])
    for b in buttons:
        if (isinstance(b, bool) or not isinstance(b, (int, float))
                or not math.isfinite(b) or b != int(b)):
            raise ValueError(f"mouse button {b!r} is not an integer")
        if int(b) in MOUSE_TO_BUTTON:
            pressed.add(MOUSE_TO_BUTTON[int(b)])

    for pair in CONFLICTS:  # one after another: a key a pair turned off no longer conflicts
        if set(pair) <= pressed:
            pressed -= set(pair)
    action: dict[str, Any] = {b: int(b in pressed) for b in MINERL_SPACE.buttons}
    moves = [mouse.get(k, 0) or 0 for k in ("dx", "dy")]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in moves):
        raise ValueError(f"mouse dx/dy must be finite numbers, got {moves[0]!r}, {moves[1]!r}")
    dx, dy = (float(v) for v in moves)
    action["camera"] = [_camera(dy, integer_camera), _camera(dx, integer_camera)]  # [pitch, yaw]
    return action


def _iter_json_lines(lines_or_path: str | os.PathLike | Iterable[str | bytes | Mapping[str, Any]]
                     ) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Yield (where, parsed object); blank lines are skipped."""
    if isinstance(lines_or_path, (str, os.PathLike)):
        path = Path(lines_or_path)
        with open(path, encoding="utf-8") as f:
            yield from _parse_lines(f, str(path))
    else:
        yield from _parse_lines(lines_or_path, "<lines>")


def _parse_lines(lines: Iterable[str | bytes | Mapping[str, Any]], where: str
                 ) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for no, line in enumerate(lines, 1):
        loc = f"{where}:{no}"
        if isinstance(line, Mapping):
            yield loc, line
            continue
        try:
            if isinstance(line, bytes):
                line = line.decode("utf-8")
            if not line.strip():
                continue
            parsed = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{loc}: bad JSON: {e}") from e
        yield loc, parsed


def jsonl_to_actions(lines_or_path: str | os.PathLike | Iterable[str | bytes | Mapping[str, Any]],
                     integer_camera: bool = False) -> list[dict[str, Any]]:
    """A VPT `.jsonl` (a path, or an iterable of lines / parsed objects) -> MineRL actions.

    A `str` or `PathLike` is a file path; pass a list to give lines. One action per non-blank
    line. Raises ValueError naming the line for bad JSON or a malformed object."""
    actions = []
    for loc, obj in _iter_json_lines(lines_or_path):
        try:
            actions.append(json_to_action(obj, integer_camera))
        except ValueError as e:
            raise ValueError(f"{loc}: {e}") from e
    return actions


# -- frames ----------------------------------------------------------------------------------
def read_video(mp4_path: str | os.PathLike, size: tuple[int, int] | None = DEFAULT_SIZE,
               max_frames: int | None = None) -> np.ndarray:
    """Decode an mp4 to RGB uint8 frames (N, h, w, 3), resizing in chunks as it streams.

    Reads at most `max_frames` frames when given. Raises OSError/ValueError for an unreadable
    or empty video."""
    import imageio.v3 as iio

    chunks: list[np.ndarray] = []  # each (n, h, w, 3) uint8
    pending: list[np.ndarray] = []  # each (H, W, 3) uint8, not yet resized
    n = 0
    frames = iio.imiter(mp4_path, plugin="FFMPEG")
    try:
        for frame in frames:  # (H, W, 3) uint8
            if max_frames is not None and n >= max_frames:
                break
            frame = np.asarray(frame)
            if frame.ndim != 3 or frame.shape[2] < 3:
                raise ValueError(f"{mp4_path}: unexpected frame shape {list(frame.shape)}")
            pending.append(frame[:, :, :3])
            n += 1
            if len(pending) == RESIZE_CHUNK:
                chunks.append(resize_frames(np.stack(pending), size))
                pending = []
    finally:
        frames.close()  # stops the ffmpeg reader now, also when we break early
    if pending:
        chunks.append(resize_frames(np.stack(pending), size))
    if not chunks:
        raise ValueError(f"{mp4_path}: the video has no frames")
    return np.ascontiguousarray(np.concatenate(chunks)) if len(chunks) > 1 else chunks[0]


def read_recording(mp4_path: str | os.PathLike, jsonl_path: str | os.PathLike,
                   size: tuple[int, int] | None = DEFAULT_SIZE, integer_camera: bool = False
                   ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One VPT recording -> (frames uint8 (N, h, w, 3), N per-frame MineRL actions).

    Frame i and action i belong to the same moment (see the module docstring for how an
    episode aligns them). If the video and the JSONL differ in length, both are cut to the
    shorter with a VPTWarning. `size=None` keeps the video's own size."""
    actions = jsonl_to_actions(jsonl_path, integer_camera=integer_camera)
    # Decode one frame past the JSONL's length: enough to tell that the video is longer.
    frames = read_video(mp4_path, size, max_frames=len(actions) + 1)  # (N, h, w, 3)
    if len(frames) != len(actions):
        longer = "more" if len(frames) > len(actions) else "fewer"
        warnings.warn(f"{Path(mp4_path).name}: the video has {longer} frames than "
                      f"{Path(jsonl_path).name} has actions ({len(actions)}); using the "
                      f"first {min(len(frames), len(actions))}", VPTWarning, stacklevel=2)
        n = min(len(frames), len(actions))
        frames, actions = frames[:n], actions[:n]
    return frames, actions


# -- folders ---------------------------------------------------------------------------------
def find_recordings(directory: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """The (name, mp4, jsonl) triples in a folder (not recursive), sorted by name.

    An mp4 without its jsonl, or a jsonl without its mp4, is skipped with a VPTWarning."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d} is not a folder of VPT recordings")
    mp4 = {p.stem: p for p in d.glob("*.mp4") if p.is_file()}
    jsonl = {p.stem: p for p in d.glob("*.jsonl") if p.is_file()}
    for name in sorted(mp4.keys() ^ jsonl.keys()):
        have, lack = ("mp4", "jsonl") if name in mp4 else ("jsonl", "mp4")
        warnings.warn(f"skipping VPT recording {name!r}: it has a .{have} but no .{lack}",
                      VPTWarning, stacklevel=2)
    return [(name, mp4[name], jsonl[name]) for name in sorted(mp4.keys() & jsonl.keys())]


def episode_id(name: str) -> str:
    """A recording name -> a store episode id: characters outside [A-Za-z0-9._-] become '_'
    and an id must start with a letter or digit."""
    eid = _ID_BAD.sub("_", name)
    return eid if eid[:1].isalnum() and eid[:1].isascii() else f"v{eid}"


def convert_vpt(src_dir: str | os.PathLike, out_dir: str | os.PathLike,
                size: tuple[int, int] = DEFAULT_SIZE, integer_camera: bool = False,
                progress: bool = True) -> dict[str, Any]:
    """Convert every recording in `src_dir` into one episode each of an EpisodeStore at `out_dir`.

    Resumable: a recording whose episode is already in the store (and intact) is skipped, so
    rerunning after an interruption converts only what is missing. A recording that cannot be
    read (corrupt mp4, bad JSON line, fewer than 2 frames) is skipped with a VPTWarning naming
    it; the run goes on. Returns {episodes, skipped, failed, frames, mb, seconds} for this run:
    episodes and frames written, recordings already present, recordings that failed, megabytes
    written and wall time."""
    from tqdm.auto import tqdm

    from worldsim.data.store import EpisodeStore, StoreError

    t0 = time.perf_counter()
    size = (int(size[0]), int(size[1]))
    src = Path(src_dir)
    recordings = find_recordings(src)
    source = {"kind": "vpt", "src": str(src.resolve()), "integer_camera": bool(integer_camera),
              "camera_scale": CAMERA_SCALE}
    store = EpisodeStore.create(out_dir, env="minerl", action_space=MINERL_SPACE, frame_size=size,
                                fps=MINERL_FPS, source=source)
    old = store.info.source
    if old.get("kind") == "vpt" and bool(old.get("integer_camera")) != bool(integer_camera):
        raise StoreError(f"{out_dir} holds VPT episodes converted with integer_camera="
                         f"{bool(old.get('integer_camera'))}; convert into another folder")

    summary: dict[str, Any] = {"episodes": 0, "skipped": 0, "failed": 0, "frames": 0, "mb": 0.0}
    seen: dict[str, str] = {}
    bar = tqdm(recordings, desc="vpt", unit="rec", disable=not progress)
    for name, mp4, jsonl in bar:
        eid = episode_id(name)
        if eid in seen:
            warnings.warn(f"skipping VPT recording {name!r}: its episode id {eid!r} is already "
                          f"taken by {seen[eid]!r}", VPTWarning, stacklevel=2)
            summary["failed"] += 1
            continue
        seen[eid] = name
        if store.has_valid(eid):
            summary["skipped"] += 1
            continue
        try:
            frames, actions = read_recording(mp4, jsonl, size=size, integer_camera=integer_camera)
            if len(frames) < 2:
                raise ValueError(f"only {len(frames)} frame(s); an episode needs 2 or more")
            actions_arr = MINERL_SPACE.to_array(actions[:-1])  # (N-1, 25) float32
            path = store.write_episode(eid, frames, actions_arr)
        except Exception as e:  # noqa: BLE001 - one bad recording must not stop the run
            msg = str(e).splitlines()[0] if str(e) else ""
            warnings.warn(f"skipping VPT recording {name!r}: {type(e).__name__}: {msg}",
                          VPTWarning, stacklevel=2)
            summary["failed"] += 1
            continue
        summary["episodes"] += 1
        summary["frames"] += int(frames.shape[0])
        summary["mb"] += path.stat().st_size / 2**20
        bar.set_postfix(frames=summary["frames"], mb=f"{summary['mb']:.1f}")
    bar.close()
    store.refresh()
    summary["mb"] = round(summary["mb"], 3)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


__all__ = ["CAMERA_SCALE", "CONFLICTS", "DEFAULT_SIZE", "KEY_TO_BUTTON", "MOUSE_TO_BUTTON",
           "VPTWarning", "convert_vpt", "episode_id", "find_recordings", "json_to_action",
           "jsonl_to_actions", "read_recording", "read_video", "resize_frames"]
