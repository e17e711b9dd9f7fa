"""A `reset()` / `step()` face over the websocket (protocol v1), for the pygame window, the
latency benchmark, and any Python program that plays a served model.

    with Connection("ws://127.0.0.1:8765", seed=3) as conn:
        frame = conn.first_frame              # protocol.Frame: the real frame it starts from
        frame = conn.step(2)                  # send an action, wait for the frame that has it
        conn.send_action(2); conn.latest()    # or: fire and forget, take the newest frame

A receiver thread takes every message as it arrives, acknowledges each frame at once (the
server sends at most `window` unacknowledged frames, so a busy player never falls behind), and
keeps only the newest frame. Frames stay encoded (JPEG or raw RGB); the window decodes them.
Imports only the protocol module, the websockets client and the standard library.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import OrderedDict, deque
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import connect

from worldsim import protocol as P


class ConnectionFailed(Exception):
    """The server could not be reached, refused the session, or went away (one-line message)."""


class ActionRefused(ValueError):
    """The server answered an action with an error (outside the action space, malformed, or over
    the rate limit): no frame will include it. The session goes on."""


# The errors that answer an action message: the action was not applied.
_ACTION_ERRORS = frozenset({P.BAD_ACTION, P.BAD_FIELD, P.BAD_MESSAGE, P.RATE_LIMITED})


class Connection:
    def __init__(self, url: str, *, encoding: str = "jpeg", quality: int = 85, seed: int | None = None,
                 ground_truth: bool = False, token: str | None = None, window: int = 2,
                 timeout: float = 30.0):
        self.url = url
        self.hello = P.Hello(encoding=encoding, quality=quality, token=token, seed=seed,
                             ground_truth=ground_truth, window=window)
        self.timeout = timeout
        self.welcome: P.Welcome | None = None
        self.first_frame: P.Frame | None = None
        self.errors: deque[P.Error] = deque(maxlen=64)
        self.errors_received = 0  # all of them, those the deque has dropped included
        self.frames_received = 0
        self.closed_reason: str | None = None
        self._seq = -1
        self._frame: P.Frame | None = None  # the newest frame not yet taken by latest()
        self._newest: P.Frame | None = None
        self._newest_real: P.Frame | None = None  # a reset's frame, which `reset` waits for
        self._cv = threading.Condition()
        self._sent_at: OrderedDict[int, float] = OrderedDict()  # seq -> time sent
        self.latencies: deque[float] = deque(maxlen=512)  # ms, action sent -> frame with it
        self._ws = None
        self._thread: threading.Thread | None = None

    # -- opening and closing ------------------------------------------------------------------
    def open(self) -> "Connection":
        try:
            # Entered as a context manager, which websockets >= 17.1 asks of a connection kept
            # open; close() leaves it.
            self._ws = connect(self.url, compression=None, max_size=P.MAX_SERVER_MESSAGE,
                               open_timeout=self.timeout).__enter__()
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as e:
            raise ConnectionFailed(f"cannot connect to {self.url}: {e}") from None
        try:  # whatever fails from here on, the socket and the receiver go with it
            try:
                self._ws.send(P.pack(self.hello))
                while self.welcome is None:
                    try:
                        msg = P.unpack(self._ws.recv(self.timeout), P.MAX_SERVER_MESSAGE, P.SERVER_TYPES)
                    except P.ProtocolError as e:  # a welcome it cannot read: no session to wait for
                        raise ConnectionFailed(f"{self.url} sent a message this client cannot read: {e}") from None
                    if isinstance(msg, P.Error):
                        # An error before welcome refuses the one hello sent (a field out of
                        # range, a wrong token, a full server): no welcome will come.
                        self.errors.append(msg)
                        raise ConnectionFailed(f"{self.url} refused the session: {msg.message}")
                    elif isinstance(msg, P.Welcome):
                        self.welcome = msg
            except ConnectionClosed as e:
                reason = (e.rcvd.reason if e.rcvd else "") or (self.errors[-1].message if self.errors else "")
                raise ConnectionFailed(f"{self.url} refused the session: {reason or 'connection closed'}") from None
            except TimeoutError:
                raise ConnectionFailed(f"{self.url} did not answer the session's hello in "
                                       f"{self.timeout:g} s") from None
            self._thread = threading.Thread(target=self._receive, name="worldsim-client-recv", daemon=True)
            self._thread.start()
            self.first_frame = self.wait_frame(-1, self.timeout)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> "Connection":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def open_now(self) -> bool:
        return self.closed_reason is None

    # -- sending ----------------------------------------------------------------------------------
    def send_action(self, action: int | dict[str, Any]) -> int:
        """Send the player's input now; returns its sequence number."""
        self._seq += 1
        with self._cv:
            self._sent_at[self._seq] = time.monotonic()
            while len(self._sent_at) > 1024:
                self._sent_at.popitem(last=False)
        self._send(P.Action(seq=self._seq, action=action))
        return self._seq

    def reset(self, seed: int | None = None, wait: bool = True, timeout: float | None = None) -> P.Frame | None:
        """Start again from a real frame; returns it (with `wait`)."""
        after = self._newest.index if self._newest else -1
        self._send(P.Reset(seed=seed))
        return self.wait_frame(after, timeout or self.timeout, real=True) if wait else None

    def configure(self, decoder: str | None = None, steps: int | None = None,
                  paused: bool | None = None) -> None:
        self._send(P.Config(decoder=decoder, steps=steps, paused=paused))

    def step(self, action: int | dict[str, Any], timeout: float | None = None) -> P.Frame:
        """Send an action and wait for the first frame that includes it. An action the server
        refuses raises ActionRefused with its reason at once (no frame would include it)."""
        with self._cv:
            seen = self.errors_received
        seq = self.send_action(action)
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cv:
            while not (self._newest is not None and self._newest.seq >= seq):
                new = list(self.errors)[-min(self.errors_received - seen, len(self.errors)):] \
                    if self.errors_received > seen else []
                refused = next((e for e in new if e.code in _ACTION_ERRORS), None)
                if refused is not None:
                    raise ActionRefused(f"{self.url} refused the action: {refused.message}")
                self._wait(deadline)
            self._frame = None
            return self._newest

    def _send(self, msg: P.Message) -> None:
        try:
            self._ws.send(P.pack(msg))
        except ConnectionClosed:
            raise ConnectionFailed(f"the server closed the session: {self.closed_reason or 'closed'}") from None

    # -- receiving --------------------------------------------------------------------------------
    def latest(self, timeout: float = 0.0) -> P.Frame | None:
        """The newest frame not taken yet (older ones are skipped), waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._frame is None and timeout > 0 and time.monotonic() < deadline and self.open_now:
                self._cv.wait(max(0.0, deadline - time.monotonic()))
            frame, self._frame = self._frame, None
            return frame

    def wait_frame(self, after_index: int, timeout: float, real: bool = False) -> P.Frame:
        """The newest frame with an index above `after_index` (with `real`: a real frame, as
        after a reset)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                # A real frame may already lie under a newer dreamed one: look at the newest real.
                got = self._newest_real if real else self._newest
                if got is not None and got.index > after_index:
                    break
                self._wait(deadline)
            self._frame = None
            return got

    def median_latency(self) -> float | None:
        with self._cv:
            return statistics.median(self.latencies) if self.latencies else None

    def _wait(self, deadline: float) -> None:
        if not self.open_now:
            raise ConnectionFailed(f"the server closed the session: {self.closed_reason}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise ConnectionFailed(f"no frame from {self.url} in time")
        self._cv.wait(left)

    def _recv(self, timeout: float | None) -> P.Message:
        data = self._ws.recv(timeout)
        try:
            return P.unpack(data, P.MAX_SERVER_MESSAGE, P.SERVER_TYPES)
        except P.ProtocolError as e:
            return P.Error(e.code, f"the server sent a bad message: {e}")

    def _receive(self) -> None:
        reason = "closed"
        try:
            while True:
                msg = self._recv(None)
                if isinstance(msg, P.Frame):
                    self._ws.send(P.pack(P.Ack(index=msg.index)))  # opens the server's window
                    self._on_frame(msg)
                elif isinstance(msg, P.Error):
                    with self._cv:
                        self.errors.append(msg)
                        self.errors_received += 1
                        self._cv.notify_all()  # a step waiting on a refused action
        except ConnectionClosed as e:
            rcvd = e.rcvd
            reason = f"{rcvd.code} {rcvd.reason}".strip() if rcvd else "connection lost"
        finally:
            with self._cv:
                self.closed_reason = reason
                self._cv.notify_all()

    def _on_frame(self, frame: P.Frame) -> None:
        now = time.monotonic()
        with self._cv:
            sent = self._sent_at.pop(frame.seq, None)
            if sent is not None:
                self.latencies.append((now - sent) * 1e3)
                for seq in [s for s in self._sent_at if s < frame.seq]:  # merged into this frame
                    del self._sent_at[seq]
            self.frames_received += 1
            self._frame = self._newest = frame
            if frame.decoder is None:
                self._newest_real = frame
            self._cv.notify_all()
