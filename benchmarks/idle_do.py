"""What does the model draw when the player presses `do` facing grass? In Crafter, nothing in view
changes there (grass may give a sapling to the inventory, and stays grass).

    python benchmarks/idle_do.py [--bundle B ...] [--data data/crafter] [--contexts 1024]
        [--temperature T] [--decoder block_diffusion:4] [--threads 2]

From real frames of the held-out episodes of the (first) bundle, at every step where the player
faces grass (it faces the way of the last move key, pressed or blocked), each bundle dreams one
frame after `do`, from the 7 real frames up to that step and the keys between. The figure is the
share of those dreams whose tile in front of the player is still grass, and the codes drawn there
instead. A player presses `do` anywhere; a store collected with `worldsim collect` before
`--idle-do` never does it facing grass (its policy works only what it can chop, mine, drink or
hit), so a model trained on one has never seen what it does there.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch
from tqdm import tqdm

from worldsim import bundle
from worldsim.commands._args import existing_dir, nonneg_float, nonneg_int, positive_int
from worldsim.data.store import EpisodeStore
from worldsim.evaluation import run as ev
from worldsim.evaluation.episodes import held_out_ids
from worldsim.evaluation.ways import facing_before, target_tile
from worldsim.inference.engine import Engine
from worldsim.tokenizers.action import action_tokenizer_from_config

DO, CONTEXT, BATCH = 5, 7, 128
MAP_ROWS = 7  # Crafter's map: the 9 x 7 tiles above the inventory


def grass_facing_contexts(store: EpisodeStore, ids: list[str], codec: ev.Codec, limit: int
                          ) -> tuple[list[tuple[torch.Tensor, torch.Tensor, int]], int]:
    """Up to `limit` (context tokens (C, N), the C-1 actions between (C-1,), the index of the tile
    the player faces) where that tile is grass, and the grass code (the most common map code)."""
    out, codes = [], []
    cols = codec.tok.cfg.grid[1]
    for eid in ids:
        ep = store.load(eid)
        toks = codec.encode(ep.frames, ep.daylight)  # (T+1, N)
        codes.append(toks[:, :MAP_ROWS * cols].reshape(-1))
        acts = np.asarray(ep.actions).reshape(len(ep.actions), -1)[:, 0]
        facing = facing_before(acts)
        for t in range(CONTEXT - 1, len(acts)):
            if facing[t]:
                r, c = target_tile(int(facing[t]), MAP_ROWS, cols)
                out.append((toks[t - CONTEXT + 1:t + 1], torch.as_tensor(acts[t - CONTEXT + 1:t]), r * cols + c))
        if len(out) >= 4 * limit:
            break
    grass = int(torch.cat(codes).bincount().argmax())
    return [x for x in out if int(x[0][-1, x[2]]) == grass][:limit], grass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=existing_dir, action="append", default=None,
                   help="repeat to compare (default: the shipped model)")
    p.add_argument("--data", type=existing_dir, default="data/crafter",
                   help="a Crafter store from `worldsim collect` (default: data/crafter)")
    p.add_argument("--contexts", type=positive_int, default=1024, help="grass-facing steps to dream from (default: 1024)")
    p.add_argument("--temperature", type=nonneg_float, default=None, help="default: each bundle's own")
    p.add_argument("--decoder", default="block_diffusion:4", help="NAME[:STEPS] (default: block_diffusion:4)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default: 2)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    paths = [str(bundle.find_bundle(b, "model to measure")) for b in (args.bundle or [None])]
    store = EpisodeStore(args.data)
    first = bundle.read_config(paths[0])
    ids, _ = held_out_ids(store, first, paths[0])
    codec = ev.Codec(bundle.load_image_tokenizer(paths[0], "cpu"))
    cases, grass = grass_facing_contexts(store, ids, codec, args.contexts)
    if not cases:
        raise SystemExit(f"no step of {args.data}'s held-out episodes faces grass")
    print(f"{len(cases)} steps facing grass in {args.data}'s held-out episodes (grass: code {grass}); "
          f"`do` pressed at each, one frame dreamed from the {CONTEXT} real frames before")
    for path in paths:
        cfg = bundle.read_config(path)
        model = bundle.load_world_model(path, "cpu")
        temperature = bundle.play_temperature(path, args.temperature)
        decoder = ev.parse_decoder(args.decoder, temperature).resolve(model.cfg.objective)
        engine = Engine(model, None, action_tokenizer_from_config(cfg["action_tokenizer"]), decoder,
                        max_sessions=BATCH, seed=args.seed)
        after: Counter[int] = Counter()
        for s in tqdm(range(0, len(cases), BATCH), desc="dream", leave=False):
            chunk = cases[s:s + BATCH]
            sessions = [engine.open(c[0], c[1], seed=args.seed + s + j) for j, c in enumerate(chunk)]
            engine.step({x: DO for x in sessions}, decode_images=False)
            for x, c in zip(sessions, chunk):
                after[int(x.last_frame.reshape(-1)[c[2]])] += 1
                x.close()
        n = sum(after.values())
        others = ", ".join(f"code {k} {v / n:.1%}" for k, v in after.most_common() if k != grass)
        print(f"{path} (T={temperature}): still grass {after[grass] / n:.1%}; drawn instead: {others or 'nothing'}")


if __name__ == "__main__":
    main()
