"""The engine: sessions that turn player actions into frames, stepped together as one batch.

    engine = Engine.from_bundle("runs/wm", decoder=DecoderSettings("block_diffusion", steps=4))
    session = engine.open(context_frames, context_actions)   # prefill
    frame, stats = session.step(action)                       # one dreamed frame, uint8 (H, W, 3)
    frames = engine.step({s1: a1, s2: a2})                    # many sessions, one batch

Each session owns one row of a shared, preallocated KV cache; sessions may open and close at
any frame, and `Engine.step` runs whichever sessions it is given as one batch. A step includes
the image decode; `FrameStats` splits its time into model passes, sampling and image decode.
With `memory` (a `Geometry`, from `memory.geometry_for`), every session keeps the map it has
dreamed and shows a place it comes back to as it left it (`inference/memory.py`).

Decoders describe themselves: each `decode_*` module exports its `NAME`, the `OBJECTIVE` its
model must be trained with, whether `auto` picks it (`AUTO`), a frozen `Settings` dataclass
with a strict `from_dict`, `passes_per_frame(cfg, settings)` and `decode`. The registry, the
decoders valid for a model and the `auto` rule below are derived from them alone.
"""

from __future__ import annotations

import itertools
import numbers
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

import numpy as np
import torch

from worldsim.model import ModelConfig, WorldModel
from worldsim.tokenizers.action import ActionTokenizer
from worldsim.tokenizers.image import ImageTokenizer
from worldsim.inference import decode_ar, decode_block_diffusion, decode_diagonal
from worldsim.inference.cache import KVCache
from worldsim.inference.common import FrameStats, StageClock, prefill
from worldsim.inference.graphs import PassGraphs
from worldsim.inference.memory import MOVES, Geometry, TileMemory, geometry_for
from worldsim.inference.sampling import SamplingSettings

# The decoding strategies, by name; each module states its algorithm, cost and settings.
DECODERS: dict[str, ModuleType] = {m.NAME: m for m in (decode_ar, decode_diagonal, decode_block_diffusion)}


def _is_int(v: Any) -> bool:
    """An integer (numpy's too), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _check_seed(seed: Any) -> None:
    """A seed a torch generator takes: an integer in [-2**63, 2**64) (ValueError with one line)."""
    if not _is_int(seed) or not -2**63 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [-2**63, 2**64), got {seed!r}")


def _check_ids(t: torch.Tensor, lo: int, hi: int, what: str) -> torch.Tensor:
    """`t` if it holds integer ids in [lo, hi), else ValueError with one line."""
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{what} must be integers, got {t.dtype}")
    ids = t.long()  # uint16 (token shards) has no min or max
    if ids.numel() and not (lo <= int(ids.min()) and int(ids.max()) < hi):
        raise ValueError(f"{what} must lie in [{lo}, {hi}), got ids from {int(ids.min())} to "
                         f"{int(ids.max())}")
    return ids


def valid_decoders(objective: str) -> list[str]:
    """The decoders that fit a model trained with `objective`, in registry order."""
    return [name for name, m in DECODERS.items() if m.OBJECTIVE == objective]


def auto_decoder(objective: str) -> str:
    """What `auto` means for a model trained with `objective` (the one rule: engine, bench, eval)."""
    picks = [name for name in valid_decoders(objective) if DECODERS[name].AUTO]
    if not picks:
        raise ValueError(f"no decoder fits a model trained with {objective!r}")
    return picks[0]


@dataclass
class DecoderSettings:
    """A decoder by name, with the settings of every decoder side by side (what commands, the
    server and the bench pass around); `own()` is the named decoder's own frozen `Settings`."""

    name: str = "auto"  # auto: auto_decoder(objective): block_diffusion or diagonal
    steps: int = 4  # block_diffusion: passes per frame
    threshold: float | None = None  # block_diffusion: unmask every token above this confidence
    window: int = 2  # diagonal: how far a row runs ahead of the next
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    # block_diffusion: replay each pass shape from static buffers, captured as a CUDA graph on
    # CUDA (worldsim.inference.graphs); elsewhere it only adds copies. None: the engine decides,
    # on where it runs on CUDA (`graphs_by_default`)
    graphs: bool | None = None
    # block_diffusion: action guidance, logits + w * (logits - logits under the null action);
    # the engine keeps a shadow cache row per session for it when its decoder has it
    guidance: float = 0.0
    # block_diffusion: keep the drawn tokens at the most peaked positions, not the most
    # probable of those drawn
    peak: bool = False

    def resolve(self, objective: str) -> "DecoderSettings":
        """`auto` replaced by its decoder, checked against the model's objective and the
        decoder's own settings (ValueError with one line); settings the decoder does not have
        are left as they are, except `graphs` and `guidance`, which are off where they do not
        apply."""
        if not isinstance(self.sampling, SamplingSettings):  # else it fails at the first draw
            raise ValueError(f"sampling must be SamplingSettings, got {type(self.sampling).__name__}")
        name = auto_decoder(objective) if self.name == "auto" else self.name
        if name not in DECODERS:
            # The ones that fit this model: a name of the registry that does not would be refused next.
            raise ValueError(f"unknown decoder {name!r}; a model trained with {objective!r} decodes with "
                             f"{' or '.join(valid_decoders(objective))}")
        if DECODERS[name].OBJECTIVE != objective:
            raise ValueError(f"decoder {name!r} does not fit a model trained with {objective!r}; "
                             f"use {' or '.join(valid_decoders(objective))}")
        own = {f.name for f in fields(DECODERS[name].Settings)}
        out = replace(self, name=name, graphs=self.graphs if "graphs" in own else False,
                      guidance=self.guidance if "guidance" in own else 0.0)
        out.own()  # validates
        return out

    @property
    def module(self) -> ModuleType:
        if self.name not in DECODERS:
            raise ValueError(f"decoder {self.name!r} is not resolved; call resolve(objective)")
        return DECODERS[self.name]

    def own(self) -> Any:
        """The named decoder's `Settings`, from the fields it has (`graphs` left to the engine
        counts as off)."""
        cls = self.module.Settings
        return cls.from_dict({f.name: bool(self.graphs) if f.name == "graphs" else getattr(self, f.name)
                              for f in fields(cls)})

    def passes_per_frame(self, cfg: ModelConfig) -> int:
        return self.module.passes_per_frame(cfg, self.own())


def graphs_by_default(decoder: DecoderSettings, device: torch.device) -> bool:
    """Whether a resolved decoder that leaves `graphs` to the engine replays its passes: on CUDA,
    where a pass's hundreds of kernel launches would otherwise set the frame rate (graph replay
    gives the same frames, checked by benchmarks/cuda_check.py), for a decoder that can replay
    (block diffusion without action guidance)."""
    if decoder.graphs is not None:
        return decoder.graphs
    return device.type == "cuda" and decoder.name == "block_diffusion" and not decoder.guidance


class Engine:
    def __init__(self, model: WorldModel, image_tokenizer: ImageTokenizer | None,
                 action_tokenizer: ActionTokenizer, decoder: DecoderSettings | None = None,
                 max_sessions: int = 16, sink: int = 0, seed: int = 0, memory: Geometry | None = None):
        # Checked here, with a line that names the bad value: a float or negative count would
        # otherwise fail deep in the cache's allocation, or at its first eviction.
        for name, v, least in (("max_sessions", max_sessions, 1), ("sink", sink, 0)):
            if not _is_int(v) or v < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {v!r}")
        _check_seed(seed)
        self.model = model.eval()
        self.cfg = model.cfg
        self.image_tokenizer = image_tokenizer
        self.action_tokenizer = action_tokenizer
        self.decoder = (decoder or DecoderSettings()).resolve(self.cfg.objective)
        self.device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        # Frames a dreamed frame may see, as in training: F-1 finished blocks, plus the block
        # being written for next-token models.
        blocks = self.cfg.frames if self.cfg.objective == "ar" else self.cfg.frames - 1
        # Action guidance runs each session again under the null action, in a shadow row.
        self.shadows = self.decoder.guidance > 0
        # At least one rolling block beside the sinks, and for next-token models two: the block
        # being written and the finished frame before it, which it must still see.
        least = sink + (2 if self.cfg.objective == "ar" else 1)
        self.cache = KVCache(self.cfg, max_sessions * (2 if self.shadows else 1), max(blocks, least),
                             sink, self.device, dtype)
        # The no-op's tokens, on the device once, for the shadow rows.
        self.null_action = self.cache.to_device(
            torch.as_tensor(action_tokenizer.encode(action_tokenizer.space.noop())).long())
        self.graphs: PassGraphs | None = None  # made when a decoder first asks for replays
        self._own: tuple[DecoderSettings, Any] | None = None  # self.decoder and its own settings
        self.max_sessions = max_sessions
        self.free_rows = list(range(max_sessions))
        self.seed_source = torch.Generator().manual_seed(int(seed))  # seeds unseeded sessions
        self._ids = itertools.count()
        # World memory (inference/memory.py): each session keeps the map it has dreamed, and a
        # move brings remembered tiles back into view. The keys that move the player, by tokens.
        self.memory = memory
        self._moves: dict[tuple[int, ...], tuple[int, int]] = {}
        if memory is not None:
            # Next-token decoders write a frame's tokens into the cache as they draw them, before
            # memory could set any back; block diffusion writes the frame as shown, next step.
            if self.cfg.objective != "block_diffusion":
                raise ValueError("world memory needs a block-diffusion model (an ar model caches a "
                                 "frame's tokens as it draws them)")
            names = action_tokenizer.space.names
            if action_tokenizer.space.kind != "discrete" or not set(MOVES) <= set(names):
                raise ValueError("world memory needs a game whose keys move the player a tile "
                                 f"(move_left/right/up/down); {action_tokenizer.space.name!r} has none")
            if memory.rows * memory.cols != self.cfg.tokens_per_frame:
                raise ValueError(f"world memory for a {memory.rows}x{memory.cols} grid, but the model "
                                 f"draws {self.cfg.tokens_per_frame} tokens a frame")
            self._moves = {tuple(int(t) for t in action_tokenizer.encode(names.index(k))): v
                           for k, v in MOVES.items()}

    @classmethod
    def from_bundle(cls, folder: str | Path, device: str | torch.device = "cpu", memory: bool = False,
                    **kwargs: Any) -> "Engine":
        """The bundle's engine; with `memory`, world memory where the bundle allows it (a model
        of Crafter's tiles: `geometry_for`), else none."""
        from worldsim import bundle

        model = bundle.load_world_model(folder, device)
        image_tok, action_tok = bundle.load_image_tokenizer(folder, device), bundle.load_action_tokenizer(folder)
        return cls(model, image_tok, action_tok,
                   memory=geometry_for(image_tok, action_tok, model.cfg.objective) if memory else None, **kwargs)

    # -- sessions ------------------------------------------------------------------------------
    def open(self, context: np.ndarray | torch.Tensor, actions: list[Any] | torch.Tensor,
             seed: int | None = None, start_step: int = 0) -> "Session":
        """A session from context frames (uint8 (C, H, W, 3), or image tokens (C, N)) and the
        C-1 actions taken at all but the last of them. The first `step` gives the action at
        the last context frame. `start_step` is the game step of the first context frame (0
        for a fresh reset): a tokenizer that renders the game's light from its clock (the tile
        tokenizer on Crafter) needs it to encode the context and draw every frame after it."""
        if seed is not None:
            _check_seed(seed)
        if not self.free_rows:
            raise RuntimeError(f"all {self.max_sessions} session slots are in use")
        session = Session(self, self.free_rows.pop(0), next(self._ids), seed)
        try:
            session.reset(context, actions, start_step)
        except BaseException:
            session.close()
            raise
        return session

    def _light(self, steps: list[int]) -> dict[str, Any]:
        """The daylight of frames at these game steps, as the tokenizer's `light` argument
        (empty for tokenizers that do not render light)."""
        tok = self.image_tokenizer
        return {"light": tok.daylight_at(np.asarray(steps))} if getattr(tok, "uses_light", False) else {}

    def _frame_tokens(self, context: np.ndarray | torch.Tensor, start_step: int = 0) -> torch.Tensor:
        t = torch.as_tensor(context)
        if t.dtype == torch.uint8 and t.ndim == 4:
            if self.image_tokenizer is None:
                raise ValueError("this engine has no image tokenizer; pass image tokens")
            light = self._light(list(range(start_step, start_step + t.shape[0])))
            return self.image_tokenizer.encode(t, **light).to(self.device)
        if t.ndim == 2 and t.shape[1] == self.cfg.tokens_per_frame:
            return _check_ids(t, 0, self.cfg.codebook_size, "context image tokens").to(self.device)
        raise ValueError(f"context must be uint8 frames (C, H, W, 3) or tokens (C, "
                         f"{self.cfg.tokens_per_frame}), got {t.dtype} {tuple(t.shape)}")

    def _action_tokens(self, actions: list[Any] | torch.Tensor | np.ndarray) -> torch.Tensor:
        """Actions in the env's action space, or their tokens (a (T, A) tensor, or (A,) tensors
        in the list) -> tokens (T, A) on the device, gathered on the host and sent in one copy
        that the host does not wait on."""
        A, K = self.cfg.action_tokens, self.cfg.codebook_size
        ids = (K, K + self.cfg.action_ids)
        # Given as tensors they are tokens, not actions: an image code or an id past the
        # vocabulary in an action slot would dream silently wrong, or fail inside the forward.
        if isinstance(actions, torch.Tensor) and actions.ndim == 2:
            if actions.shape[1] != A:
                raise ValueError(f"action tokens must have shape (T, {A}), got {tuple(actions.shape)}")
            return self.cache.to_device(_check_ids(actions.cpu(), *ids, "action tokens"))
        rows = [a.cpu().view(-1) if isinstance(a, torch.Tensor)
                else torch.as_tensor(self.action_tokenizer.encode(a)) for a in actions]
        if not rows:
            return torch.zeros(0, A, dtype=torch.long, device=self.device)
        for r in rows:
            if r.shape != (A,):
                raise ValueError(f"action tokens must have shape ({A},), got {tuple(r.shape)}")
        return self.cache.to_device(torch.stack([_check_ids(r, *ids, "action tokens") for r in rows]))

    @torch.inference_mode()
    def step(self, inputs: Mapping["Session", Any], decode_images: bool = True
             ) -> dict["Session", tuple[np.ndarray | None, FrameStats]]:
        """Advance every given session by one frame, as one batch. Each input is an action in
        the env's action space, or its action tokens as a tensor (A,)."""
        sessions = sorted(inputs, key=lambda s: s.row)
        if not sessions:
            return {}
        for s in sessions:
            if s.closed:
                raise RuntimeError(f"session {s.id} is closed")
            if s.engine is not self:  # its row is another engine's: it would step a stranger's
                raise ValueError(f"session {s.id} belongs to another engine")
        rows = [s.row for s in sessions]
        last = torch.cat([s.last_frame for s in sessions])  # (B, N)
        acts = self._action_tokens([inputs[s] for s in sessions])  # (B, A)
        gen = [s.generator for s in sessions]  # each session draws from its own generator
        d = self.decoder  # may be swapped between steps (the server's per-session decoders)
        if self._own is None or self._own[0] != d:
            self._own = (replace(d), d.own())
        replay = graphs_by_default(d, self.device)  # `resolve` leaves it on only where it applies
        if replay and self.graphs is None:
            self.graphs = PassGraphs(self.model, self.cache)
        extra = {}
        if d.guidance:
            if not self.shadows:
                raise ValueError("action guidance needs an engine made with a guidance decoder")
            extra["guide"] = ([r + self.max_sessions for r in rows], self.null_action)
        frame, stats = d.module.decode(self.model, self.cache, rows, last, acts, d.sampling, gen,
                                       self._own[1], self.graphs if replay else None, **extra)
        if self.memory is not None:  # remembered tiles come back into view before anyone sees them:
            # the image, the cache (the next step writes last_frame) and the caller
            keys = [self._moves.get(tuple(a)) for a in acts.tolist()]
            host = frame.cpu()
            frame = torch.stack([s.memory.step(host[i], keys[i]) for i, s in enumerate(sessions)]).to(frame.device)
        images = None
        if decode_images and self.image_tokenizer is not None:
            clock = StageClock(self.device)
            with clock("decode"):
                images = self.image_tokenizer.decode(frame, **self._light([s.game_step + 1 for s in sessions]))
            clock.add_to(stats)
            images = images.cpu().numpy()
        out = {}
        for i, s in enumerate(sessions):
            s.last_frame = frame[i:i + 1]
            s.frames += 1
            s.game_step += 1
            out[s] = (images[i] if images is not None else None, stats)
        return out


class Session:
    """One player's dream: `reset(context, actions)`, then `step(action) -> (frame, stats)`."""

    def __init__(self, engine: Engine, row: int, sid: int, seed: int | None):
        self.engine, self.row, self.id = engine, row, sid
        self.generator = torch.Generator(device=engine.device)
        self.seed = seed
        self.last_frame = torch.zeros(1, engine.cfg.tokens_per_frame, dtype=torch.long)
        self.frames = 0
        self.game_step = 0  # the game step of the newest frame (context or dreamed)
        self.closed = False
        self.memory = TileMemory(engine.memory) if engine.memory is not None else None

    @torch.inference_mode()
    def reset(self, context: np.ndarray | torch.Tensor, actions: list[Any] | torch.Tensor,
              start_step: int = 0) -> None:
        e = self.engine
        if self.closed:  # its row may be another session's by now: a prefill would overwrite it
            raise RuntimeError(f"session {self.id} is closed; open a new one")
        if not _is_int(start_step) or start_step < 0:
            raise ValueError(f"start_step must be an integer >= 0, got {start_step!r}")
        frames = e._frame_tokens(context, start_step)  # (C, N)
        acts = e._action_tokens(actions)  # (C-1, A)
        if frames.shape[0] < 1 or acts.shape[0] != frames.shape[0] - 1:
            raise ValueError(f"need C >= 1 context frames and C-1 actions, got {frames.shape[0]} "
                             f"frames and {acts.shape[0]} actions")
        # An unseeded session takes a seed from the engine's generator, so that sessions
        # differ from each other and a seeded engine is reproducible.
        seed = self.seed if self.seed is not None else int(
            torch.randint(0, 2**62, (1,), generator=e.seed_source))
        self.generator.manual_seed(int(seed))
        prefill(e.model, e.cache, [self.row], frames[None], acts[None])
        self.last_frame = frames[-1:]
        if self.memory is not None:  # the map of every context frame, the view at the last
            host = frames.cpu()
            self.memory.reset(host[0])
            recall, self.memory.recall = self.memory.recall, False  # real frames: nothing to set back
            for f, a in zip(host[1:], acts.tolist()):
                self.memory.step(f, e._moves.get(tuple(a)))
            self.memory.recall = recall
            self.memory.known = self.memory.redrawn = self.memory.lost = 0
        self.frames = 0
        self.game_step = int(start_step) + frames.shape[0] - 1

    def step(self, action: Any) -> tuple[np.ndarray | None, FrameStats]:
        return self.engine.step({self: action})[self]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.engine.cache.reset([self.row])
            self.engine.free_rows.append(self.row)
            self.engine.free_rows.sort()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
