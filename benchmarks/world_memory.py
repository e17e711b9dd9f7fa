"""Walk away and come back: does the dream show the same place again? With and without world memory.

    python benchmarks/world_memory.py [--bundle B] [--data data/crafter] [--episodes 64]
        [--seed 0] [--out-steps 10] [--temperature T] [--decoder block_diffusion:4] [--threads 2]

From the first frame of each of the eval's held-out windows, the player walks `--out-steps`
tiles one way and as many back (the way turns from window to window: right, left, down, up),
three times over:
- in the real game (the window's episode replayed from its collection seed to that frame, under
  the same keys; a Crafter store from `worldsim collect`), its frames tokenized as the model's;
- in the dream without world memory (the model remembers its window only);
- in the dream with world memory (`inference/memory.py`).
Each source's frames go through the same tracker (`TileMemory` without recall): it finds the
view's move between frames, and counts the tiles that come into view at a place seen before
and, of those, the ones drawn otherwise than when last seen ("redrawn"). In the real game that
is what changed while out of view (creatures, the light at night); in a dream without memory,
also what it forgot. The tracker's moves in the real game are checked against the player's true
position. Beside: the share of move keys after which the view moved that way (walks), and the
share of windows whose view ends where it started with each tile as it was at the start
(counting only windows whose view ends at the start place).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from tqdm import tqdm

from _windows import CONTEXT, add_options, load
from worldsim.commands._args import nonneg_int, out_file, positive_int
from worldsim.evaluation.game import NotReplayable, check_store, replay
from worldsim.inference.engine import Engine
from worldsim.inference.memory import MOVES, WHERE, Geometry, TileMemory, geometry_for

WAYS = ("move_right", "move_left", "move_down", "move_up")
BACK = {"move_right": "move_left", "move_left": "move_right", "move_down": "move_up", "move_up": "move_down"}


def keys_for(i: int, out: int, names: tuple[str, ...]) -> list[int]:
    way = WAYS[i % len(WAYS)]
    return [names.index(way)] * out + [names.index(BACK[way])] * out


def track(frames_TN: torch.Tensor, keys: list[int], names: tuple[str, ...], geo: Geometry) -> dict:
    """The tracker's counts over one source's frames (T+1, N), the first the start."""
    mem = TileMemory(geo, recall=False)
    mem.reset(frames_TN[0])
    moves, walks, shifts = 0, 0, []
    for t, key in enumerate(keys):
        want = MOVES.get(names[key])
        before = mem.pos
        mem.step(frames_TN[t + 1], want)
        moved = (mem.pos[0] - before[0], mem.pos[1] - before[1])
        shifts.append(moved)
        if want is not None:
            moves += 1
            walks += moved == want
    view = frames_TN[-1].reshape(geo.rows, geo.cols)[:geo.map_rows]
    start = frames_TN[0].reshape(geo.rows, geo.cols)[:geo.map_rows]
    home = mem.pos == (0, 0) and not mem.lost
    keep = torch.ones_like(view, dtype=torch.bool)
    keep[geo.centre] = False
    same = float((view == start)[keep].float().mean()) if home else None
    return {"known": mem.known, "redrawn": mem.redrawn, "lost": mem.lost, "moves": moves, "walks": walks,
            "home": home, "same_at_home": same, "shifts": shifts}


def check_tracker(w, geo: Geometry, n: int) -> dict:
    """The tracker on whole recorded episodes (replayed for the player's true position), with its
    margin and without: how often the move it finds is the player's."""
    from worldsim.data.collect import replay_episode
    from worldsim.inference.memory import MARGIN

    ids = w.store.episode_ids()
    n = min(n, len(ids))
    ids = [ids[round(i * (len(ids) - 1) / max(n - 1, 1))] for i in range(n)]
    names = w.store.info.action_space.names
    right = {MARGIN: 0, 0.0: 0}
    steps = 0
    for ep in tqdm(ids, desc="tracker"):
        e = w.store.load(ep)
        _, pos = replay_episode(w.store, ep, len(e.frames) - 1)
        light = {"light": torch.as_tensor(e.daylight)} if e.daylight is not None else {}
        codes = w.image_tok.encode(torch.as_tensor(e.frames), **light).cpu()
        true = [(b[1] - a[1], b[0] - a[0]) for a, b in zip(pos, pos[1:])]  # Crafter's pos is (x, y)
        steps += len(true)
        for margin in right:
            mem = TileMemory(geo, recall=False, margin=margin)
            mem.reset(codes[0])
            for t, a in enumerate(np.asarray(e.actions).reshape(-1)):
                before = mem.pos
                mem.step(codes[t + 1], MOVES.get(names[int(a)]))
                right[margin] += (mem.pos[0] - before[0], mem.pos[1] - before[1]) == true[t]
    print(f"tracker on {len(ids)} recorded episodes ({steps} steps): the player's true move found on "
          + ", ".join(f"{right[m]} ({right[m] / steps:.2%}) with margin {m:g}" for m in right))
    return {"episodes": len(ids), "steps": steps, **{f"right_margin_{m:g}": right[m] for m in right}}


def write_gif(path: str, i: int, w, sources: dict[str, torch.Tensor], T: int) -> None:
    """Window i's frames from every source, decoded in the game's light, side by side."""
    import imageio.v3 as iio

    from worldsim.evaluation.media import side_by_side

    tok = w.image_tok
    step0 = w.windows[i].start + CONTEXT - 1
    light = {"light": torch.as_tensor(tok.daylight_at(np.arange(step0, step0 + T + 1)))} \
        if getattr(tok, "uses_light", False) else {}
    columns = {name: tok.decode(frames[i], **light).cpu().numpy() for name, frames in sources.items()}
    columns = {"game": columns["game"], "no memory": columns["dream"], "memory": columns["dream with memory"]}
    clip = side_by_side(columns, scale=3, context=1)
    iio.imwrite(path, np.concatenate([clip, clip[-1:].repeat(5, 0)]), duration=250, loop=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p)
    p.set_defaults(threads=2)
    p.add_argument("--out-steps", type=positive_int, default=10,
                   help="tiles walked away before walking back (default: 10; the shipped model's window "
                        "is 8 frames)")
    p.add_argument("--out", type=out_file, default=None, help="write the figures to this JSON file")
    p.add_argument("--tracker-episodes", type=nonneg_int, default=0,
                   help="also check the tracker on this many recorded episodes of the store, spread over it, "
                        "against the player's true position (replayed), with and without its margin (default: 0)")
    p.add_argument("--gif", type=out_file, default=None,
                   help="write, of the windows where all three come home, the one the dream without memory "
                        "remembers worst as a GIF: game | dream | dream with memory")
    args = p.parse_args()
    w = load(args, "model to measure", horizon=2 * args.out_steps)
    B, names = len(w.windows), w.action_tok.space.names
    tok = w.image_tok
    geo = geometry_for(tok, w.action_tok, w.model.cfg.objective)
    if geo is None:
        raise SystemExit(f"{w.bundle}: {WHERE}")
    try:
        check_store(w.store)  # the real game's column replays the store's episodes
    except NotReplayable as e:
        raise SystemExit(str(e)) from None
    keys = [keys_for(i, args.out_steps, names) for i in range(B)]
    T = 2 * args.out_steps

    # The real game under the same keys, tokenized as the model reads frames.
    game = torch.zeros(B, T + 1, tok.cfg.tokens_per_frame, dtype=torch.long)
    true_moves = []
    for i, win in enumerate(tqdm(w.windows, desc="game")):
        env, _ = replay(w.store, win.episode, win.start + CONTEXT - 1, np.asarray(win.frames[:CONTEXT]))
        frames, light = [np.asarray(win.frames[CONTEXT - 1])], [env.daylight]
        pos = [tuple(env._env._player.pos)]
        for k in keys[i]:
            frames.append(env.step(k)[0])
            light.append(env.daylight)
            pos.append(tuple(env._env._player.pos))
        game[i] = tok.encode(torch.as_tensor(np.stack(frames)), light=torch.as_tensor(light)).cpu()
        # Crafter's pos is (x, y): a column, then a row.
        true_moves.append([(b[1] - a[1], b[0] - a[0]) for a, b in zip(pos, pos[1:])])
    start = w.real.tokens[:, CONTEXT - 1]  # (B, N) the start frame's codes
    assert torch.equal(game[:, 0], start), "the replayed start frame does not tokenize as the store's"

    sources = {"game": game}
    seconds = {}
    for name, geometry in (("dream", None), ("dream with memory", geo)):
        engine = Engine(w.model, tok, w.action_tok, w.decoder, max_sessions=B, seed=args.seed, memory=geometry)
        sessions = [engine.open(start[i:i + 1], [], seed=args.seed * 1_000_003 + i) for i in range(B)]
        out = torch.zeros(B, T + 1, tok.cfg.tokens_per_frame, dtype=torch.long)
        out[:, 0] = start
        t0 = time.perf_counter()
        for t in tqdm(range(T), desc=name):
            engine.step({s: keys[i][t] for i, s in enumerate(sessions)}, decode_images=False)
            for i, s in enumerate(sessions):
                out[i, t + 1] = s.last_frame[0].cpu()
        seconds[name] = time.perf_counter() - t0
        sources[name] = out

    tracker = check_tracker(w, geo, args.tracker_episodes) if args.tracker_episodes else None

    results, per_source = {}, {}
    for name, frames in sources.items():
        per = per_source[name] = [track(frames[i], keys[i], names, geo) for i in range(B)]
        tot = {k: sum(r[k] for r in per) for k in ("known", "redrawn", "lost", "moves", "walks")}
        homes = [r["same_at_home"] for r in per if r["home"]]
        tot["home"] = len(homes)
        tot["home_same"] = float(np.mean(homes)) if homes else None
        tot["home_all_same"] = sum(h == 1.0 for h in homes)
        if name == "game":
            tot["tracker_right"] = sum(a == b for r, m in zip(per, true_moves) for a, b in zip(r["shifts"], m))
            tot["tracker_steps"] = B * T
        results[name] = tot

    print(f"{w.bundle}, {B} windows of held-out episodes (seed {args.seed}), {args.decoder} at "
          f"T={args.temperature}: {args.out_steps} tiles away and back ({T} steps) from one real frame")
    g = results["game"]
    print(f"tracker on the real game: {g['tracker_right']} of {g['tracker_steps']} moves as the player's "
          f"true position moved")
    print("source | walks (move keys) | tiles back in view at a place seen before | redrawn | "
          "windows home / every tile as at the start | map tiles as at the start, home | lost")
    for name, r in results.items():
        walks = f"{r['walks'] / r['moves']:.1%} ({r['moves']})" if r["moves"] else "-"
        redrawn = f"{r['redrawn'] / r['known']:.1%}" if r["known"] else "-"
        same = "-" if r["home_same"] is None else f"{r['home_same']:.1%}"
        print(f"{name} | {walks} | {r['known']} | {redrawn} | {r['home']} / {r['home_all_same']} | {same} | {r['lost']}")
    for name, s in seconds.items():
        print(f"{name}: {s:.1f} s for {T} steps of {B} sessions")
    # Memory's own cost, on the host: its tracker and map over every frame of the dream.
    frames = sources["dream with memory"]
    t0 = time.perf_counter()
    for i in range(B):
        mem = TileMemory(geo)
        mem.reset(frames[i, 0])
        for t, k in enumerate(keys[i]):
            mem.step(frames[i, t + 1], MOVES.get(names[k]))
    ms = (time.perf_counter() - t0) * 1000 / (B * T)
    seconds["memory_ms_per_frame"] = ms
    print(f"world memory alone: {ms:.3f} ms a frame per session ({B * T} frames)")
    if args.gif:
        home = [i for i in range(B) if all(per_source[k][i]["home"] for k in sources)]
        if not home:
            print("no window came home in all three: no GIF written")
        else:
            # The one where forgetting shows most: the dream without memory furthest from the start.
            i = min(home, key=lambda j: per_source["dream"][j]["same_at_home"])
            write_gif(args.gif, i, w, sources, T)
            print(f"GIF of window {i}: {args.gif}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results, "seconds": seconds, "tracker": tracker}, f, indent=1)


if __name__ == "__main__":
    main()
