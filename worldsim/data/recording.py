"""What a played session leaves behind, from the raw RGB frames a client kept: an episode in the
store format (so a recording becomes training data), an mp4, a GIF.

The pygame client keeps frames as bytes and calls these only when it writes, so the client
itself imports neither numpy nor imageio (a client installs light; this is the numpy side).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from worldsim.data.store import EpisodeStore, StoreError
from worldsim.envs.base import ActionSpace


def rgb_frames(frames: Sequence[bytes], height: int, width: int) -> np.ndarray:
    """Raw RGB frames -> uint8 (T, H, W, 3)."""
    return np.frombuffer(b"".join(frames), np.uint8).reshape(-1, height, width, 3)


def write_recording(out_dir: Path, frames: Sequence[bytes], height: int, width: int,
                    actions: list[Any], action_space: dict[str, Any], fps: int,
                    source: dict[str, Any], steps: Sequence[int] | None = None) -> list[Path]:
    """An episode under OUT/recordings (the store format) and OUT/worldsim-STAMP.mp4; returns
    the files written. Without ffmpeg the episode is still kept. A recording that does not fit
    OUT/recordings (another game, frame size or source) goes to OUT/recordings-2, -3, ...
    `steps`: each frame's game step; a Crafter episode then records its daylight, which the
    tile tokenizer needs (without it a night frame would be read as day)."""
    video = rgb_frames(frames, height, width)
    space = ActionSpace.from_dict(action_space)
    daylight = None
    if steps is not None and space.name == "crafter":
        from worldsim.envs.crafter import crafter_daylight

        if len(steps) != len(video):
            raise ValueError(f"{len(steps)} steps for {len(video)} frames")
        daylight = crafter_daylight(np.asarray(steps))
    store = _recordings_store(Path(out_dir), space, (height, width), fps, source)
    stamp = base = time.strftime("%Y%m%d-%H%M%S")
    n = 1
    # Two recordings in one second (or a clock set back) must not overwrite each other.
    while store.episode_path(stamp).exists() or (out_dir / f"worldsim-{stamp}.mp4").exists():
        n += 1
        stamp = f"{base}-{n}"
    written = [store.write_episode(stamp, video, space.to_array(actions), daylight=daylight)]
    store.refresh()
    try:
        import imageio.v2 as imageio

        mp4 = out_dir / f"worldsim-{stamp}.mp4"
        imageio.mimwrite(mp4, list(video), fps=fps, macro_block_size=1)
        written.append(mp4)
    except (ImportError, RuntimeError, OSError) as e:  # no ffmpeg: the episode is still kept
        print(f"worldsim play: no mp4 ({e}); the episode is in {store.root}")
    return written


def _recordings_store(out_dir: Path, space: ActionSpace, frame_size: tuple[int, int], fps: int,
                      source: dict[str, Any]) -> EpisodeStore:
    """OUT/recordings, or the first OUT/recordings-N that is new or holds recordings of the same
    kind. A store has one frame size and one source: a session at another size was refused
    at its end (the recording lost), and one of dreamed frames was filed under a store whose
    source says its frames are the real game's."""
    want = (space.name, space, tuple(frame_size), int(fps), json.loads(json.dumps(source)))
    for n in itertools.count(1):
        root = out_dir / ("recordings" if n == 1 else f"recordings-{n}")
        if not (root / "dataset.json").exists():
            break
        try:
            old = EpisodeStore(root).info
        except StoreError:  # unreadable: not ours to write into
            continue
        if (old.env, old.action_space, old.frame_size, old.fps, old.source) == want:
            break
    return EpisodeStore.create(root, env=space.name, action_space=space, frame_size=frame_size,
                               fps=fps, source=source)


def write_gif(path: Path, frames: Iterable[bytes], height: int, width: int, fps: float) -> int:
    """Raw RGB frames (read one at a time) as a looping GIF; returns the number of frames."""
    import imageio.v2 as imageio

    video = [np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, video, duration=1000 / fps, loop=0)  # ms per frame
    return len(video)
