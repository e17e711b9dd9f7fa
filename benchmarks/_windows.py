"""What the Crafter dream benchmarks share: their common options, and the model, tokenizers and
real windows of `worldsim eval` for the same arguments (the same held-out episodes and starts)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from worldsim import bundle, metrics
from worldsim.data.store import EpisodeStore
from worldsim.evaluation import run as ev
from worldsim.evaluation.episodes import held_out_ids, select_windows
from worldsim.tokenizers.action import action_tokenizer_from_config

CONTEXT, HORIZON = 1, 15  # MineWorld's protocol, as `worldsim eval` runs it


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default=None, help="default: the shipped model")
    p.add_argument("--data", default="data/crafter")
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="the eval's --seed: which windows, and sampling")
    p.add_argument("--temperature", type=float, default=None,
                   help="default: the bundle's own (0.8 for a bundle that records none)")
    p.add_argument("--decoder", default="block_diffusion:4")
    p.add_argument("--threads", type=int, default=1)


@dataclass
class Setup:
    bundle: str
    cfg: dict[str, Any]
    model: Any
    image_tok: Any
    action_tok: Any
    codec: ev.Codec
    store: EpisodeStore
    ids: list[str]  # the held-out episodes
    windows: list
    real: ev.Real
    decoder: Any  # resolved DecoderSettings


def load(args: argparse.Namespace, what: str, horizon: int = HORIZON) -> Setup:
    """The bundle (`what` names it in the error when none is found) and the eval's windows, or
    with another `horizon`, windows as long as that from the same held-out episodes."""
    torch.set_num_threads(args.threads)
    path = bundle.find_bundle(args.bundle, what)
    cfg = bundle.read_config(path)
    cpu = torch.device("cpu")
    model, image_tok = bundle.load_world_model(path, cpu), bundle.load_image_tokenizer(path, cpu)
    action_tok = action_tokenizer_from_config(cfg["action_tokenizer"])
    codec = ev.Codec(image_tok)
    store = EpisodeStore(args.data)
    ids, _ = held_out_ids(store, cfg)
    windows = select_windows(store, ids, args.episodes, max(CONTEXT + horizon, model.cfg.frames), args.seed)
    real = ev._real(windows, codec, action_tok, image_tok.cfg.grid[0], store.info.env, CONTEXT, horizon)
    if real.map_rows is None:
        raise SystemExit("this benchmark runs on Crafter stores only")
    args.temperature = bundle.play_temperature(path, args.temperature)
    decoder = ev.parse_decoder(args.decoder, args.temperature).resolve(model.cfg.objective)
    return Setup(str(path), cfg, model, image_tok, action_tok, codec, store, ids, windows, real, decoder)


# Crafter's discrete actions 1-4 move the player left, right, up, down; the player stands at
# tile (row 3, column 4) of the 9 x 7 map.
TARGET_TILE = {1: (3, 3), 2: (3, 5), 3: (2, 4), 4: (4, 4)}
STEP = {1: (0, -1), 2: (0, 1), 3: (-1, 0), 4: (1, 0)}  # a move (or scroll direction) in tiles
PLAYER = (3, 4)
DAY = 0.7  # daylight above which a tile's pixels are its texture


def tile_at(frame: np.ndarray, action: int, tile: int, where: tuple[int, int] | None = None) -> np.ndarray:
    """The tile the player walks into with `action`, or the tile at (row, column) `where`."""
    r, c = TARGET_TILE[action] if where is None else where
    return frame[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile].astype(np.float32)


def top_tile_share(frames: np.ndarray, tile: int, map_rows: int) -> np.ndarray:
    """For frames (..., H, W, 3), flattened: the share of each map's tiles that are its most
    common tile (every copy pixel for pixel the same)."""
    f = frames.reshape(-1, *frames.shape[-3:])[:, :map_rows * tile]
    n, h, w = len(f), map_rows, f.shape[2] // tile
    tiles = f.reshape(n, h, tile, w, tile, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * w, -1)
    return np.array([np.unique(t, axis=0, return_counts=True)[1].max() / (h * w) for t in tiles])


def plain_share(frames: np.ndarray, tile: int, map_rows: int, share: float = 0.9) -> float:
    """The fraction of frames (..., H, W, 3) whose map is at least `share` one tile: a view on
    which a move hardly shows."""
    return float(np.mean(top_tile_share(frames, tile, map_rows) >= share))


def move_library(store: EpisodeStore, ids: list[str], tile: int, map_rows: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Day tiles the player tried to walk into, and whether the view then scrolled."""
    tiles, walked = [], []
    for ep in store.iter_episodes(ids):
        frames = np.asarray(ep.frames)
        acts = np.asarray(ep.actions).reshape(len(ep.actions), -1)[:, 0]
        n = min(len(frames) - 1, len(acts))
        moved = metrics.scroll_direction(torch.from_numpy(frames[:n]), torch.from_numpy(frames[1:n + 1]),
                                         tile, map_rows).numpy() != 0
        for t in range(n):
            if int(acts[t]) in TARGET_TILE and (ep.daylight is None or ep.daylight[t] > DAY):
                tiles.append(tile_at(frames[t], int(acts[t]), tile))
                walked.append(bool(moved[t]))
    return np.stack(tiles), np.array(walked)

def scroll_visible(frame: np.ndarray, direction: int, tile: int, map_rows: int, margin: float = 0.5) -> bool:
    """Whether a move `direction` over `frame`'s own terrain would show: the map and its
    copy moved one tile differ, over their overlap and away from the player (who stays in
    the middle), by more than the scroll detector's margin."""
    m = frame[:map_rows * tile].astype(np.float32)
    dr, dc = STEP[direction]
    h, w = m.shape[0] - abs(dr) * tile, m.shape[1] - abs(dc) * tile
    new = m[max(dr, 0) * tile:, max(dc, 0) * tile:][:h, :w]  # what the moved view shows there: the old tile
    old = m[max(-dr, 0) * tile:, max(-dc, 0) * tile:][:h, :w]
    diff = np.abs(new - old).reshape(h // tile, tile, w // tile, tile, -1).mean((1, 3, 4))  # per tile
    pr, pc = PLAYER
    for r_, c_ in ((pr - max(dr, 0), pc - max(dc, 0)), (pr - max(-dr, 0), pc - max(-dc, 0))):
        diff[r_, c_] = 0.0  # the player's tile, in either copy
    return float(diff.mean()) > margin


class WayMatcher:
    """Whether the tile a move walks into is open: matched to its nearest day tile (mean
    absolute difference) among the moves of `ids`, each labelled by whether the view then
    scrolled (walked) or not (blocked). With `vote`, the label is the majority's among all the
    tiles equally near (a grass tile has thousands of copies, some labelled blocked: a creature
    stepped in, or the view was a field where the scroll did not show); without, the first's."""

    def __init__(self, store: EpisodeStore, ids: list[str], tile: int, map_rows: int, vote: bool = False):
        self.tile, self.vote = tile, vote
        lib, self.walked = move_library(store, ids, tile, map_rows)
        self.lib = torch.from_numpy(lib.reshape(len(lib), -1))

    def __len__(self) -> int:
        return len(self.lib)

    def open(self, frames: np.ndarray, actions: np.ndarray, where: list | None = None) -> np.ndarray:
        """(Q,) bool for frames (Q, H, W, 3) and move actions (Q,), or the tiles at (row,
        column) `where[q]` instead of each move's target."""
        if len(frames) == 0:
            return np.zeros(0, bool)
        q = np.stack([tile_at(f, int(a), self.tile, None if where is None else where[i])
                      for i, (f, a) in enumerate(zip(frames, actions))])
        d = torch.cdist(torch.from_numpy(q.reshape(len(q), -1)), self.lib, p=1)  # exact: integer pixels
        if not self.vote:
            return self.walked[d.argmin(1).numpy()]
        nearest = (d == d.min(1, keepdim=True).values).double()
        return (nearest @ torch.from_numpy(self.walked).double() / nearest.sum(1)).numpy() > 0.5
