"""The websocket frame server: protocol v1 (`worldsim.protocol`, `docs/protocol.md`) over the
websockets asyncio server.

Only I/O happens here. Each connection runs a consumer task (inputs -> the scheduler's mailbox)
and a producer task (the newest frame -> JPEG or raw -> the socket); the model runs on the
scheduler's one inference thread. A connection's outbox holds one frame: a frame that arrives
before the last one was sent replaces it (but for a reset's real frame, which a dreamed one
waits behind), and at most `window` frames are on the wire before the client acknowledges one,
so a slow client gets the newest frame, never a backlog (buffers in the kernel would otherwise
queue seconds of frames).

Limits: message size (a bigger one closes the socket with 1009), messages per second (over it
they are dropped with an error; at twice it for a second the socket closes; acks of frames
awaiting one are not counted, since dropping them would stop the stream), sessions (past
it: an error, then close 1013), an idle timeout (close 1001). Binding anywhere but loopback
needs a token (checked in constant time) or an explicit `insecure`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import copy
import hmac
import ipaddress
import io
import logging
import secrets
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.server import ServerConnection, serve

from worldsim import protocol as P
from worldsim.envs.base import ActionSpace
from worldsim.errors import WorldsimError
from worldsim.inference.scheduler import FrameOut, Scheduler, Start

log = logging.getLogger("worldsim.server")

# Frames up to this many values (128x128 RGB) are JPEG-encoded on the event loop: about a
# tenth of a millisecond, less than handing them to a thread and back.
SMALL_FRAME = 128 * 128 * 3

HELLO_TRIES = 8  # messages a client may send before its hello

# Close codes (RFC 6455 and websockets' registry).
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_INTERNAL, CLOSE_TRY_LATER = 1000, 1001, 1008, 1011, 1013


class ServeError(WorldsimError):
    pass


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port (`FrameServer.port` tells which)
    max_sessions: int = 4
    token: str | None = None
    insecure: bool = False  # allow a non-loopback address without a token
    max_message: int = P.MAX_CLIENT_MESSAGE  # bytes per client message
    max_rate: float = 240.0  # client messages per second (a burst of one second is allowed)
    idle_timeout: float = 300.0  # seconds without a client message before the socket closes
    hello_timeout: float = 10.0

    def check(self) -> None:
        if self.max_sessions < 1:
            raise ServeError(f"--max-sessions must be at least 1, got {self.max_sessions}")
        if not 0 <= self.port <= 65535:
            raise ServeError(f"--port must lie in [0, 65535], got {self.port}")
        if self.token is not None and not self.token:
            raise ServeError("--token must not be empty")
        if not is_loopback(self.host) and self.token is None and not self.insecure:
            raise ServeError(f"{self.host} is reachable from other machines: pass --token T "
                             "(clients send it in hello) or --insecure")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- where sessions start --------------------------------------------------------------------
@dataclass
class Game:
    """The game a bundle dreams, and where its sessions start: a fresh reset of the real game
    (Crafter), or a recorded episode (`scene`: frames (T+1, H, W, 3), actions, first frame),
    with ground truth where the recording replays (`scene_game`)."""
    name: str
    space: ActionSpace
    fps: float
    frame_size: tuple[int, int]  # (H, W)
    context: int  # most real frames a session starts from
    scene: Any = None  # worldsim.data.store.Episode
    scene_frame: int = 0
    scene_game: Any = None  # the real game at the scene's frame, when the recording replays
    _worlds: dict = field(default_factory=dict, repr=False)  # seed -> (game, frame), oldest first
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_bundle(cls, folder: str | Path, scene: str | None = None) -> "Game":
        from worldsim import bundle

        cfg = bundle.read_config(folder)
        for key in ("action_space", "model", "image_tokenizer"):
            if key not in cfg:
                raise ServeError(f"bundle {folder} has no {key}; serving needs a trained world model")
        tok = cfg["image_tokenizer"]
        game = cls(name=cfg.get("env", "crafter"), space=ActionSpace.from_dict(cfg["action_space"]),
                   fps=float(cfg.get("fps", 10)), frame_size=(int(tok["height"]), int(tok["width"])),
                   context=max(1, int(cfg["model"]["frames"]) - 1))
        if scene is not None:
            game.load_scene(scene)
        elif game.name != "crafter":
            raise ServeError(f"a {game.name} session can only start from a recorded episode: "
                             "pass --scene STORE[:EPISODE[:FRAME]]")
        return game

    def load_scene(self, spec: str) -> None:
        """STORE[:EPISODE[:FRAME]]: an episode of an episode store (default: its first) from
        frame FRAME (default 0)."""
        from worldsim.data.store import CorruptEpisode, EpisodeStore

        parts = spec.split(":")
        if len(parts) > 3:
            raise ServeError(f"--scene takes STORE[:EPISODE[:FRAME]], got {spec!r}")
        store = EpisodeStore(parts[0])
        if store.info.action_space != self.space:
            raise ServeError(f"{parts[0]} holds {store.info.action_space.name} actions; "
                             f"the model plays {self.space.name}")
        ids = store.episode_ids()
        eid = parts[1] if len(parts) > 1 and parts[1] else (ids[0] if ids else None)
        if eid is None or eid not in ids:
            raise ServeError(f"{parts[0]} has no episode {eid!r}" if eid else f"{parts[0]} has no episodes")
        try:
            ep = store.load(eid)
        except CorruptEpisode as e:
            raise ServeError(f"--scene: {e}") from None
        try:
            w = int(parts[2]) if len(parts) > 2 else 0
        except ValueError:
            raise ServeError(f"--scene frame must be an integer, got {parts[2]!r}") from None
        if not 0 <= w < len(ep.frames):
            raise ServeError(f"episode {eid} has frames 0..{len(ep.frames) - 1}; --scene asked for {w}")
        if tuple(ep.frames.shape[1:3]) != self.frame_size:
            raise ServeError(f"episode {eid} has {ep.frames.shape[1]}x{ep.frames.shape[2]} frames; "
                             f"the model draws {self.frame_size[0]}x{self.frame_size[1]}")
        self.scene, self.scene_frame = ep, w
        self.scene_game = self._replay(store, eid, w)

    def _replay(self, store: Any, eid: str, w: int) -> Any:
        """The real game at the scene's frame, for ground truth: a Crafter episode that
        `worldsim collect` wrote is fixed by the collection's seed and its index, so replaying
        its recorded actions from a reset reaches the recorded frame. None where the recording
        cannot be replayed, or the replay does not match it frame for frame."""
        from worldsim.data.collect import NotReplayable, check_replayable, replay_episode

        try:
            check_replayable(store)
        except NotReplayable:
            return None  # not a store `worldsim collect` wrote: no ground truth, as expected
        if self.name != "crafter" or not eid.isdigit():
            return None
        try:
            return replay_episode(store, eid, w)[0]
        except NotReplayable as e:
            log.warning("no ground truth: %s", e)  # a recording that should replay and does not
            return None

    def start(self, seed: int, ground_truth: bool) -> tuple[Start, bool]:
        """A session's start and whether ground truth comes with it. Runs off the event loop:
        generating a Crafter world takes tens of milliseconds."""
        if self.scene is not None:
            ep, w = self.scene, self.scene_frame
            c = min(w + 1, self.context)
            acts = [self.space.from_array(ep.actions, t) for t in range(w - c + 1, w)]
            truth = copy.deepcopy(self.scene_game) if ground_truth and self.scene_game is not None else None
            return Start(ep.frames[w - c + 1:w + 1], acts, start_step=w - c + 1, truth=truth,
                         seed=seed), truth is not None
        env, frame = self._fresh_game(seed)  # a fresh reset is game step 0
        return Start(frame[None], [], start_step=0, truth=env if ground_truth else None, seed=seed), ground_truth

    def _fresh_game(self, seed: int) -> tuple[Any, np.ndarray]:
        """A Crafter game just after reset, and its frame. Generating a world takes about a
        second of CPU, a copy of a generated one about a millisecond (and plays the same), so
        the last few seeds' worlds are kept."""
        from worldsim.envs.crafter import CrafterEnv

        with self._lock:
            hit = self._worlds.pop(seed, None)
        if hit is None:
            env = CrafterEnv(size=self.frame_size[0], seed=seed)
            hit = (env, env.reset())
        with self._lock:
            self._worlds[seed] = hit
            while len(self._worlds) > 8:
                self._worlds.pop(next(iter(self._worlds)))
        env, frame = hit
        return copy.deepcopy(env), frame.copy()


# -- per connection ----------------------------------------------------------------------------
class Outbox:
    """One frame slot and a send window: `put` replaces an unsent frame; `get` waits until a
    frame is there and fewer than `window` sent frames are unacknowledged. An unsent real frame
    (a reset's) is never replaced: the newest dreamed frame waits behind it instead, since a
    client that reset waits for the real frame."""

    def __init__(self, window: int):
        self.window = window
        self.item: FrameOut | None = None
        self.behind: FrameOut | None = None  # a dreamed frame newer than an unsent real one
        self.failed = False
        self.dropped = 0
        self.unacked: deque[int] = deque()
        self._event = asyncio.Event()

    def put(self, item: FrameOut | None) -> None:
        if item is None:
            self.failed = True
        elif self.item is not None and self.item.decoder is None and item.decoder is not None:
            if self.behind is not None:
                self.dropped += 1
            self.behind = item
        else:
            if self.item is not None:
                self.dropped += 1
            if self.behind is not None:  # a newer real frame: both older ones go
                self.dropped += 1
                self.behind = None
            self.item = item
        self._event.set()

    def awaits(self, index: int) -> bool:
        """Whether `index` acknowledges a frame sent and not acknowledged yet."""
        return bool(self.unacked) and self.unacked[0] <= index <= self.unacked[-1]

    def ack(self, index: int) -> None:
        while self.unacked and self.unacked[0] <= index:
            self.unacked.popleft()
        self._event.set()

    async def get(self) -> FrameOut | None:
        while True:
            if self.failed:
                return None
            if self.item is not None and len(self.unacked) < self.window:
                item, self.item, self.behind = self.item, self.behind, None
                self.unacked.append(item.index)
                return item
            self._event.clear()
            await self._event.wait()


class RateLimit:
    """A token bucket: `rate` messages per second with a burst of one second's worth."""

    def __init__(self, rate: float):
        # At least one message's worth, or a rate under one a second would let none through.
        self.rate, self.burst = rate, max(rate, 1.0)
        self.tokens, self.last = self.burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


async def scheduled(fut: cf.Future) -> Any:
    """The result of a command queued on the scheduler. Shielded: a wait cancelled (the
    connection's other task ended) would otherwise cancel the command's future, and the worker,
    which sets its result later, would fail on it and stop serving every session."""
    waiting = asyncio.wrap_future(fut)
    # Nobody may await it after a cancel: take its exception here, or asyncio logs it as lost.
    waiting.add_done_callback(lambda f: f.cancelled() or f.exception())
    return await asyncio.shield(waiting)


class Closing(Exception):
    """Close the connection with this code and reason (after an optional error message)."""

    def __init__(self, code: int, reason: str, error: P.Error | None = None):
        super().__init__(reason)
        self.code, self.reason, self.error = code, reason, error


@dataclass(eq=False)  # kept in a set: hashed by identity
class Connection:
    ws: ServerConnection
    peer: str
    opened: float = field(default_factory=time.monotonic)
    sid: int | None = None
    hello: P.Hello | None = None
    seed: int = 0
    outbox: Outbox | None = None
    frames: int = 0
    first_frame: float | None = None
    last_frame: float | None = None
    latencies: deque = field(default_factory=lambda: deque(maxlen=4096))  # ms, input -> sent
    errors: int = 0
    dropped_messages: int = 0
    close_code: int = CLOSE_NORMAL
    close_reason: str = ""
    closed_by: str = "client"  # or "server": who sent the close first
    last_seq: int | None = None  # of the last action taken: seq must increase

    def summary(self) -> str:
        span = (self.last_frame - self.first_frame) if self.frames > 1 else 0.0
        fps = (self.frames - 1) / span if span > 0 else 0.0
        lat = list(self.latencies)  # p95 as bench and eval take it (with two samples it read the lower)
        lat_s = (f"latency median {statistics.median(lat):.1f} ms p95 {float(np.percentile(lat, 95)):.1f} ms"
                 if lat else "latency -")
        sess = f"session {self.sid}" if self.sid is not None else "no session"
        return (f"{self.peer} {sess}: {self.frames} frames in {time.monotonic() - self.opened:.1f} s open "
                f"({fps:.1f} fps while frames came), {lat_s}, {self.errors} errors; closed {self.close_code}"
                f"{' ' + self.close_reason if self.close_reason else ''} by the {self.closed_by}")


def ws_url(host: str, port: int) -> str:
    """The address a client dials: an IPv6 host goes in brackets (ws://[::1]:8765)."""
    return f"ws://[{host}]:{port}" if ":" in host else f"ws://{host}:{port}"


def encode_image(image: np.ndarray, encoding: str, quality: int) -> bytes:
    if encoding == "raw":
        return np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    from PIL import Image  # Pillow: JPEG encoding (a dependency of worldsim and of crafter)

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class FrameServer:
    """Serves one engine (through its scheduler) to many websocket clients."""

    def __init__(self, scheduler: Scheduler, game: Game, settings: ServerSettings | None = None):
        self.scheduler, self.game = scheduler, game
        self.settings = settings or ServerSettings()
        self.settings.check()
        self.connections: set[Connection] = set()
        self.sessions = 0  # connections holding (or opening) a session
        self.port: int | None = None
        self._server = None
        self._stop: asyncio.Event | None = None

    # -- running -------------------------------------------------------------------------------
    async def serve(self, ready: threading.Event | None = None) -> None:
        """Serve until `stop()`; `ready` is set once the socket is bound (`self.port`)."""
        s = self.settings
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        try:
            server = await serve(self._handle, s.host, s.port, max_size=s.max_message,
                                 compression=None,  # frames are JPEG or small: deflate buys nothing
                                 max_queue=64, close_timeout=2)
        except OSError as e:
            raise ServeError(f"cannot listen on {s.host}:{s.port}: {e.strerror or e}") from None
        async with server:
            self._server = server
            self.port = server.sockets[0].getsockname()[1]
            log.info("listening on %s", ws_url(s.host, self.port))
            if ready is not None:
                ready.set()
            await self._stop.wait()
            server.close()
            await server.wait_closed()

    def stop(self) -> None:
        """Stop serving; safe to call from any thread."""
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def stats(self) -> dict[str, Any]:
        """For tests and monitoring: sessions and what each connection holds unsent."""
        return {"sessions": self.sessions, "scheduler_sessions": self.scheduler.active,
                "connections": [{"peer": c.peer, "frames": c.frames,
                                 "outbox": int(c.outbox is not None and c.outbox.item is not None),
                                 "unacked": len(c.outbox.unacked) if c.outbox else 0,
                                 "write_buffer": c.ws.transport.get_write_buffer_size()}
                                for c in self.connections]}

    # -- one connection ------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        peer = ws.remote_address
        conn = Connection(ws, f"{peer[0]}:{peer[1]}" if peer else "?")
        self.connections.add(conn)
        holds_session = False
        try:
            hello = await self._hello(conn)
            if self.sessions >= self.settings.max_sessions:
                n = self.settings.max_sessions
                raise Closing(CLOSE_TRY_LATER, f"server full: {n} of {n} sessions in use",
                              P.Error(P.SERVER_FULL, f"all {n} sessions are in use; try again later"))
            self.sessions += 1
            holds_session = True
            await self._open(conn, hello)
            await self._play(conn)
        except Closing as c:
            conn.close_code, conn.close_reason, conn.closed_by = c.code, c.reason, "server"
            if c.error is not None:
                await self._send_quietly(conn, c.error)
            await self._close(ws, c.code, c.reason)
        except websockets.ConnectionClosed as e:
            rcvd, sent = e.rcvd, e.sent
            if sent is not None and (rcvd is None or e.rcvd_then_sent is False):
                # The server closed first: a message over the size limit, or a shutdown.
                conn.closed_by, frame = "server", sent
            else:
                frame = rcvd
            conn.close_code = frame.code if frame else ws.close_code or CLOSE_GOING_AWAY
            conn.close_reason = (frame.reason if frame else "") or ("message too big" if conn.close_code == 1009 else "")
        except Exception as e:  # a fault of the server's or its game's: the client hears why
            log.exception("the session of %s failed", conn.peer)
            conn.close_code, conn.close_reason, conn.closed_by = CLOSE_INTERNAL, "internal error", "server"
            await self._send_quietly(conn, P.Error(P.INTERNAL, f"the server failed: {type(e).__name__}: {e}"))
            await self._close(ws, CLOSE_INTERNAL, "internal error")
        finally:
            if conn.sid is not None:
                self.scheduler.close(conn.sid)
            if holds_session:
                self.sessions -= 1
            self.connections.discard(conn)
            if ws.close_code is not None and conn.close_code == CLOSE_NORMAL and ws.close_code != CLOSE_NORMAL:
                conn.close_code, conn.close_reason = ws.close_code, ws.close_reason or conn.close_reason
            log.info("%s", conn.summary())

    @staticmethod
    async def _close(ws: ServerConnection, code: int, reason: str) -> None:
        """Close, reading (and dropping) what the client still sends meanwhile: a client
        blocked on a full socket (a flood) could not otherwise answer the close."""
        async def drain() -> None:
            try:
                while True:
                    await ws.recv()
            except websockets.ConnectionClosed:
                pass

        drainer = asyncio.create_task(drain())
        try:
            await ws.close(code, reason)
        finally:
            drainer.cancel()

    async def _recv(self, conn: Connection, timeout: float) -> bytes | str:
        try:
            return await asyncio.wait_for(conn.ws.recv(), timeout)
        except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11
            raise Closing(CLOSE_GOING_AWAY, f"idle for {timeout:g} s") from None

    async def _hello(self, conn: Connection) -> P.Hello:
        for _ in range(HELLO_TRIES):
            data = await self._recv(conn, self.settings.hello_timeout)
            try:
                msg = P.unpack(data, self.settings.max_message, P.CLIENT_TYPES)
            except P.ProtocolError as e:
                await self._error(conn, e.code, str(e))
                continue
            if isinstance(msg, P.Hello):
                break
            await self._error(conn, P.NOT_READY, f"send hello before {msg.TYPE}")
        else:  # a client that never says hello holds no session, but should not hold a socket
            raise Closing(CLOSE_POLICY, f"no hello in {HELLO_TRIES} messages")
        if msg.version != P.VERSION:
            raise Closing(CLOSE_POLICY, f"protocol version {msg.version} unsupported",
                          P.Error(P.BAD_VERSION, f"this server speaks protocol version {P.VERSION}"))
        token = self.settings.token
        if token is not None and not hmac.compare_digest((msg.token or "").encode(), token.encode()):
            raise Closing(CLOSE_POLICY, "bad token", P.Error(P.BAD_TOKEN, "wrong or missing token"))
        return msg

    async def _open(self, conn: Connection, hello: P.Hello) -> None:
        conn.hello = hello
        conn.seed = hello.seed if hello.seed is not None else secrets.randbelow(P.MAX_SEED)
        start, truth = await asyncio.to_thread(self.game.start, conn.seed, hello.ground_truth)
        conn.outbox = Outbox(hello.window)
        loop = asyncio.get_running_loop()
        outbox = conn.outbox

        def deliver(out: FrameOut | None) -> None:  # on the inference thread
            try:
                loop.call_soon_threadsafe(outbox.put, out)
            except RuntimeError:  # the loop has closed (the server is stopping): nobody to tell
                pass

        conn.sid, fut = self.scheduler.open(start, deliver)
        try:
            await scheduled(fut)
        except Exception as e:  # the engine refused the context: the client hears why
            log.exception("opening a session failed")
            raise Closing(CLOSE_INTERNAL, "could not open a session",
                          P.Error(P.INTERNAL, f"could not open a session: {e}")) from None
        h, w = self.game.frame_size
        d = self.scheduler.decoder
        await conn.ws.send(P.pack(P.Welcome(
            session=conn.sid, width=w, height=h, fps=self.scheduler.fps,
            action_space=self.game.space.to_dict(), encoding=hello.encoding, ground_truth=truth,
            decoder=d.name, steps=d.steps, decoders=self.scheduler.decoders, seed=conn.seed,
            temperature=d.sampling.temperature,
            limits={"max_message_bytes": self.settings.max_message,
                    "max_messages_per_second": self.settings.max_rate,
                    "idle_timeout_s": self.settings.idle_timeout, "window": hello.window})))
        if hello.ground_truth and not truth:
            await self._error(conn, P.UNAVAILABLE, "no ground truth for this recorded scene: only "
                                                   "Crafter episodes from `worldsim collect` replay")

    async def _play(self, conn: Connection) -> None:
        tasks = [asyncio.create_task(self._consume(conn)), asyncio.create_task(self._produce(conn))]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            t.result()  # re-raises Closing or ConnectionClosed

    async def _consume(self, conn: Connection) -> None:
        s = self.settings
        limit = RateLimit(s.max_rate)
        dropped_at: deque[float] = deque()
        last_warned = 0.0
        while True:
            data = await self._recv(conn, s.idle_timeout)
            received = time.monotonic()
            try:
                msg: P.Message | None = P.unpack(data, s.max_message, P.CLIENT_TYPES)
                bad = None
            except P.ProtocolError as e:
                msg, bad = None, e
            if isinstance(msg, P.Ack) and conn.outbox.awaits(msg.index):
                # An ack of a frame sent answers the server's own stream, so it takes no share
                # of the client's rate: were it dropped, the send window would stay full and
                # the stream would stop for good.
                conn.outbox.ack(msg.index)
                continue
            if not limit.take():
                conn.dropped_messages += 1
                dropped_at.append(received)
                while dropped_at and dropped_at[0] < received - 1.0:
                    dropped_at.popleft()
                if len(dropped_at) > s.max_rate:  # twice the rate for a second: a flood
                    raise Closing(CLOSE_POLICY, f"flooding: over {2 * s.max_rate:g} messages per second")
                if received - last_warned > 1.0:  # one error a second, not one per message
                    last_warned = received
                    await self._error(conn, P.RATE_LIMITED,
                                      f"over {s.max_rate:g} messages per second; messages dropped")
                continue
            try:
                if bad is not None:
                    raise bad
                await self._dispatch(conn, msg, received)
            except P.ProtocolError as e:
                await self._error(conn, e.code, str(e))

    async def _dispatch(self, conn: Connection, msg: P.Message, received: float) -> None:
        if isinstance(msg, P.Ack):
            conn.outbox.ack(msg.index)
        elif isinstance(msg, P.Action):
            if conn.last_seq is not None and msg.seq <= conn.last_seq:
                # Frames carry the seq of the last action they include: one that went back would
                # make a client's "first frame with seq >= s" wrong.
                raise P.ProtocolError(P.BAD_FIELD, f"field 'seq' must increase: {msg.seq} after {conn.last_seq}")
            action = P.check_action(msg.action, self.game.space.to_dict())
            conn.last_seq = msg.seq
            self.scheduler.submit(conn.sid, action, msg.seq, received)
        elif isinstance(msg, P.Reset):
            if msg.seed is not None:
                conn.seed = msg.seed
            start, _ = await asyncio.to_thread(self.game.start, conn.seed,
                                               conn.hello.ground_truth)
            try:
                await scheduled(self.scheduler.reset(conn.sid, start))
            except Exception as e:  # the session is gone: say why and close
                log.exception("resetting session %s failed", conn.sid)
                raise Closing(CLOSE_INTERNAL, "could not reset the session",
                              P.Error(P.INTERNAL, f"could not reset the session: {e}")) from None
        elif isinstance(msg, P.Config):
            try:
                await scheduled(self.scheduler.configure(conn.sid, msg.decoder, msg.steps, msg.paused))
            except ValueError as e:
                raise P.ProtocolError(P.BAD_FIELD, str(e)) from None
        elif isinstance(msg, P.Hello):
            raise P.ProtocolError(P.BAD_MESSAGE, "hello was already received")

    async def _produce(self, conn: Connection) -> None:
        hello = conn.hello
        while True:
            out = await conn.outbox.get()
            if out is None:
                raise Closing(CLOSE_INTERNAL, "the engine failed on this session",
                              P.Error(P.INTERNAL, "the engine failed; the session is closed"))
            t0 = time.perf_counter()
            if out.image.size <= SMALL_FRAME:
                image, truth = self._encode(out, hello)  # cheaper than a hop to a thread
            else:  # big frames are encoded off the loop, which serves every other client
                image, truth = await asyncio.to_thread(self._encode, out, hello)
            h, w = out.image.shape[:2]
            timings = {**out.timings, "encode": (time.perf_counter() - t0) * 1e3}
            await conn.ws.send(P.pack(P.Frame(index=out.index, seq=out.seq, encoding=hello.encoding,
                                              width=w, height=h, image=image, truth=truth,
                                              step=out.step, decoder=out.decoder, timings=timings,
                                              action=out.action)))
            now = time.monotonic()
            conn.frames += 1
            conn.first_frame = conn.first_frame or now
            conn.last_frame = now
            if out.input_time is not None:
                conn.latencies.append((now - out.input_time) * 1e3)

    @staticmethod
    def _encode(out: FrameOut, hello: P.Hello) -> tuple[bytes, bytes | None]:
        image = encode_image(out.image, hello.encoding, hello.quality)
        truth = encode_image(out.truth, hello.encoding, hello.quality) if out.truth is not None else None
        return image, truth

    async def _error(self, conn: Connection, code: str, message: str) -> None:
        conn.errors += 1
        await conn.ws.send(P.pack(P.Error(code, message[:1024])))

    async def _send_quietly(self, conn: Connection, msg: P.Message) -> None:
        if isinstance(msg, P.Error):  # an exception's text may run long: a client reads 1024
            msg = P.Error(msg.code, msg.message[:1024])
        try:
            await conn.ws.send(P.pack(msg))
        except websockets.ConnectionClosed:
            pass


def make_server(bundle_dir: str | Path, settings: ServerSettings | None = None, fps: float | None = None,
                device: str = "cpu", decoder: Any = None, scene: str | None = None,
                memory: bool = True) -> FrameServer:
    """A server for a bundle: its engine (`settings.max_sessions` cache rows), its game, and a
    started scheduler paced at `fps` (None: the bundle's fps; 0: a frame per input). With
    `memory`, its sessions keep world memory where the bundle allows it (inference/memory.py)."""
    from worldsim.inference.engine import Engine

    settings = settings or ServerSettings()
    settings.check()
    game = Game.from_bundle(bundle_dir, scene=scene)
    # Welcome states these within the protocol's bounds (a client refuses a welcome outside
    # them): checked before the model loads.
    rate = game.fps if fps is None else fps
    if not 0 <= rate <= P.MAX_FPS:
        raise ServeError(f"--fps must lie in [0, {P.MAX_FPS:g}], got {rate:g}")
    if decoder is not None and not 1 <= decoder.steps <= P.MAX_STEPS:
        raise ServeError(f"--steps must lie in [1, {P.MAX_STEPS}] to serve, got {decoder.steps}")
    temperature = decoder.sampling.temperature if decoder is not None else None
    if temperature is not None and temperature > P.MAX_TEMPERATURE:
        raise ServeError(f"--temperature must be at most {P.MAX_TEMPERATURE:g} to serve, got {temperature:g}")
    try:
        engine = Engine.from_bundle(bundle_dir, device=device, decoder=decoder,
                                    max_sessions=settings.max_sessions, memory=memory)
    except ValueError as e:  # a decoder that does not fit the model
        raise ServeError(str(e)) from None
    return FrameServer(Scheduler(engine, game.space, rate).start(), game, settings)


class ServerThread:
    """A server on its own event loop in a background thread (for `worldsim play` and tests):
    `start()` returns once it listens; `stop()` closes it and its scheduler."""

    def __init__(self, server: FrameServer):
        self.server = server
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="worldsim-server", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(self._ready))
        except BaseException as e:  # handed to start() in the caller's thread
            self._error = e
            self._ready.set()

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            try:
                self.server.stop()
            except RuntimeError:  # its loop is already gone
                pass
            self.server.scheduler.stop()  # whose thread started with the server
            if self._error is not None:
                raise self._error
            raise ServeError(f"the server did not start within {timeout:g} s")
        return self

    @property
    def url(self) -> str:
        return ws_url(self.server.settings.host, self.server.port)

    def stop(self, timeout: float = 5.0) -> None:
        self.server.stop()
        self._thread.join(timeout)
        self.server.scheduler.stop()
