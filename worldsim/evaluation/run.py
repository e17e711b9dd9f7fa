"""`evaluate`: dream from real context with the recorded actions, on every decoder, and measure
the dream against the real game beside the copy-last-frame baseline and the tokenizer's ceiling.

One run, all episodes as one batch through the engine per decoder:
1. windows of real frames from held-out episodes (`episodes.py`);
2. per decoder, a rollout of `horizon` frames from `context` real frames (timed: ms per frame,
   image decode included), and, teacher forced, one frame ahead from real context at every step;
3. per frame, against the real frame: squared error, SSIM, changed tiles, changed tokens, scroll
   (worldsim.metrics); and on Crafter, against the frame's own world, whether a move key on an
   open way scrolled it (`ways.py`); pooled per horizon step and overall, day and night frames apart, with
   the drift from the first quarter of the horizon to the last;
4. on Crafter stores from `worldsim collect`, the same measures of the game itself replayed from
   the context with the unseen world redrawn (`game.py`): what the game's own rules score;
5. the tokenizer's code flicker on the real frames, the action-sensitivity gap
   (`sensitivity.py`), and, with an inverse dynamics model, its F1 on the dream against its F1
   on the real frames;
6. a report folder (`report.py`, `media.py`).
"""

from __future__ import annotations

import hashlib
import inspect
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from worldsim import bundle, metrics
from worldsim.data.store import EpisodeStore
from worldsim.errors import WorldsimError
from worldsim.evaluation.episodes import held_out_ids, select_windows
from worldsim.evaluation.game import NotReplayable, game_dreams
from worldsim.evaluation.sensitivity import action_sensitivity
from worldsim.evaluation import ways as ways_mod
from worldsim.inference.engine import DecoderSettings, Engine, valid_decoders
from worldsim.inference.memory import WHERE as MEMORY_WHERE, geometry_for
from worldsim.inference.sampling import SamplingSettings
from worldsim.tokenizers.action import action_tokenizer_from_config


@dataclass
class EvalSettings:
    episodes: int = 16  # MineWorld's protocol: 16 episodes, 1 context frame, 15 generated
    context: int = 1
    horizon: int = 15
    decoders: list[str] = field(default_factory=list)  # specs; empty: every valid decoder
    seed: int = 0
    temperature: float = 0.0  # greedy by default: the dream most likely under the model
    # Sampling draws of every rollout (and of the game), pooled: at 64 windows one draw's scroll
    # agreement spreads by about 3 points from draw to draw. Draw 0 is the single draw's.
    draws: int = 1
    videos: int = 4  # episodes drawn side by side (real | each decoder)
    teacher_forced: bool = True  # also dream one frame ahead from real context at every step
    game: bool = True  # Crafter stores from `worldsim collect`: the game itself as a reference (game.py)
    memory: bool = False  # world memory (inference/memory.py): the dream shows again what it drew at a place
    device: str = "auto"


# -- decoders ----------------------------------------------------------------------------------
def parse_decoder(spec: str, temperature: float = 0.0) -> DecoderSettings:
    """`ar`, `diagonal:W` or `block_diffusion:K`, the last optionally followed by `:tT` (a
    confidence threshold), `:gW` (action guidance) and `:peak` (keep the tokens at the most
    peaked positions rather than the most probable of those drawn)."""
    parts = spec.strip().split(":")
    name, rest = parts[0], parts[1:]
    sampling = SamplingSettings(temperature=temperature)
    try:
        if name == "ar" and not rest:
            return DecoderSettings("ar", sampling=sampling)
        if name == "diagonal" and len(rest) <= 1:
            return DecoderSettings("diagonal", window=int(rest[0]) if rest else 2, sampling=sampling)
        if name == "block_diffusion" and len(rest) <= 4:
            steps = int(rest[0]) if rest else 4
            extra: dict[str, Any] = {"t": None, "g": 0.0, "peak": False}
            for part in rest[1:]:
                key = "peak" if part == "peak" else part[:1]
                if key not in extra or extra[key]:
                    raise ValueError
                extra[key] = True if key == "peak" else float(part[1:])
            return DecoderSettings("block_diffusion", steps=steps, threshold=extra["t"],
                                   guidance=extra["g"], peak=extra["peak"],
                                   sampling=sampling)
    except ValueError:
        pass
    raise WorldsimError(f"bad decoder {spec!r}: use ar, diagonal:W or block_diffusion:K[:tT][:gW][:peak] "
                        "(for example diagonal:2, block_diffusion:8:t0.9, block_diffusion:4:g1)")


def decoder_label(d: DecoderSettings) -> str:
    if d.name == "diagonal":
        return f"diagonal:{d.window}"
    if d.name == "block_diffusion":
        return (f"block_diffusion:{d.steps}" + (f":t{d.threshold:g}" if d.threshold is not None else "")
                + (f":g{d.guidance:g}" if d.guidance else "") + (":peak" if d.peak else ""))
    return d.name


def default_decoders(objective: str) -> list[str]:
    return [decoder_label(DecoderSettings(n).resolve(objective)) for n in valid_decoders(objective)]


# -- the image tokenizer, with daylight where it takes it ---------------------------------------
class Codec:
    """encode/decode through the bundle's image tokenizer, passing the frames' daylight to a
    tokenizer that takes it (`uses_light`, or a `light` parameter) and not to one that does not."""

    def __init__(self, tokenizer: Any, batch: int = 256):
        self.tok, self.batch = tokenizer, batch
        self.uses_light = bool(getattr(tokenizer, "uses_light", False)) or \
            "light" in inspect.signature(tokenizer.encode).parameters

    def _kw(self, light_B: np.ndarray | None, i: int) -> dict[str, Any]:
        if not self.uses_light or light_B is None:
            return {}
        return {"light": torch.as_tensor(light_B[i:i + self.batch], dtype=torch.float32)}

    def encode(self, frames_BHWC: np.ndarray, light_B: np.ndarray | None = None) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> int64 codes (B, N) on the CPU."""
        return torch.cat([self.tok.encode(torch.from_numpy(np.ascontiguousarray(frames_BHWC[i:i + self.batch])),
                                          **self._kw(light_B, i)).cpu()
                          for i in range(0, len(frames_BHWC), self.batch)]).long()

    def decode(self, codes_BN: torch.Tensor, light_B: np.ndarray | None = None) -> np.ndarray:
        """codes (B, N) -> uint8 (B, H, W, 3)."""
        return torch.cat([self.tok.decode(codes_BN[i:i + self.batch], **self._kw(light_B, i)).cpu()
                          for i in range(0, len(codes_BN), self.batch)]).numpy()


# -- per-frame measurements --------------------------------------------------------------------
def frame_stats(real_prev: np.ndarray, real: np.ndarray, gen_prev: np.ndarray, gen: np.ndarray,
                tile: int, map_rows: int | None, tok_prev: torch.Tensor | None = None,
                tok_real: torch.Tensor | None = None, tok_gen: torch.Tensor | None = None
                ) -> dict[str, np.ndarray]:
    """Every per-frame count for frames (B, S, H, W, 3) and tokens (B, S, N): (B, S) arrays."""
    b, s = real.shape[:2]

    def flat(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x.reshape(b * s, *x.shape[2:])))

    rp, r, gp, g = flat(real_prev), flat(real), flat(gen_prev), flat(gen)
    out = {"se": metrics.mse(g, r), "ssim": metrics.ssim(g, r)}
    out["tile_hit"], out["tile_changed"] = metrics.changed_tile_counts(rp, r, g, tile)
    if tok_gen is not None:
        out["tok_hit"], out["tok_changed"] = metrics.changed_token_counts(
            tok_prev.flatten(0, 1), tok_real.flatten(0, 1), tok_gen.flatten(0, 1))
    out["new_tiles"] = metrics.new_tile_counts(gp, g, tile, map_rows)[0]  # pooled per frame
    if map_rows is not None:
        out.update(metrics.scroll_counts(rp, r, gp, g, tile, map_rows))
    return {k: v.reshape(b, s).double().numpy() for k, v in out.items()}


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def pool(stats: dict[str, np.ndarray], sel: np.ndarray) -> dict[str, Any]:
    """Pool per-frame stats over the selected frames (a bool mask of their shape)."""
    n = int(sel.sum())
    if n == 0:
        return {"frames": 0}
    out: dict[str, Any] = {"frames": n,
                           "psnr": float(metrics.psnr_from_mse(float(stats["se"][sel].mean()))),
                           "ssim": float(stats["ssim"][sel].mean()),
                           "changed_tile_acc": _ratio(stats["tile_hit"][sel].sum(), stats["tile_changed"][sel].sum()),
                           "changed_tiles": int(stats["tile_changed"][sel].sum())}
    if "new_tiles" in stats:
        out["new_tiles_per_frame"] = float(stats["new_tiles"][sel].mean())
    if "tok_hit" in stats:
        out["changed_token_acc"] = _ratio(stats["tok_hit"][sel].sum(), stats["tok_changed"][sel].sum())
    if "agree" in stats:
        out["scroll_agreement"] = _ratio(stats["agree"][sel].sum(), stats["real_scroll"][sel].sum())
        out["false_scroll"] = _ratio(stats["false_scroll"][sel].sum(), stats["real_still"][sel].sum())
        out["real_scroll_steps"] = int(stats["real_scroll"][sel].sum())
    if "open_moves" in stats:  # Crafter, with a tile matcher: the keys in the dream's own world
        out["own_way_follow"] = _ratio(stats["open_walks"][sel].sum(), stats["open_moves"][sel].sum())
        out["wall_walks"] = _ratio(stats["wall_walks"][sel].sum(), stats["wall_moves"][sel].sum())
        out["open_way_moves"] = int(stats["open_moves"][sel].sum())
    return out


DRIFT_KEYS = ("psnr", "ssim", "changed_tile_acc", "changed_token_acc", "scroll_agreement", "false_scroll",
              "own_way_follow")


def default_out(bundle_dir: str | Path) -> Path:
    """Where a report goes without --out: BUNDLE-eval beside the bundle."""
    b = Path(bundle_dir).resolve()
    return b.parent / f"{b.name}-eval"


def flicker_pairs(night_BT: np.ndarray) -> dict[str, np.ndarray | None]:
    """Which consecutive frame pairs (B * (T-1),) each flicker subset counts: a pair is a day
    pair only when both its frames are day (a night frame's noise flips codes of still tiles,
    and a pair across dawn or dusk would charge it to the day figure), night otherwise."""
    pair_night = (night_BT[:, :-1] | night_BT[:, 1:]).reshape(-1)
    return {"all": None, "day": ~pair_night, "night": pair_night}


def summarise(stats: dict[str, np.ndarray], night_BS: np.ndarray) -> dict[str, Any]:
    """Per subset (all, day, night): overall, per horizon step, and drift (last quarter of the
    horizon minus the first)."""
    b, s = night_BS.shape
    q = max(1, s // 4)
    steps = np.arange(s)[None, :].repeat(b, 0)
    out = {}
    for subset, sel in (("all", np.ones_like(night_BS)), ("day", ~night_BS), ("night", night_BS)):
        overall = pool(stats, sel)
        if overall["frames"] == 0:
            out[subset] = {"overall": overall}
            continue
        per_step = [pool(stats, sel & (steps == t)) for t in range(s)]
        first, last = pool(stats, sel & (steps < q)), pool(stats, sel & (steps >= s - q))
        # a horizon of one step has no first and last quarter apart: no drift, not a drift of 0
        drift = {k: (last[k] - first[k]) if s > 1 and last.get(k) is not None and first.get(k) is not None
                 else None for k in DRIFT_KEYS if k in overall}
        out[subset] = {"overall": overall, "drift": drift,
                       "per_step": {k: [p.get(k) for p in per_step] for k in overall if k != "frames"}}
    return out


# -- provenance --------------------------------------------------------------------------------
def bundle_hash(folder: str | Path) -> str:
    """sha256 over the bundle's config.json and weights (not its training state)."""
    h = hashlib.sha256()
    folder = Path(folder)
    for p in sorted(folder.glob("*")):
        if p.name == "config.json" or (p.suffix == ".safetensors" and not p.name.startswith("train_state")):
            h.update(p.name.encode())
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def code_version() -> dict[str, Any]:
    from worldsim import __version__

    out: dict[str, Any] = {"worldsim": __version__}
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode == 0:
            out["commit"] = commit.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            out["dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    out["torch"] = torch.__version__
    return out


# -- the run -----------------------------------------------------------------------------------
def _open(engine: Engine, context, actions, seed: int, start_step: int):
    # Engines that learn the daylight clock take the game step of the first context frame.
    if "start_step" in inspect.signature(engine.open).parameters:
        return engine.open(context, actions, seed=seed, start_step=start_step)
    return engine.open(context, actions, seed=seed)


def _tokens_of(session, image: np.ndarray, codec: Codec, light: float | None) -> torch.Tensor:
    """The image tokens the session just dreamed (N,), or the image's own codes if the session
    does not expose them."""
    last = getattr(session, "last_frame", None)
    if last is not None:
        return last.reshape(-1).cpu().long()
    return codec.encode(image[None], None if light is None else np.array([light]))[0]


@dataclass
class Real:
    """The real windows, as arrays the measurements share (B windows of T frames)."""
    windows: list  # of episodes.Window
    frames: np.ndarray  # (B, T, H, W, 3) uint8
    light: np.ndarray | None  # (B, T) daylight, None where the store records none
    night: np.ndarray  # (B, T) bool
    actions: torch.Tensor  # (B, T-1, A) action tokens
    tokens: torch.Tensor  # (B, T, N) image codes of the real frames
    context: int
    horizon: int
    tile: int  # pixels per token side
    map_rows: int | None  # tile rows of the scrolling map (Crafter), None: no scroll measure
    # Crafter: the keys in the dream's own world (ways.py), where a tile matcher was built
    ways: ways_mod.WayMatcher | None = None
    keys: np.ndarray | None = None  # (B, T-1) the recorded action ids

    @property
    def shape(self) -> tuple[int, ...]:
        return self.frames.shape[2:]

    def light_at(self, i: int, t: int) -> float | None:
        return None if self.light is None else float(self.light[i, t])

    def light_of(self, ts: slice) -> np.ndarray | None:
        """(B * frames,) daylight of frames `ts` of every window, or None."""
        return None if self.light is None else self.light[:, ts].reshape(-1)

    def before(self, gen: np.ndarray) -> np.ndarray:
        """The frame before each generated horizon frame (B, H, ...): the last context frame,
        then the generated frames but the last."""
        return np.concatenate([self.frames[:, self.context - 1:self.context], gen[:, :-1]], 1)

    def judged(self, drawn: list[tuple[np.ndarray, torch.Tensor | None]]) -> dict[str, Any]:
        """{"rollout": figures pooled over the draws (frames (B, H, ...), tokens or None)} and,
        where there are several, {"rollout_draws": each draw's figures over all frames}."""
        pooled, each = self.pooled_stats([(self.before(g), g, t) for g, t in drawn])
        return {"rollout": pooled, **({"rollout_draws": each} if len(drawn) > 1 else {})}

    def stats(self, gen_prev: np.ndarray, gen: np.ndarray, tok_gen: torch.Tensor | None = None
              ) -> dict[str, Any]:
        """Every measurement of generated horizon frames (B, H, ...) against the real ones,
        summarised per subset (all, day, night)."""
        return self.pooled_stats([(gen_prev, gen, tok_gen)])[0]

    def pooled_stats(self, draws: list[tuple[np.ndarray, np.ndarray, torch.Tensor | None]]
                     ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """`stats` of several draws of the same windows, each (previous frames, frames, tokens or
        None), pooled as if each draw were more windows; and each draw's figures over all frames."""
        C, H = self.context, self.horizon
        tok_prev, tok_real = self.tokens[:, C - 1:C + H - 1], self.tokens[:, C:C + H]
        per = [frame_stats(self.frames[:, C - 1:C + H - 1], self.frames[:, C:C + H], gen_prev, gen,
                           self.tile, self.map_rows, tok_prev if tok_gen is not None else None,
                           tok_real if tok_gen is not None else None, tok_gen)
               for gen_prev, gen, tok_gen in draws]
        if self.ways is not None:
            keys = self.keys[:, C - 1:C + H - 1]
            day = np.ones(keys.shape, bool) if self.light is None else \
                (self.light[:, C - 1:C + H - 1] > ways_mod.DAY) & (self.light[:, C:C + H] > ways_mod.DAY)
            for p, (gen_prev, gen, _) in zip(per, draws):
                p.update(ways_mod.way_counts(gen_prev, gen, keys, day, self.ways, self.tile, self.map_rows))
        night = self.night[:, C:C + H]
        st = {k: np.concatenate([p[k] for p in per]) for k in per[0]}
        return summarise(st, np.tile(night, (len(draws), 1))), [pool(p, np.ones_like(night)) for p in per]


def draw_seed(seed: int, draw: int, windows: int) -> int:
    """The sampling seed of draw `draw` (window i samples from this + i): draw 0 is `seed`
    itself, and no two draws' windows share a seed."""
    return seed + draw * max(1000, windows)


def _real(windows: list, codec: Codec, action_tok: Any, grid_rows: int, env: str, context: int,
          horizon: int) -> Real:
    frames = np.stack([w.frames for w in windows])  # (B, T, H, W, 3)
    b, t = frames.shape[:2]
    has_light = all(w.daylight is not None for w in windows)
    light = np.stack([w.daylight for w in windows]) if has_light else None
    night = light < metrics.NIGHT if light is not None else np.zeros((b, t), bool)
    actions = torch.from_numpy(np.stack([action_tok.encode_array(w.actions) for w in windows])).long()
    tokens = codec.encode(frames.reshape(-1, *frames.shape[2:]),
                          None if light is None else light.reshape(-1)).view(b, t, -1)
    # Crafter's view: 7 rows of map over 2 rows of inventory (at 9 rows of tiles).
    map_rows = (grid_rows * 7) // 9 if env == "crafter" else None
    return Real(windows, frames, light, night, actions, tokens, context, horizon,
                frames.shape[2] // grid_rows, map_rows)


def _attach_ways(real: Real, store: EpisodeStore, windows: list) -> dict[str, Any] | str:
    """On Crafter, the tile matcher that judges the keys in each source's own world (ways.py),
    learnt from the moves of episodes not being judged; what it was learnt from, or why not."""
    if store.info.env != "crafter" or real.map_rows is None:
        return "not computed (Crafter stores only)"
    judged = {w.episode for w in windows}
    ids = ways_mod.library_ids(store, sorted(judged))
    try:
        matcher = ways_mod.WayMatcher.from_store(store, ids, real.tile, real.map_rows)
    except ValueError:
        return "not computed: no move on a day frame in the store to learn which tiles are open"
    real.ways = matcher
    real.keys = np.stack([np.asarray(w.actions).reshape(len(w.actions), -1)[:, 0] for w in windows])
    return {"library_episodes": len(ids) - len(matcher.skipped), "library_moves": len(matcher),
            "library_walked": float(matcher.walked.mean()), "library_unreadable": matcher.skipped,
            "library_judged_too": bool(judged & set(ids))}


def _rollout(engine: Engine, real: Real, codec: Codec, seed: int, bar: tqdm
             ) -> tuple[np.ndarray, torch.Tensor, dict[str, Any]]:
    """C real frames, then H dreamed ones under the recorded actions, all windows as one batch:
    images (B, H, ...), tokens (B, H, N) and the speed of the batched steps."""
    C, H, B = real.context, real.horizon, len(real.windows)
    acts = real.actions
    sessions = [_open(engine, real.tokens[i, :C], acts[i, :C - 1], seed + i, real.windows[i].start)
                for i in range(B)]
    images = np.zeros((B, H, *real.shape), np.uint8)
    toks = torch.zeros(B, H, real.tokens.shape[-1], dtype=torch.long)
    step_ms, passes, decode_ms = [], [], []
    for t in range(H):
        t0 = time.perf_counter()
        res = engine.step({sess: acts[i, C - 1 + t] for i, sess in enumerate(sessions)})
        step_ms.append((time.perf_counter() - t0) * 1000)
        for i, sess in enumerate(sessions):
            img, stats = res[sess]
            images[i, t] = img
            toks[i, t] = _tokens_of(sess, img, codec, real.light_at(i, C + t))
        passes.append(stats.passes)
        decode_ms.append(stats.decode_ms)
        bar.update(1)
    for sess in sessions:
        sess.close()
    # The first step pays for warm-up (allocations, kernel selection): timed apart.
    timed = step_ms[1:] if len(step_ms) > 1 else step_ms  # one step: the warm-up alone (steps_timed says)
    ms = np.array(timed) / B
    speed = {"ms_per_frame_median": float(np.median(ms)), "ms_per_frame_p95": float(np.percentile(ms, 95)),
             "frames_per_s": float(1000 / np.median(ms)), "batch": B,
             "ms_per_batch_step_median": float(np.median(timed)), "first_step_ms": step_ms[0],
             "steps_timed": len(timed), "passes_per_frame": float(np.mean(passes)),
             "decode_ms_per_batch_step": float(np.median(decode_ms)), "device": str(engine.device)}
    return images, toks, speed


def _teacher_forced(engine: Engine, real: Real, codec: Codec, seed: int, max_context: int, bar: tqdm
                    ) -> tuple[np.ndarray, torch.Tensor]:
    """At every horizon step, one frame dreamed from the real frames before it (up to
    `max_context` of them): dynamics without compounding error. Images (B, H, ...), tokens (B, H, N)."""
    C, H, B = real.context, real.horizon, len(real.windows)
    acts = real.actions
    images = np.zeros((B, H, *real.shape), np.uint8)
    toks = torch.zeros(B, H, real.tokens.shape[-1], dtype=torch.long)
    for t in range(H):
        first = max(0, C + t - max_context)
        sessions = [_open(engine, real.tokens[i, first:C + t], acts[i, first:C + t - 1], seed + i,
                          real.windows[i].start + first) for i in range(B)]
        res = engine.step({sess: acts[i, C - 1 + t] for i, sess in enumerate(sessions)})
        for i, sess in enumerate(sessions):
            images[i, t] = res[sess][0]
            toks[i, t] = _tokens_of(sess, images[i, t], codec, real.light_at(i, C + t))
            sess.close()
        bar.update(1)
    return images, toks


def _sensitivity(model: Any, real: Real, seed: int) -> dict[str, Any]:
    """The action gap on every whole model window (F frames) the real windows hold."""
    f = model.cfg.frames
    b, t = real.frames.shape[:2]
    n_win = t // f
    acts = torch.cat([real.actions, real.actions[:, -1:]], 1)  # (B, T, A): the last action conditions nothing
    changed = torch.zeros(b, t, dtype=torch.bool)
    changed[:, 1:] = (metrics.tile_mad(real.frames[:, :-1].reshape(-1, *real.shape),
                                       real.frames[:, 1:].reshape(-1, *real.shape), real.tile)
                      > metrics.VISIBLE).any(1).view(b, t - 1)
    sl = slice(0, n_win * f)
    return action_sensitivity(model, real.tokens[:, sl].reshape(b * n_win, f, -1),
                              acts[:, sl].reshape(b * n_win, f, -1), changed[:, sl].reshape(b * n_win, f),
                              seed=seed)


def _idm_scores(idm: Any, folder: str | Path, real: Real, pairs: dict[str, tuple[np.ndarray, np.ndarray]]
                ) -> dict[str, Any]:
    """The IDM's scores on the real horizon frames (its ceiling) and on each dream's pairs."""
    C, H = real.context, real.horizon
    truth = np.stack([idm.labels(w.actions[C - 1:C - 1 + H]) for w in real.windows])  # (B, H, A)
    truth = truth.reshape(-1, truth.shape[-1])

    def score(prev: np.ndarray, nxt: np.ndarray) -> dict[str, Any]:
        return idm.score(prev.reshape(-1, *real.shape), nxt.reshape(-1, *real.shape), truth)

    return {"folder": str(folder), "real": score(real.frames[:, C - 1:C + H - 1], real.frames[:, C:C + H]),
            "heldout_at_training": (idm.info.get("idm_metrics") or {}).get("heldout"),
            "decoders": {k: score(*v) for k, v in pairs.items()}}


def evaluate(bundle_dir: str | Path, data: str | Path, settings: EvalSettings | None = None,
             idm: str | Path | None = None, out: str | Path | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Run the evaluation and write the report folder; returns the report (as report.json)."""
    from worldsim.device import pick_device
    from worldsim.evaluation import report as report_mod

    s = settings or EvalSettings()
    if s.episodes < 1 or s.context < 1 or s.horizon < 1 or s.draws < 1:
        raise WorldsimError("--episodes, --context, --horizon and --draws must be at least 1")
    t_run = time.perf_counter()
    cfg = bundle.read_config(bundle_dir)
    dev = pick_device(s.device)
    model = bundle.load_world_model(bundle_dir, dev)
    image_tok = bundle.load_image_tokenizer(bundle_dir, dev)
    action_tok = action_tokenizer_from_config(cfg["action_tokenizer"])
    codec = Codec(image_tok)
    store = EpisodeStore(data)
    tcfg = image_tok.cfg
    if (tcfg.height, tcfg.width) != tuple(store.info.frame_size):
        raise WorldsimError(f"{bundle_dir} takes {tcfg.height}x{tcfg.width} frames but {data} holds "
                            f"{store.info.frame_size[0]}x{store.info.frame_size[1]}")
    if "action_space" in cfg and cfg["action_space"] != store.info.action_space.to_dict():
        raise WorldsimError(f"{data} records {store.info.action_space.name} actions, not the "
                            f"action space {bundle_dir} was trained on")
    objective = model.cfg.objective
    specs = s.decoders or default_decoders(objective)
    decoders = []
    for spec in specs:
        try:
            decoders.append(parse_decoder(spec, s.temperature).resolve(objective))
        except ValueError as e:
            raise WorldsimError(str(e)) from None
    labels = [decoder_label(d) for d in decoders]
    if len(set(labels)) != len(labels):
        raise WorldsimError(f"a decoder is given twice: {', '.join(specs)}")
    idm_model = None
    if idm is not None:  # loaded first: a wrong IDM fails before the long part
        from worldsim.idm import load_idm

        idm_model = load_idm(idm, dev)
        if idm_model.space != store.info.action_space:
            raise WorldsimError(f"the inverse dynamics model in {idm} predicts {idm_model.space.name} "
                                f"actions, not {store.info.action_space.name}")
        # Its pooled trunk reads frames of any size: one trained at another size scores them silently wrong.
        icfg = idm_model.model.cfg
        if (icfg.height, icfg.width) != tuple(store.info.frame_size):
            raise WorldsimError(f"the inverse dynamics model in {idm} takes {icfg.height}x{icfg.width} frames "
                                f"but {data} holds {store.info.frame_size[0]}x{store.info.frame_size[1]}")

    geometry = geometry_for(image_tok, action_tok, model.cfg.objective) if s.memory else None
    if s.memory and geometry is None:
        raise WorldsimError(f"{bundle_dir}: {MEMORY_WHERE}")
    C, H = s.context, s.horizon
    ids, source_note = held_out_ids(store, cfg, bundle_dir)
    if not ids:  # every episode of the store was trained on
        raise WorldsimError(f"{data} holds no episode held out from the training of {bundle_dir} "
                            f"({source_note}); evaluate on a store collected with another --seed")
    # Windows long enough for the rollout and for one whole model window (the action gap).
    F = model.cfg.frames  # frames per model window
    need = ("(context + horizon); lower --horizon or --context" if C + H >= F else
            f"(the model's window, which the action gap reads; context + horizon is {C + H}); "
            "use a store with longer episodes")
    windows = select_windows(store, ids, s.episodes, max(C + H, F), s.seed, need=need)
    real = _real(windows, codec, action_tok, tcfg.grid[0], store.info.env, C, H)
    B = len(windows)
    ways_note = _attach_ways(real, store, windows)
    bar = tqdm(total=len(decoders) * H * (s.draws + (1 if s.teacher_forced else 0)), desc="eval", unit="frame-batch",
               disable=not progress)

    # Baselines: copy-last (the last context frame, forever) and the tokenizer's ceiling.
    last = np.repeat(real.frames[:, C - 1:C], H, 1)
    quality: dict[str, Any] = {"copy-last": {"rollout": real.stats(last, last, real.tokens[:, C - 1:C].expand(-1, H, -1))}}
    # One step ahead, copy-last repeats real frame t: it matches no changed tile, by construction.
    real_prev = real.frames[:, C - 1:C + H - 1]
    quality["copy-last"]["teacher_forced"] = real.stats(real_prev, real_prev, real.tokens[:, C - 1:C + H - 1])
    recon = codec.decode(real.tokens[:, C - 1:C + H].reshape(B * (H + 1), -1),
                         real.light_of(slice(C - 1, C + H))).reshape(B, H + 1, *real.shape)
    quality["tokenizer"] = {"rollout": real.stats(recon[:, :-1], recon[:, 1:])}

    speed: dict[str, Any] = {}
    dreams: dict[str, np.ndarray] = {}
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for d, label in zip(decoders, labels):
        engine = Engine(model, image_tok, action_tok, d, max_sessions=B, seed=s.seed, memory=geometry)
        images, toks, speed[label] = _rollout(engine, real, codec, s.seed, bar)
        drawn = [(images, toks)] + [_rollout(engine, real, codec, draw_seed(s.seed, k, B), bar)[:2]
                                    for k in range(1, s.draws)]
        quality[label] = real.judged(drawn)
        del drawn
        dreams[label], pairs[label] = images, (real.before(images), images)
        if s.teacher_forced:
            tf, tf_toks = _teacher_forced(engine, real, codec, s.seed, model.cfg.frames, bar)
            quality[label]["teacher_forced"] = real.stats(real_prev, tf, tf_toks)
            pairs[label + " (teacher forced)"] = (real_prev, tf)
        del engine  # frees its cache before the next decoder's
    bar.close()
    game_note = "not computed (turned off)"
    if s.game:
        try:
            with tqdm(total=B * s.draws, desc="game", unit="window", disable=not progress) as gbar:
                games = [game_dreams(store, windows, C, H, draw_seed(s.seed, k, B), gbar) for k in range(s.draws)]
        except NotReplayable as e:
            game_note = f"not computed: {e}"
        else:
            quality["game"] = real.judged([(g, codec.encode(g.reshape(B * H, *real.shape), real.light_of(
                slice(C, C + H))).view(B, H, -1)) for g in games])
            pairs["game"] = (real.before(games[0]), games[0])
            game_note = ("Crafter itself from the last context frame, with the world out of view, its "
                         "creatures and their dice drawn anew (worldsim/evaluation/game.py)")

    tokenizer = {"uses_light": codec.uses_light, "codebook_size": int(getattr(tcfg, "codebook_size", 0)),
                 "kind": (cfg.get("image_tokenizer") or {}).get("kind", "vq")}
    for subset, sel in flicker_pairs(real.night).items():
        tokenizer[subset] = metrics.code_flicker(real.tokens, real.frames, real.tile, pairs_T=sel)
    night_H = real.night[:, C:C + H]
    out_dir = Path(out) if out is not None else default_out(bundle_dir)
    report = {
        "format": "worldsim.eval", "version": 1,
        "bundle": str(bundle_dir), "bundle_hash": bundle_hash(bundle_dir), "data": str(data), "out": str(out_dir),
        "code": code_version(), "settings": {**asdict(s), "decoders": labels},
        "objective": objective, "env": store.info.env,
        "episodes": {"count": B, "source": source_note,
                     "windows": [{"episode": w.episode, "start": w.start} for w in windows],
                     "night_frames": int(night_H.sum()), "day_frames": int((~night_H).sum())},
        "quality": quality, "game": game_note, "ways": ways_note, "speed": speed, "tokenizer": tokenizer,
        "action_sensitivity": _sensitivity(model, real, s.seed),
        "idm": _idm_scores(idm_model, idm, real, pairs) if idm_model is not None else
        "not computed (pass --idm DIR from `worldsim train-idm`)",
        "lpips": "not computed (needs backbone weights; none given)",
        "fvd": "not computed (needs backbone weights; none given)",
    }
    clips = {"real": real.frames[:, :C + H]}
    for label in labels:
        clips[label] = np.concatenate([real.frames[:, :C], dreams[label]], 1)
    report["seconds"] = time.perf_counter() - t_run
    report["files"] = report_mod.write_report(out_dir, report, clips, fps=max(1, store.info.fps // 2),
                                              videos=s.videos)
    return report
