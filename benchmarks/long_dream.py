"""Does a long dream stay in the game? A Crafter dream of many steps, measured against the real
episode by what a player sees rather than frame by frame.

    python benchmarks/long_dream.py [--bundle B] [--data data/crafter] [--episodes 32]
        [--seed 0] [--horizon 150] [--bucket 25] [--temperature T] [--decoder block_diffusion:4]
        [--threads 2] [--out long_dream.json]

`worldsim eval` judges 15 dreamed steps against the real ones, and past the first few a dream
that invents its own terrain cannot match the real episode tile for tile. A player plays for
minutes. So this dreams `--horizon` steps from one real frame of held-out episodes under the
recorded keys (the eval's episodes, temperature and decoder), and compares the dream with the
real episode per bucket of steps, on day frames, by figures that do not need the two to agree
tile for tile:
- walks: of the steps that press a move key, the share where the view scrolls that way, counting
  only moves from a view that is not plain (a plain view's map is at least 90% one tile, and a
  scroll over it may show nothing but a creature or two; each source's own frame before the
  step); "moves shown" is their share of the moves;
- on an open way / through a wall: the same share where the tile the player walks into, in the
  frame before the step, is open / blocked. The tile is matched to its nearest day tile among
  real moves of training episodes, labelled walked or blocked (`worldsim.evaluation.ways`, which
  `worldsim eval` reports too), each frame in its own world: the dream's tile in the dream, the
  real tile in the real episode (the label of a tile with many copies is the copies' majority's).
  On the real frames these two show the matcher's errors (and creatures stepping into the way);
- open ways: the share of moves whose way is open, which says how open the world is drawn;
- plain views: the share of frames that are plain;
- tiles from nowhere per frame (`worldsim.metrics.new_tile_counts`);
- the distance (total variation) between the dream's and the real frames' histograms of map
  codes, and the most common code's share (grass);
- `do` on grass: of the `do` presses while the player faces a grass tile (it faces the way of
  the last move key, pressed or blocked, known from the first move key of the window on), the
  share after which that tile is no longer grass. In the game, nothing: grass stays grass.
A dream that stays in the game walks as often as the real player, obeys its own walls and
draws the same mix of terrain at step 150 as at step 15.

`--exact-window` checks the rolling KV cache on the way: once a session's window is full, the
cache keeps keys that were computed while older frames, now evicted, were still in view, which
training never shows (a training window's first frame sees only itself). With the flag, every
step first rebuilds each session's cache from its own last frames, exactly as a training window
reads them, at the cost of a forward over the whole window per frame.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from tqdm import tqdm

from _windows import CONTEXT, DAY, add_options, load, plain_share, training_matcher
from worldsim import metrics
from worldsim.commands._args import out_file, positive_int
from worldsim.evaluation import run as ev
from worldsim.evaluation.ways import MOVES, PLAIN, WayMatcher, facing_before, target_tile, way_counts
from worldsim.inference.common import prefill
from worldsim.inference.engine import Engine, Session
from worldsim.inference.memory import WHERE as MEMORY_WHERE, geometry_for

FIGURES = ("moves", "visible_moves", "open_way_moves", "walks", "open_way_walks", "wall_walks", "open_ways",
           "plain_views", "new_tiles_per_frame", "top_code_share", "grass_do", "grass_do_changed")
DO = 5


def facing_codes(acts: np.ndarray, before: np.ndarray, after: np.ndarray, rows: int, cols: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The code of the tile the player faces, before and after each step (B, H), from the keys
    (B, H) and the map codes before and after each step (B, H, M); -1 before the window's first
    move key, when the facing is not known."""
    facing = facing_before(acts)
    out = np.full((2, *acts.shape), -1, np.int64)
    for way in MOVES:
        r, c = target_tile(way, rows, cols)
        at = facing == way
        out[0][at], out[1][at] = before[..., r * cols + c][at], after[..., r * cols + c][at]
    return out[0], out[1]


def figures(prev: np.ndarray, nxt: np.ndarray, codes: np.ndarray, acts: np.ndarray, day: np.ndarray,
            matcher: WayMatcher, tile: int, rows: int, top_code: int, ahead: np.ndarray
            ) -> dict[str, float | int | None]:
    """One source's figures over the steps of a bucket: frames before and after each step (Q, H,
    W, 3), the map codes after it (Q, M), the keys (Q,), which steps are day (Q,) and the code of
    the tile the player faces before and after each step (2, Q)."""
    prev, nxt, codes, acts, ahead = prev[day], nxt[day], codes[day], acts[day], ahead[:, day]
    if len(prev) == 0:
        return {k: None for k in FIGURES} | {"moves": 0, "open_way_moves": 0, "grass_do": 0}
    # The moves that show (not from a plain view), split open / blocked: `worldsim eval`'s counts.
    c = {k: v.astype(bool) for k, v in way_counts(prev, nxt, acts, np.ones(len(acts), bool), matcher, tile,
                                                   rows).items()}
    move = np.isin(acts, MOVES)
    shown = c["open_moves"] | c["wall_moves"]

    def share(num: np.ndarray, den: np.ndarray) -> float | None:
        return float(num.sum() / den.sum()) if den.sum() else None

    new = metrics.new_tile_counts(torch.from_numpy(prev), torch.from_numpy(nxt), tile, rows)[0]
    grass_do = (acts == DO) & (ahead[0] == top_code)
    return {"moves": int(move.sum()), "visible_moves": share(shown, move),
            "open_way_moves": int(c["open_moves"].sum()), "walks": share(c["open_walks"] | c["wall_walks"], shown),
            "open_way_walks": share(c["open_walks"], c["open_moves"]),
            "wall_walks": share(c["wall_walks"], c["wall_moves"]),
            "open_ways": share(matcher.open(prev[move], acts[move], rows), move[move]),  # plain views too
            "plain_views": plain_share(nxt, tile, rows, PLAIN), "new_tiles_per_frame": float(new.float().mean()),
            "top_code_share": float((codes == top_code).mean()),
            "grass_do": int(grass_do.sum()), "grass_do_changed": share(grass_do & (ahead[1] != top_code), grass_do)}


class ExactWindowEngine(Engine):
    """An engine that, before every step, rebuilds the cache of each session whose window is full
    from the session's own last frames and actions (a prefill of them), so that every cached key
    is what a training window computes: slow, a check of the rolling cache, not a way to play."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.history: dict[Session, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    def open(self, context, actions, seed=None, start_step=0) -> Session:
        s = super().open(context, actions, seed=seed, start_step=start_step)
        self.history[s] = (list(self._frame_tokens(context, start_step)), list(self._action_tokens(actions)))
        return s

    def step(self, inputs, decode_images=True):
        n = self.cache.blocks  # frames in a full window, the one being drawn from excepted
        acts = {s: self._action_tokens([a])[0] for s, a in inputs.items()}  # (A,) each
        full = sorted((s for s in inputs if len(self.history[s][0]) >= n), key=lambda s: s.row)
        if full:
            frames_BCN = torch.stack([torch.stack(self.history[s][0][-n:]) for s in full])
            actions_BCA = torch.stack([torch.stack(self.history[s][1][-(n - 1):]) for s in full])
            prefill(self.model, self.cache, [s.row for s in full], frames_BCN, actions_BCA)
        out = super().step(acts, decode_images)
        for s in inputs:
            frames, actions = self.history[s]
            frames.append(s.last_frame.reshape(-1))
            actions.append(acts[s])
            del frames[:-n], actions[:-n]
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p)
    p.set_defaults(episodes=32, threads=2)
    p.add_argument("--horizon", type=positive_int, default=150, help="dreamed steps (default: 150; Crafter "
                   "episodes from `worldsim collect --steps 200` hold up to 200)")
    p.add_argument("--bucket", type=positive_int, default=25, help="steps per row of the table (default: 25)")
    p.add_argument("--library-episodes", type=positive_int, default=120,
                   help="training episodes for the tile matcher (default: 120)")
    p.add_argument("--out", type=out_file, default=None, help="write the figures to this JSON file")
    p.add_argument("--exact-window", action="store_true",
                   help="rebuild each session's cache from its own last frames before every step, as "
                        "training reads a window (slow: checks the rolling cache)")
    p.add_argument("--memory", action="store_true",
                   help="dream with world memory, as `play` does (inference/memory.py)")
    args = p.parse_args()
    w = load(args, "model to measure", horizon=args.horizon)
    real, B, H, C = w.real, len(w.windows), args.horizon, CONTEXT
    if real.light is None:
        raise SystemExit("this benchmark needs a store that records the daylight")
    t0 = time.perf_counter()
    make = ExactWindowEngine if args.exact_window else Engine
    engine = make(w.model, w.image_tok, w.action_tok, w.decoder, max_sessions=B, seed=args.seed,
                  memory=geometry_for(w.image_tok, w.action_tok, w.model.cfg.objective) if args.memory else None)
    if args.memory and engine.memory is None:
        raise SystemExit(f"{w.bundle}: {MEMORY_WHERE}")
    with tqdm(total=H, desc="dream") as bar:
        dream, dream_codes, _ = ev._rollout(engine, real, w.codec, args.seed, bar)
    seconds = time.perf_counter() - t0
    matcher = training_matcher(w, args.library_episodes, vote=True)
    cols = w.image_tok.cfg.grid[1]
    m = real.map_rows * cols  # the map's codes come first, row by row, over the inventory's
    sources = {"dream": (real.before(dream), dream, dream_codes[:, :, :m].numpy()),
               "real": (real.frames[:, C - 1:C + H - 1], real.frames[:, C:C + H],
                        real.tokens[:, C:C + H, :m].numpy())}
    acts = np.stack([np.asarray(x.actions).reshape(len(x.actions), -1)[C - 1:C - 1 + H, 0] for x in w.windows])
    day = (real.light[:, C - 1:C + H - 1] > DAY) & (real.light[:, C:C + H] > DAY)  # (B, H)
    K = int(max(dream_codes.max(), real.tokens.max())) + 1
    top_code = int(np.bincount(sources["real"][2][day].ravel(), minlength=K).argmax())
    before = {"dream": np.concatenate([real.tokens[:, C - 1:C, :m].numpy(), sources["dream"][2][:, :-1]], 1),
              "real": real.tokens[:, C - 1:C + H - 1, :m].numpy()}
    ahead = {k: np.stack(facing_codes(acts, before[k], sources[k][2], real.map_rows, cols)) for k in sources}

    rows = []
    spans = [slice(s, min(H, s + args.bucket)) for s in range(0, H, args.bucket)]
    for sl in spans + ([slice(0, H)] if len(spans) > 1 else []):  # and all steps, last
        flat = lambda x: x[:, sl].reshape(-1, *x.shape[2:])  # noqa: E731
        row = {"steps": [sl.start + 1, sl.stop], "day_frames": int(day[:, sl].sum())}
        for name, (prev, nxt, codes) in sources.items():
            row[name] = figures(flat(prev), flat(nxt), flat(codes), flat(acts), day[:, sl].reshape(-1),
                                matcher, real.tile, real.map_rows, top_code,
                                ahead[name][:, :, sl].reshape(2, -1))
        hist = [np.bincount(flat(sources[k][2])[day[:, sl].reshape(-1)].ravel(), minlength=K) for k in sources]
        row["code_tv"] = (float(0.5 * np.abs(hist[0] / hist[0].sum() - hist[1] / hist[1].sum()).sum())
                          if hist[0].sum() and hist[1].sum() else None)
        rows.append(row)

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.0%}"

    def tenth(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    def pair(row: dict, key: str, fmt=pct) -> str:
        return f"{fmt(row['dream'][key])} / {fmt(row['real'][key])}"

    print(f"{w.bundle}, {B} windows of held-out episodes (seed {args.seed}), {args.decoder} at "
          f"T={args.temperature}{', exact window' if args.exact_window else ''}"
          f"{', world memory' if args.memory else ''}: {H} dreamed steps "
          f"from 1 real frame in {seconds:.0f} s; "
          f"dream / real, day frames, tile matcher of {len(matcher)} real moves")
    head = ["steps", "day frames", "moves", "moves shown", "walks", "on an open way (moves)", "through a wall",
            "open ways", "plain views", "tiles from nowhere", "top code", "codes TV",
            "do on grass: changed (presses)"]
    print(" | ".join(head))
    for r in rows:
        print(" | ".join([f"{r['steps'][0]}-{r['steps'][1]}", str(r["day_frames"]),
                          str(r["real"]["moves"]),
                          pair(r, "visible_moves"), pair(r, "walks"),
                          f"{pair(r, 'open_way_walks')} "
                          f"({r['dream']['open_way_moves']} / {r['real']['open_way_moves']})",
                          pair(r, "wall_walks"), pair(r, "open_ways"),
                          pair(r, "plain_views"),
                          pair(r, "new_tiles_per_frame", lambda x: "-" if x is None else f"{x:.2f}"),
                          pair(r, "top_code_share"), "-" if r["code_tv"] is None else f"{r['code_tv']:.3f}",
                          f"{pair(r, 'grass_do_changed', tenth)} ({r['dream']['grass_do']} / {r['real']['grass_do']})"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"bundle": w.bundle, "data": args.data, "episodes": B, "seed": args.seed,
                       "decoder": args.decoder, "temperature": args.temperature, "horizon": H,
                       "exact_window": args.exact_window, "memory": args.memory,
                       "seconds": round(seconds, 1), "top_code": top_code, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
