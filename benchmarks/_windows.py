"""What the Crafter dream benchmarks share: their common options, and the model, tokenizers and
real windows of `worldsim eval` for the same arguments (the same held-out episodes and starts)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch

from worldsim import bundle
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


def load(args: argparse.Namespace, what: str) -> Setup:
    """The bundle (`what` names it in the error when none is found) and the eval's windows."""
    torch.set_num_threads(args.threads)
    path = bundle.find_bundle(args.bundle, what)
    cfg = bundle.read_config(path)
    cpu = torch.device("cpu")
    model, image_tok = bundle.load_world_model(path, cpu), bundle.load_image_tokenizer(path, cpu)
    action_tok = action_tokenizer_from_config(cfg["action_tokenizer"])
    codec = ev.Codec(image_tok)
    store = EpisodeStore(args.data)
    ids, _ = held_out_ids(store, cfg)
    windows = select_windows(store, ids, args.episodes, max(CONTEXT + HORIZON, model.cfg.frames), args.seed)
    real = ev._real(windows, codec, action_tok, image_tok.cfg.grid[0], store.info.env, CONTEXT, HORIZON)
    if real.map_rows is None:
        raise SystemExit("this benchmark runs on Crafter stores only")
    args.temperature = bundle.play_temperature(path, args.temperature)
    decoder = ev.parse_decoder(args.decoder, args.temperature).resolve(model.cfg.objective)
    return Setup(str(path), cfg, model, image_tok, action_tok, codec, store, ids, windows, real, decoder)
