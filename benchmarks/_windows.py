"""What the Crafter dream benchmarks share: their common options, and the model, tokenizers and
real windows of `worldsim eval` for the same arguments (the same held-out episodes and starts)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from worldsim import bundle
from worldsim.commands._args import existing_dir, nonneg_float, nonneg_int, positive_int
from worldsim.data.store import EpisodeStore
from worldsim.evaluation import run as ev
from worldsim.evaluation import ways
from worldsim.evaluation.episodes import held_out_ids, select_windows
from worldsim.tokenizers.action import action_tokenizer_from_config

CONTEXT, HORIZON = 1, 15  # MineWorld's protocol, as `worldsim eval` runs it


def add_options(p: argparse.ArgumentParser) -> None:
    # The checked types of `worldsim`'s own commands: bad input stops here with one line.
    p.add_argument("--bundle", type=existing_dir, default=None, help="the model (default: the shipped model)")
    p.add_argument("--data", type=existing_dir, default="data/crafter",
                   help="a Crafter store from `worldsim collect` (default: data/crafter)")
    p.add_argument("--episodes", type=positive_int, default=64,
                   help="held-out episodes, one window each, as `worldsim eval` picks them (default: 64)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="the eval's --seed: which windows, and sampling")
    p.add_argument("--temperature", type=nonneg_float, default=None,
                   help="default: the bundle's own (0.8 for a bundle that records none)")
    p.add_argument("--decoder", default="block_diffusion:4",
                   help="NAME[:STEPS], as `worldsim eval --decoders` takes it (default: block_diffusion:4)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default: 1)")


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
    ids, _ = held_out_ids(store, cfg, path)
    windows = select_windows(store, ids, args.episodes, max(CONTEXT + horizon, model.cfg.frames), args.seed)
    real = ev._real(windows, codec, action_tok, image_tok.cfg.grid[0], store.info.env, CONTEXT, horizon)
    if real.map_rows is None:
        raise SystemExit("this benchmark runs on Crafter stores only")
    args.temperature = bundle.play_temperature(path, args.temperature)
    decoder = ev.parse_decoder(args.decoder, args.temperature).resolve(model.cfg.objective)
    return Setup(str(path), cfg, model, image_tok, action_tok, codec, store, ids, windows, real, decoder)


# Crafter's discrete actions 1-4 move the player left, right, up, down; the player stands at
# tile (row 3, column 4) of the 9 x 7 map. Which tiles are open: worldsim/evaluation/ways.py.
TARGET_TILE = {a: ways.target_tile(a, 7, 9) for a in ways.MOVES}
STEP = {1: (0, -1), 2: (0, 1), 3: (-1, 0), 4: (1, 0)}  # a move (or scroll direction) in tiles
PLAYER = ways.player_tile(7, 9)
DAY = ways.DAY


def plain_share(frames: np.ndarray, tile: int, map_rows: int, share: float = ways.PLAIN) -> float:
    """The fraction of frames (..., H, W, 3) whose map is at least `share` one tile: a view on
    which a move hardly shows."""
    return float(np.mean(ways.top_tile_share(frames, tile, map_rows) >= share))


def training_matcher(setup: Setup, episodes: int, vote: bool) -> ways.WayMatcher:
    """The tile matcher learnt from the first `episodes` training episodes of the store (those
    not held out for the bundle)."""
    held = set(setup.ids)
    ids = [i for i in setup.store.episode_ids() if i not in held][:episodes]
    if not ids:
        raise SystemExit(f"the tile matcher learns from training episodes, and {setup.store.root} holds none "
                         "(every episode is held out)")
    return ways.WayMatcher.from_store(setup.store, ids, setup.real.tile, setup.real.map_rows, vote=vote)


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
