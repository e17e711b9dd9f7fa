"""One thread owns the engine and steps every ready session as one batch.

The server's event loop never touches the model: it posts inputs into a one-slot mailbox per
session (`submit`) and queues opens, resets, decoder changes and closes (`open`, `reset`,
`configure`, `close`). The worker thread runs the queued commands, then steps every ready
session with one `Engine.step` per decoder setting, and hands each finished frame to the
session's `deliver` callback (called on the worker thread; the server moves it to its loop).

Pacing: with `fps > 0` the game clock runs: every session advances on a shared grid of ticks,
1/fps apart, with its newest input (or the keys still held), so all sessions share a batch per
tick. With `fps == 0` a session advances as soon as a new input arrives, as fast as the engine
makes frames; the worker waits a moment for other sessions' inputs so that they share a batch.

Inputs that arrive between two frames merge (`merge_actions`): buttons pressed at any point
count as pressed, camera motion is summed, and for discrete spaces a tap is not lost to a
release, or to a return to the key held under it, that arrives before the frame. Each frame
carries the action it was made with (`FrameOut.action`), which a recording keeps.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import inspect
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol

import numpy as np

from worldsim.envs.base import ActionSpace
from worldsim.inference.engine import DecoderSettings, Engine, Session, valid_decoders

log = logging.getLogger("worldsim.scheduler")


def merge_actions(pending: Any, new: Any, space: ActionSpace, before: Any = None) -> Any:
    """Two inputs that arrive before the same frame -> the one input that frame uses. `before`
    is what was held when the first of them came (the held action of the frame before)."""
    if pending is None:
        return new
    if space.kind == "discrete":
        # The newest wins, except that going back, to no key (a release) or to the key held
        # before (Space tapped while W is held), does not erase a tap the frame has not shown.
        back = new == space.noop() or (before is not None and new == before)
        return pending if back and pending != new else new
    out = {b: int(bool(pending.get(b, 0)) or bool(new.get(b, 0))) for b in space.buttons}
    if space.camera:
        p, n = pending.get("camera", (0.0, 0.0)), new.get("camera", (0.0, 0.0))
        out["camera"] = [p[0] + n[0], p[1] + n[1]]  # motion since the last frame, summed
    return out


def held_action(action: Any, space: ActionSpace) -> Any:
    """What stays in force after a frame: the keys still held, and no camera motion."""
    if space.kind == "dict" and space.camera:
        return {**action, "camera": [0.0, 0.0]}
    return action


class TruthGame(Protocol):
    """The real game, stepped beside the dream with the same actions."""

    def step(self, action: Any) -> tuple[np.ndarray, bool, dict[str, Any]]:
        ...


@dataclass
class Start:
    """Where a session starts: real context frames (C, H, W, 3) uint8, the C-1 actions between
    them, the game step of the first context frame, and optionally the real game at the last."""
    frames: np.ndarray
    actions: list[Any]
    start_step: int = 0
    truth: TruthGame | None = None
    seed: int | None = None


@dataclass
class FrameOut:
    """One frame for one session, as the worker hands it to `deliver`."""
    index: int  # frames handed to this session so far, minus one (monotonic across resets)
    seq: int  # the newest action sequence number the frame includes (-1: none)
    image: np.ndarray  # (H, W, 3) uint8
    truth: np.ndarray | None  # (H, W, 3) uint8, the real game under the same actions
    step: int  # the game clock: steps since the game's reset
    input_time: float | None  # time.monotonic() when its newest input arrived (None: no new input)
    decoder: str | None = None  # the decoder that dreamed it (None: a real frame)
    timings: dict[str, float] = field(default_factory=dict)  # ms and the batch size
    action: Any = None  # the action that made it (None: a real frame)


@dataclass
class _Slot:
    sid: int
    deliver: Callable[[FrameOut], None]
    decoder: DecoderSettings
    session: Session | None = None
    truth: TruthGame | None = None
    truth_done: bool = False
    truth_frame: np.ndarray | None = None
    held: Any = None
    pending: Any = None  # the merged input not yet in a frame (the one-slot mailbox)
    pending_over: Any = None  # what was held when the pending input began
    pending_seq: int = -1
    pending_time: float | None = None
    seq: int = -1
    step: int = 0
    index: int = -1
    next_due: float = 0.0
    paused: bool = False
    closed: bool = False


class Scheduler:
    def __init__(self, engine: Engine, space: ActionSpace, fps: float, gather_s: float = 0.010):
        if fps < 0 or not math.isfinite(fps):
            raise ValueError(f"fps must be >= 0, got {fps}")
        self.engine, self.space, self.fps = engine, space, float(fps)
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.gather_s = gather_s
        self.decoder = engine.decoder  # the default for new sessions
        self.objective = engine.cfg.objective
        self.decoders = valid_decoders(self.objective)
        # The lead adds `start_step=` to Engine.open (the image tokenizer draws daylight from
        # the game clock); pass it where the engine takes it.
        self._start_step_kw = "start_step" in inspect.signature(engine.open).parameters
        self._cv = threading.Condition()
        self._commands: deque[tuple[Callable[[], Any], cf.Future]] = deque()
        self._slots: dict[int, _Slot] = {}
        self._next_sid = 0
        self._stop = False
        self._last_step_s = 0.0
        self._last_batch: set[int] = set()  # ids of the sessions stepped last
        self.frames = 0
        self.batches = 0
        self._thread = threading.Thread(target=self._run, name="worldsim-inference", daemon=True)

    # -- the event loop's side --------------------------------------------------------------
    def start(self) -> "Scheduler":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def active(self) -> int:
        """Sessions open or being opened."""
        with self._cv:
            return len(self._slots)

    def open(self, start: Start, deliver: Callable[[FrameOut | None], None]) -> tuple[int, cf.Future]:
        """Queue a new session: (its id, a future that is done once its first frame, the real
        one it starts from, has gone to `deliver`). `deliver(None)` means the session failed
        and was closed. Call `close(id)` when done, whether or not the open succeeded."""
        with self._cv:
            sid = self._next_sid
            self._next_sid += 1
            slot = _Slot(sid, deliver, self.decoder, held=self.space.noop())
            self._slots[sid] = slot
        return sid, self._queue(lambda: self._open(slot, start))

    def reset(self, sid: int, start: Start) -> cf.Future:
        return self._queue(lambda: self._open(self._slot(sid), start))

    def configure(self, sid: int, decoder: str | None = None, steps: int | None = None,
                  paused: bool | None = None) -> cf.Future:
        """Change one session's decoder or steps, or pause it (not stepped, its clock stopped)
        and resume it; the future gives the decoder settings, or raises ValueError for a
        decoder that does not fit the model."""
        def run() -> DecoderSettings:
            slot = self._slot(sid)
            d = replace(slot.decoder, name=decoder or slot.decoder.name,
                        steps=steps if steps is not None else slot.decoder.steps)
            slot.decoder = d.resolve(self.objective)
            if paused is not None:
                with self._cv:
                    slot.paused = paused
                    slot.next_due = self._next_tick(time.monotonic())
            return slot.decoder
        return self._queue(run)

    def submit(self, sid: int, action: Any, seq: int, received: float | None = None) -> None:
        """The player's input (a full action of the space). Returns at once; an action the space
        does not hold raises ValueError here, not in the batch it would have failed with its
        partners."""
        self.space.to_array([action])  # the check only; a bad action raises ValueError
        with self._cv:
            slot = self._slots.get(sid)
            if slot is None or slot.closed:
                return
            if slot.pending is None:
                slot.pending_over = slot.held
            slot.pending = merge_actions(slot.pending, action, self.space, slot.pending_over)
            slot.held = held_action(action, self.space)
            slot.pending_seq = seq
            slot.pending_time = received if received is not None else time.monotonic()
            self._cv.notify_all()

    def close(self, sid: int) -> None:
        """Stop stepping a session at once; its engine slot is freed on the worker."""
        with self._cv:
            slot = self._slots.pop(sid, None)
            if slot is None:
                return
            slot.closed = True
            self._commands.append((functools.partial(self._free, slot), cf.Future()))
            self._cv.notify_all()

    # -- the worker ---------------------------------------------------------------------------
    def _queue(self, fn: Callable[[], Any]) -> cf.Future:
        fut: cf.Future = cf.Future()
        with self._cv:
            if self._stop:
                fut.set_exception(RuntimeError("the scheduler has stopped"))
                return fut
            self._commands.append((fn, fut))
            self._cv.notify_all()
        return fut

    def _slot(self, sid: int) -> _Slot:
        with self._cv:
            slot = self._slots.get(sid)
        if slot is None:
            raise KeyError(f"no session {sid}")
        return slot

    def _open(self, slot: _Slot, start: Start) -> None:
        if slot.closed:
            return
        if slot.session is not None:
            slot.session.close()
            slot.session = None
        kw = {"start_step": start.start_step} if self._start_step_kw else {}
        session = self.engine.open(start.frames, start.actions, seed=start.seed, **kw)
        with self._cv:
            if slot.closed:  # closed while it was being opened
                session.close()
                return
            slot.session = session
            slot.truth, slot.truth_done, slot.truth_frame = start.truth, False, None
            slot.held, slot.pending, slot.pending_time = self.space.noop(), None, None
            slot.step = start.start_step + len(start.frames) - 1
            slot.index += 1
            slot.next_due = self._next_tick(time.monotonic())
            first = np.asarray(start.frames[-1])  # (H, W, 3) the real frame it starts from
            slot.truth_frame = first if start.truth is not None else None
            out = FrameOut(slot.index, slot.seq, first, slot.truth_frame, slot.step, None)
        self._deliver(slot, out)

    def _free(self, slot: _Slot) -> None:
        if slot.session is not None:
            slot.session.close()
            slot.session = None

    def _next_tick(self, now: float) -> float:
        if not self.period:
            return now
        return (math.floor(now / self.period) + 1) * self.period  # one grid for all sessions

    def _ready(self, now: float) -> list[_Slot]:
        live = [s for s in self._slots.values() if s.session is not None and not s.paused]
        if self.period:
            return [s for s in live if s.next_due <= now]
        return [s for s in live if s.pending is not None]

    def _run(self) -> None:
        while True:
            with self._cv:
                if self._stop:
                    break
                commands = list(self._commands)
                self._commands.clear()
            for fn, fut in commands:
                self._run_command(fn, fut)
            with self._cv:
                if self._commands or self._stop:
                    continue
                now = time.monotonic()
                ready = self._ready(now)
                if not ready:
                    dues = [s.next_due for s in self._slots.values() if s.session is not None and not s.paused]
                    self._cv.wait(max(0.0, min(dues) - now) if self.period and dues else None)
                    continue
                if not self.period:
                    ready = self._gather(ready, now)
                batch = [(s, *self._take_input(s)) for s in ready]
            self._step(batch)
        # Leaving: free every engine slot so a stopped server holds no cache rows, and tell
        # whoever still waits on a command.
        with self._cv:
            left, self._commands = list(self._commands), deque()
            slots = list(self._slots.values())
        for fn, fut in left:
            if isinstance(fn, functools.partial) and fn.func == self._free:
                self._run_command(fn, fut)  # a session closed while the worker was busy
            else:
                _settle(fut, exception=RuntimeError("the scheduler has stopped"))
        for slot in slots:
            self._free(slot)

    def _gather(self, ready: list[_Slot], now: float) -> list[_Slot]:
        """With fps 0, players in lockstep answer their frames a moment apart: wait briefly
        for the sessions of the last batch so that they share this one, instead of splitting
        into batches that alternate (each a full model step). Sessions that were not in the
        last batch are not waited for, so a lone player never waits."""
        expected = {s.sid for s in self._slots.values()
                    if s.sid in self._last_batch and s.session is not None and not s.paused}
        deadline = now + min(self.gather_s, 0.5 * self._last_step_s)
        while not expected <= {s.sid for s in ready} and not self._commands and not self._stop:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._cv.wait(left)
            ready = self._ready(time.monotonic())
        return ready

    def _take_input(self, s: _Slot) -> tuple[Any, float | None]:
        action = s.pending if s.pending is not None else s.held
        t_in = s.pending_time
        s.seq = s.pending_seq
        s.pending, s.pending_time = None, None
        if self.period:
            s.next_due = self._next_tick(time.monotonic())
        return action, t_in

    def _run_command(self, fn: Callable[[], Any], fut: cf.Future) -> None:
        # The command runs even if its waiter gave up (cancelled the future): an open or a reset
        # half done would leave the session's row in a state nobody planned for.
        try:
            result = fn()
        except Exception as e:  # handed to whoever waits on the future; the worker goes on
            _settle(fut, exception=e)
        else:
            _settle(fut, result=result)

    def _step(self, batch: list[tuple[_Slot, Any, float | None]]) -> None:
        groups: dict[tuple, list[tuple[_Slot, Any, float | None]]] = {}
        for item in batch:
            # Sessions share a batch when their decoders decode alike: by the decoder's own
            # settings (an `ar` session told steps=8 has nothing that differs, and split every
            # tick into two model steps), its sampling and whether it replays.
            d = item[0].decoder
            groups.setdefault((d.name, d.own(), d.sampling, d.graphs), []).append(item)
        t0 = time.perf_counter()
        for items in groups.values():
            self.engine.decoder = items[0][0].decoder
            try:
                results = self.engine.step({s.session: a for s, a, _ in items})
            except Exception:
                # A failed batch must not stop the others: its sessions are closed with a log.
                log.exception("engine step failed; closing %d session(s)", len(items))
                for s, _, _ in items:
                    self.close(s.sid)
                    self._deliver(s, None)
                continue
            self.batches += 1
            for s, action, t_in in items:
                image, stats = results[s.session]
                truth, truth_ms = self._step_truth(s, action)
                with self._cv:
                    s.index += 1
                    s.step += 1
                    out = FrameOut(s.index, s.seq, image, truth, s.step, t_in, s.decoder.name, {
                        "model": stats.model_ms + stats.sample_ms, "decode": stats.decode_ms,
                        "passes": float(stats.passes), "steps": float(s.decoder.steps),
                        "batch": float(len(items)), "truth": truth_ms}, action)
                self.frames += 1
                self._deliver(s, out)
        self._last_step_s = time.perf_counter() - t0
        self._last_batch = {s.sid for s, _, _ in batch}

    def _deliver(self, s: _Slot, out: FrameOut | None) -> None:
        try:
            s.deliver(out)
        except Exception:  # one broken receiver must not stop every other session's frames
            log.exception("delivering a frame of session %d failed; closing it", s.sid)
            self.close(s.sid)

    def _step_truth(self, s: _Slot, action: Any) -> tuple[np.ndarray | None, float]:
        if s.truth is None:
            return None, 0.0
        t0 = time.perf_counter()
        if not s.truth_done:
            try:
                s.truth_frame, s.truth_done, _ = s.truth.step(action)
            except Exception:  # the real game broke: the dream goes on without it
                log.exception("the real game of session %d failed; going on without ground truth", s.sid)
                s.truth, s.truth_frame = None, None
                return None, 0.0
        return s.truth_frame, (time.perf_counter() - t0) * 1e3


def _settle(fut: cf.Future, result: Any = None, exception: BaseException | None = None) -> None:
    """Give a command's outcome to its future, unless its waiter cancelled it: setting a
    cancelled future raises, which would stop the worker and every session with it."""
    try:
        if exception is not None:
            fut.set_exception(exception)
        else:
            fut.set_result(result)
    except cf.InvalidStateError:
        pass  # cancelled: nobody reads it
