"""What a played session leaves behind, from the raw RGB frames a client kept: an episode in the
store format (so a recording becomes training data), an mp4, a GIF.

The pygame client keeps frames as bytes and calls these only when it writes, so the client
itself imports neither numpy nor imageio (a client installs light; this is the numpy side).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from worldsim.data.store import EpisodeStore
from worldsim.envs.base import ActionSpace


def rgb_frames(frames: Sequence[bytes], height: int, width: int) -> np.ndarray:
    """Raw RGB frames -> uint8 (T, H, W, 3)."""
    return np.frombuffer(b"".join(frames), np.uint8).reshape(-1, height, width, 3)


def write_recording(out_dir: Path, frames: Sequence[bytes], height: int, width: int,
                    actions: list[Any], action_space: dict[str, Any], fps: int,
                    source: dict[str, Any]) -> list[Path]:
    """An episode under OUT/recordings (the store format) and OUT/worldsim-STAMP.mp4; returns
    the files written. Without ffmpeg the episode is still kept."""
    video = rgb_frames(frames, height, width)
    space = ActionSpace.from_dict(action_space)
    store = EpisodeStore.create(out_dir / "recordings", env=space.name, action_space=space,
                                frame_size=(height, width), fps=fps, source=source)
    stamp = base = time.strftime("%Y%m%d-%H%M%S")
    n = 1
    # Two recordings in one second (or a clock set back) must not overwrite each other.
    while store.episode_path(stamp).exists() or (out_dir / f"worldsim-{stamp}.mp4").exists():
        n += 1
        stamp = f"{base}-{n}"
    written = [store.write_episode(stamp, video, space.to_array(actions))]
    store.refresh()
    try:
        import imageio.v2 as imageio

        mp4 = out_dir / f"worldsim-{stamp}.mp4"
        imageio.mimwrite(mp4, list(video), fps=fps, macro_block_size=1)
        written.append(mp4)
    except (ImportError, RuntimeError, OSError) as e:  # no ffmpeg: the episode is still kept
        print(f"worldsim play: no mp4 ({e}); the episode is in {store.root}")
    return written


def write_gif(path: Path, frames: Iterable[bytes], height: int, width: int, fps: float) -> int:
    """Raw RGB frames (read one at a time) as a looping GIF; returns the number of frames."""
    import imageio.v2 as imageio

    video = [np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, video, duration=1000 / fps, loop=0)  # ms per frame
    return len(video)
