"""The episode store: episodes of frames and actions on disk, written atomically, read safely.

Layout of a store folder:

    DIR/dataset.json          {"format": "worldsim.episodes", "version": 1, "env", "action_space",
                               "frame_size": [H, W], "fps", "episodes", "frames", "source"}
    DIR/episodes/<id>.npz     one compressed npz per episode:
        frames    uint8   [T+1, H, W, 3]   observation before each action, and after the last
        actions   int16   [T]              discrete spaces (e.g. Crafter's 17 actions)
                  float32 [T, D]           dict spaces; columns described by the action space
        daylight  float32 [T+1]            optional; 1.0 at noon, < 0.5 is night (Crafter noise)

The action after frame t is what the player did at t; it leads to frame t+1. Episode ids are
file stems (`000017` for collected games, the recording's name for converted VPT data) and sort
in order. Every file is written to a temporary name and renamed, so a killed writer leaves no
torn episode. Readers validate each file and skip a corrupt one with a warning naming it.
"""

from __future__ import annotations

import json
import re
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from worldsim.envs.base import ActionSpace
from worldsim.errors import WorldsimError
from worldsim.fileio import atomic_save_npz, atomic_write_json, clean_stale_temps

FORMAT = "worldsim.episodes"
VERSION = 1
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class StoreError(WorldsimError):
    """The store folder itself is missing, malformed or incompatible (one-line message)."""


class CorruptEpisodeWarning(UserWarning):
    """An episode file could not be read and was skipped."""


class CorruptEpisode(Exception):
    pass


@dataclass
class Episode:
    id: str
    frames: np.ndarray  # (T+1, H, W, 3) uint8
    actions: np.ndarray  # (T,) int16 or (T, D) float32
    daylight: np.ndarray | None = None  # (T+1,) float32
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return int(self.actions.shape[0])


@dataclass
class StoreInfo:
    env: str
    action_space: ActionSpace
    frame_size: tuple[int, int]
    fps: int
    episodes: int = 0
    frames: int = 0
    source: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "env": self.env,
                "action_space": self.action_space.to_dict(), "frame_size": list(self.frame_size),
                "fps": self.fps, "episodes": self.episodes, "frames": self.frames,
                "source": self.source}

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str) -> "StoreInfo":
        if not isinstance(d, dict):  # valid JSON, but a list or a number
            raise StoreError(f"{where} is not a worldsim episode store (a JSON {type(d).__name__}, "
                             "not an object)")
        if d.get("format") != FORMAT:
            raise StoreError(f"{where} is not a worldsim episode store (format {d.get('format')!r})")
        if d.get("version") != VERSION:
            raise StoreError(f"{where} has store version {d.get('version')}, this worldsim reads {VERSION}")
        try:
            return cls(env=d["env"], action_space=ActionSpace.from_dict(d["action_space"]),
                       frame_size=(int(d["frame_size"][0]), int(d["frame_size"][1])),
                       fps=int(d["fps"]), episodes=int(d.get("episodes", 0)),
                       frames=int(d.get("frames", 0)), source=dict(d.get("source", {})))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise StoreError(f"{where} is malformed: {e}") from e


class EpisodeStore:
    """A folder of episodes. Open an existing one with `EpisodeStore(path)`; make or reopen one
    for writing with `EpisodeStore.create(...)`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta = self.root / "dataset.json"
        if not meta.is_file():
            raise StoreError(f"{self.root} is not an episode store (no dataset.json); "
                             "make one with `worldsim collect`")
        try:
            d = json.loads(meta.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StoreError(f"{meta} is not valid JSON: {e}") from e
        self.info = StoreInfo.from_json(d, str(meta))

    # -- writing ---------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, env: str, action_space: ActionSpace,
               frame_size: tuple[int, int], fps: int, source: dict[str, Any] | None = None
               ) -> "EpisodeStore":
        """Make a store, or reopen an existing one if it holds the same kind of data."""
        root = Path(root)
        info = StoreInfo(env=env, action_space=action_space, frame_size=tuple(frame_size),
                         fps=fps, source=source or {})
        if (root / "dataset.json").exists():
            store = cls(root)
            old = store.info
            if (old.env, old.action_space, old.frame_size) != (env, action_space, tuple(frame_size)):
                raise StoreError(
                    f"{root} already holds a {old.env} store at {old.frame_size[0]}x{old.frame_size[1]}; "
                    f"cannot add {env} at {frame_size[0]}x{frame_size[1]} (resume with the same "
                    f"size, or choose another --out)")
            clean_stale_temps(root / "episodes")
            return store
        (root / "episodes").mkdir(parents=True, exist_ok=True)
        atomic_write_json(root / "dataset.json", info.to_json())
        return cls(root)

    def episode_path(self, episode_id: str) -> Path:
        return self.root / "episodes" / f"{episode_id}.npz"

    def fingerprint(self, episode_id: str) -> str:
        """What the episode's file holds, cheaply: the CRC-32 and size of each of its arrays, read
        from the zip directory without decompressing anything. Equal for a byte-for-byte copy of
        the store, different once an episode is written again with other data. Raises
        CorruptEpisode where the file cannot be read."""
        path = self.episode_path(episode_id)
        try:
            with zipfile.ZipFile(path) as zf:
                return ";".join(f"{i.filename}:{i.CRC:08x}:{i.file_size}"
                                for i in sorted(zf.infolist(), key=lambda i: i.filename))
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise CorruptEpisode(f"{path}: {type(e).__name__}: {e}") from e

    def write_episode(self, episode_id: str, frames: np.ndarray, actions: np.ndarray,
                      daylight: np.ndarray | None = None, **extras: np.ndarray) -> Path:
        if not _ID_RE.match(episode_id):
            raise ValueError(f"episode id {episode_id!r} must be letters, digits, '.', '_' or '-'")
        self._check_shapes(episode_id, frames, actions, daylight)
        arrays: dict[str, np.ndarray] = {"frames": frames, "actions": actions}
        if daylight is not None:
            arrays["daylight"] = np.asarray(daylight, np.float32)
        arrays.update(extras)
        path = self.episode_path(episode_id)
        atomic_save_npz(path, **arrays)
        return path

    def refresh(self, **source: Any) -> StoreInfo:
        """Recount episodes and frames from the files and rewrite dataset.json."""
        n_eps, n_frames = 0, 0
        for eid in self.episode_ids():
            try:
                t = self._num_frames(self.episode_path(eid))
            except CorruptEpisode:
                continue
            n_eps += 1
            n_frames += t
        self.info.episodes, self.info.frames = n_eps, n_frames
        self.info.source.update(source)
        atomic_write_json(self.root / "dataset.json", self.info.to_json())
        return self.info

    # -- reading ---------------------------------------------------------------------------
    def episode_ids(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "episodes").glob("*.npz")
                      if not p.name.startswith("."))

    def __len__(self) -> int:
        return len(self.episode_ids())

    def has_valid(self, episode_id: str) -> bool:
        """Whether the episode's file exists and its zip directory and arrays are intact.

        Cheap: reads array headers, not pixels. Used by resumable writers."""
        try:
            self._num_frames(self.episode_path(episode_id))
            return True
        except CorruptEpisode:
            return False

    def load(self, episode_id: str) -> Episode:
        """Read and validate one episode; raises CorruptEpisode with the reason."""
        path = self.episode_path(episode_id)
        try:
            # Our own handle: np.load leaks the one it opens when the zip directory is torn.
            with open(path, "rb") as fh:
                z = np.load(fh, allow_pickle=False)
                if not isinstance(z, np.lib.npyio.NpzFile):  # a lone .npy array under the name
                    raise CorruptEpisode(f"{path}: not an .npz archive of arrays")
                with z:
                    arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
            raise CorruptEpisode(f"{path}: {type(e).__name__}: {e}") from e
        for key in ("frames", "actions"):
            if key not in arrays:
                raise CorruptEpisode(f"{path}: missing array {key!r}")
        frames, actions = arrays.pop("frames"), arrays.pop("actions")
        daylight = arrays.pop("daylight", None)
        try:
            self._check_shapes(episode_id, frames, actions, daylight)
        except ValueError as e:
            raise CorruptEpisode(f"{path}: {e}") from e
        return Episode(episode_id, frames, actions, daylight, arrays)

    def iter_episodes(self, ids: Iterable[str] | None = None) -> Iterator[Episode]:
        """Stream episodes in id order, skipping corrupt files with a CorruptEpisodeWarning."""
        for eid in (self.episode_ids() if ids is None else ids):
            try:
                yield self.load(eid)
            except CorruptEpisode as e:
                warnings.warn(f"skipping corrupt episode {e}", CorruptEpisodeWarning, stacklevel=2)

    def validate(self) -> tuple[list[str], list[str]]:
        """Fully read every episode. Returns (good ids, bad ids) and warns for each bad one."""
        good, bad = [], []
        for eid in self.episode_ids():
            try:
                self.load(eid)
                good.append(eid)
            except CorruptEpisode as e:
                warnings.warn(f"corrupt episode {e}", CorruptEpisodeWarning, stacklevel=2)
                bad.append(eid)
        return good, bad

    def split(self, val_fraction: float = 0.05, ids: Iterable[str] | None = None
              ) -> tuple[list[str], list[str]]:
        """Deterministic train/validation split of this store's episodes (see `split_ids`)."""
        return split_ids(self.episode_ids() if ids is None else list(ids), val_fraction)

    # -- helpers ---------------------------------------------------------------------------
    def _check_shapes(self, eid: str, frames: np.ndarray, actions: np.ndarray,
                      daylight: np.ndarray | None) -> None:
        h, w = self.info.frame_size
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (h, w, 3):
            raise ValueError(f"episode {eid}: frames must be uint8 [T+1,{h},{w},3], "
                             f"got {frames.dtype} {list(frames.shape)}")
        space = self.info.action_space
        want = (frames.shape[0] - 1,) if space.kind == "discrete" else (frames.shape[0] - 1, space.width)
        if actions.shape != want:
            raise ValueError(f"episode {eid}: actions must have shape {list(want)} for "
                             f"{frames.shape[0]} frames, got {list(actions.shape)}")
        # Actions the space cannot hold (an id past its last action, a NaN camera): the action
        # tokenizer would refuse them mid-run, so such an episode is corrupt too.
        if actions.dtype.kind not in "iubf":
            raise ValueError(f"episode {eid}: actions must be numbers, got {actions.dtype}")
        if actions.size and space.kind == "discrete":
            a = actions.astype(np.float64)
            if not (np.all(np.mod(a, 1) == 0) and a.min() >= 0 and a.max() < space.n):
                raise ValueError(f"episode {eid}: actions must be integers in [0, {space.n}), "
                                 f"got values in [{a.min()}, {a.max()}]")
        elif not np.isfinite(actions).all():
            raise ValueError(f"episode {eid}: actions must be finite, got NaN or infinity")
        if daylight is None:
            return
        light = np.asarray(daylight, np.float64)
        if light.shape != (frames.shape[0],):
            raise ValueError(f"episode {eid}: daylight must have shape [{frames.shape[0]}]")
        # A light the game never draws under (NaN, a percentage): a tile tokenizer would refuse
        # it mid-run, so such an episode is corrupt like any other unreadable one.
        if not np.all((light >= 0) & (light <= 1)):
            raise ValueError(f"episode {eid}: daylight must lie in [0, 1], got {light[~((light >= 0) & (light <= 1))][0]}")

    def _num_frames(self, path: Path) -> int:
        """Number of frames from the npy header, without decompressing pixels."""
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                if not {"frames.npy", "actions.npy"} <= names:
                    raise CorruptEpisode(f"{path}: missing arrays")
                with zf.open("frames.npy") as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, _ = read_header(f)
                # A truncated file loses its central directory, which ZipFile reads first;
                # testzip would CRC every byte, too slow for a resume scan.
            return int(shape[0])
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise CorruptEpisode(f"{path}: {type(e).__name__}: {e}") from e


def split_ids(ids: Iterable[str], val_fraction: float = 0.05) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split by episode id.

    An episode's side depends only on its id (a CRC of the id), so the split is the same on
    every machine and an episode keeps its side as the store grows. At least one episode goes
    to validation when there are two or more: where no id's CRC falls under the fraction (about
    20 episodes or fewer at 0.05), the lowest goes, and that one may change as such a small
    store grows."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = list(ids)
    score = {i: zlib.crc32(i.encode()) / 2**32 for i in ids}
    val = [i for i in ids if score[i] < val_fraction]
    if not val and val_fraction > 0 and len(ids) >= 2:
        val = [min(ids, key=lambda i: score[i])]
    vs = set(val)
    return [i for i in ids if i not in vs], val
