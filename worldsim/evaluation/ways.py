"""Whether a Crafter dream follows the keys in its own world.

Scroll agreement asks whether a dream scrolls where one real episode scrolled, and a dream must
invent the world out of view: where it puts a tree in the real player's path, a dream that obeys
its own world stands still. This asks instead whether a move key moves the player wherever the
dream's own frame shows the way open, and never through what it shows blocked.

A move key walks the player into the tile ahead unless that tile is blocked (water, a tree,
stone, a table, a creature). Which tiles are open is learnt from real moves: every day tile a
real player tried to walk into, in a store's episodes, labelled walked or blocked by whether the
view then scrolled that way. A frame's tile ahead is matched to its nearest library tiles (mean
absolute difference over the pixels), and the majority of the equally near copies decides: a
grass tile has thousands of pixel-exact copies, a few of them labelled blocked (a creature
stepped in, or the view was a field where the scroll did not show).

Counted steps: move keys between two day frames (daylight above 0.7, where a tile's pixels are
its texture), from a view that is not plain (a map at least 90% one tile, over which a scroll
may show nothing but a creature). Per frame, 0 or 1: `open_moves` (a counted move whose way is
open), `open_walks` (and the view scrolled that way), `wall_moves`, `wall_walks`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from worldsim import metrics
from worldsim.data.store import CorruptEpisode, EpisodeStore

DAY = 0.7  # daylight above which a tile's pixels are its texture
PLAIN = 0.9  # a map at least this share one tile is plain: a move over it hardly shows
LIBRARY_EPISODES = 120  # episodes whose moves make the library (about 8,500 day moves on Crafter)
# Crafter's actions 1-4 move the player left, right, up, down: the same indices as
# metrics.SCROLLS, the view's scroll when the player walks that way.
MOVES = (1, 2, 3, 4)
_STEP = {1: (0, -1), 2: (0, 1), 3: (-1, 0), 4: (1, 0)}  # (rows, columns) on screen


def player_tile(map_rows: int, cols: int) -> tuple[int, int]:
    """Where the player stands in the view: the middle of the map (Crafter: row 3, column 4)."""
    return map_rows // 2, cols // 2


def target_tile(action: int, map_rows: int, cols: int) -> tuple[int, int]:
    """The (row, column) of the tile move `action` walks into."""
    (pr, pc), (dr, dc) = player_tile(map_rows, cols), _STEP[action]
    return pr + dr, pc + dc


def facing_before(keys: np.ndarray) -> np.ndarray:
    """The move whose way the player faces before each step (int64, the shape of `keys` (..., T)):
    the last move key pressed before it, walked or blocked (Crafter turns the player either way),
    0 before the first one, when it is not known."""
    keys = np.asarray(keys)
    last = np.where(np.isin(keys, MOVES), keys, 0).astype(np.int64)
    out = np.zeros_like(last)
    for t in range(1, keys.shape[-1]):
        out[..., t] = np.where(last[..., t - 1] > 0, last[..., t - 1], out[..., t - 1])
    return out


def tile_at(frame: np.ndarray, rc: tuple[int, int], tile: int) -> np.ndarray:
    """The pixels of tile (row, column) of `frame` (H, W, 3), as float32."""
    r, c = rc
    return frame[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile].astype(np.float32)


def top_tile_share(frames: np.ndarray, tile: int, map_rows: int) -> np.ndarray:
    """For frames (..., H, W, 3), flattened: the share of each map's tiles that are its most
    common tile (every copy pixel for pixel the same)."""
    f = frames.reshape(-1, *frames.shape[-3:])[:, :map_rows * tile]
    n, h, w = len(f), map_rows, f.shape[2] // tile
    tiles = f.reshape(n, h, tile, w, tile, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * w, -1)
    return np.array([np.unique(t, axis=0, return_counts=True)[1].max() / (h * w) for t in tiles])


def move_library(store: EpisodeStore, ids: Sequence[str], tile: int, map_rows: int,
                 skipped: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The day tiles real players tried to walk into in episodes `ids` (M, tile, tile, 3), and
    whether the view then scrolled (M,) bool. Unreadable episodes are left out, their ids added
    to `skipped` (whoever reads the store for the windows has warned of them already)."""
    tiles, walked = [], []
    for eid in ids:
        try:
            ep = store.load(eid)
        except CorruptEpisode:
            if skipped is not None:
                skipped.append(eid)
            continue
        frames = np.asarray(ep.frames)
        cols = frames.shape[2] // tile
        acts = np.asarray(ep.actions).reshape(len(ep.actions), -1)[:, 0]
        n = min(len(frames) - 1, len(acts))
        if n < 1:
            continue
        scrolled = metrics.scroll_direction(torch.from_numpy(frames[:n]), torch.from_numpy(frames[1:n + 1]),
                                            tile, map_rows).numpy()  # a move key's value is its direction
        for t in range(n):
            a = int(acts[t])
            if a in MOVES and (ep.daylight is None or ep.daylight[t] > DAY):
                tiles.append(tile_at(frames[t], target_tile(a, map_rows, cols), tile))
                walked.append(int(scrolled[t]) == a)  # the way it was asked, not any way
    if not tiles:
        return np.zeros((0, tile, tile, 3), np.float32), np.zeros(0, bool)
    return np.stack(tiles), np.array(walked)


class WayMatcher:
    """Whether the tile ahead of a move is open, by the real moves of a store's episodes. With
    `vote` (the default), the majority among all the library tiles equally near decides; without,
    the first of them (as `benchmarks/scroll_misses.py` has always matched)."""

    def __init__(self, tiles: np.ndarray, walked: np.ndarray, vote: bool = True):
        if len(tiles) == 0:
            raise ValueError("the tile matcher needs at least one real move")
        self.tile, self.vote = tiles.shape[1], vote
        self.skipped: list[str] = []  # unreadable episodes of the library (from_store)
        self.lib = torch.from_numpy(np.ascontiguousarray(tiles.reshape(len(tiles), -1), np.float32))
        self.walked = np.asarray(walked, bool)

    @classmethod
    def from_store(cls, store: EpisodeStore, ids: Sequence[str], tile: int, map_rows: int,
                   vote: bool = True) -> "WayMatcher":
        skipped: list[str] = []
        out = cls(*move_library(store, ids, tile, map_rows, skipped), vote=vote)
        out.skipped = skipped
        return out

    def __len__(self) -> int:
        return len(self.lib)

    def open(self, frames: np.ndarray, actions: np.ndarray, map_rows: int,
             where: Sequence[tuple[int, int] | None] | None = None) -> np.ndarray:
        """(Q,) bool for frames (Q, H, W, 3) and move actions (Q,): is the tile each move walks
        into open? `where[q]`, where given and not None, names another (row, column) to judge."""
        if len(frames) == 0:
            return np.zeros(0, bool)
        cols = frames.shape[2] // self.tile
        q = np.stack([tile_at(f, target_tile(int(a), map_rows, cols) if where is None or where[i] is None
                              else where[i], self.tile) for i, (f, a) in enumerate(zip(frames, actions))])
        d = torch.cdist(torch.from_numpy(q.reshape(len(q), -1)), self.lib, p=1)  # exact: integer pixels
        if not self.vote:
            return self.walked[d.argmin(1).numpy()]
        nearest = (d == d.min(1, keepdim=True).values).double()
        return (nearest @ torch.from_numpy(self.walked).double() / nearest.sum(1)).numpy() > 0.5


def library_ids(store: EpisodeStore, judged: Sequence[str], count: int = LIBRARY_EPISODES) -> list[str]:
    """The episodes whose moves teach the matcher: the first `count` of the store's that are not
    being judged, or, where every episode is judged, the first `count` of all (the matcher learns
    the game's rule, which tile textures block a move, not anything a dream drew)."""
    ids = store.episode_ids()
    judged_set = set(judged)
    rest = [i for i in ids if i not in judged_set]
    return (rest or ids)[:count]


def way_counts(prev: np.ndarray, nxt: np.ndarray, keys: np.ndarray, day: np.ndarray, matcher: WayMatcher,
               tile: int, map_rows: int) -> dict[str, np.ndarray]:
    """Per step, 0 or 1 (float64 arrays of `keys`' shape): frames before and after each step
    (..., H, W, 3), the key pressed (...) and whether both frames are day (...)."""
    shape = keys.shape
    prev, nxt = prev.reshape(-1, *prev.shape[-3:]), nxt.reshape(-1, *nxt.shape[-3:])
    keys, day = keys.reshape(-1), day.reshape(-1)
    out = {k: np.zeros(len(keys)) for k in ("open_moves", "open_walks", "wall_moves", "wall_walks")}
    idx = np.nonzero(np.isin(keys, MOVES) & day)[0]
    if len(idx):
        idx = idx[top_tile_share(prev[idx], tile, map_rows) < PLAIN]
    if len(idx):
        walked = metrics.scroll_direction(torch.from_numpy(prev[idx]), torch.from_numpy(nxt[idx]), tile,
                                          map_rows).numpy() == keys[idx]
        open_ = matcher.open(prev[idx], keys[idx], map_rows)
        out["open_moves"][idx[open_]] = 1
        out["open_walks"][idx[open_ & walked]] = 1
        out["wall_moves"][idx[~open_]] = 1
        out["wall_walks"][idx[~open_ & walked]] = 1
    return {k: v.reshape(shape) for k, v in out.items()}
