"""The pygame window: keys and mouse in, the served model's frames out.

    F1   HUD: frames/s, median action-to-frame latency, decoder, steps and temperature
    F2   next decoder            F3 / F4   fewer / more decoder steps
    F5   reset                   P         pause (F8 too; in Crafter P places a plant, so F8)
    F9   record (mp4, and an episode store: a recording becomes training data)
    F12  screenshot              Esc       release the mouse, then quit

The window only calls the connection's send/latest (DIAMOND's Game -> PlayEnv split): it draws
each frame the server sends, upscaled with nearest-neighbour sampling, with the real game's
frame beside it when ground truth is on. `autopilot` presses keys by itself (demos, smoke
tests under SDL_VIDEODRIVER=dummy); `gif` keeps the session as shown. Imports only the protocol
module (through the connection) and pygame; recordings and GIFs are written by
`worldsim.data.recording`, imported (with numpy and imageio) only when one is written.
"""

from __future__ import annotations

import io
import os
import time
import zlib
from collections import deque
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
import pygame  # noqa: E402  (after the line above, which silences pygame's banner)

from worldsim import protocol as P
from worldsim.client.connection import Connection, ConnectionFailed
from worldsim.client.keymaps import Keymap, keymap_for

GAP = 8  # pixels between the dream and the real game
KEEPALIVE_S = 30.0  # while paused, a message this often, so that no idle timeout closes the game
RESEND_S = 1.0  # in lockstep, an input unanswered this long goes again
HUD_LINE = 18
GIF_MAX_FRAMES = 1200  # --gif keeps the session's last frames: two minutes at 10 frames/s


def decode_frame(frame: P.Frame) -> tuple[pygame.Surface, pygame.Surface | None]:
    """A frame message -> (dream, real game or None) surfaces at their own size."""
    def one(data: bytes) -> pygame.Surface:
        if frame.encoding == "raw":
            return pygame.image.frombytes(data, (frame.width, frame.height), "RGB")
        return pygame.image.load(io.BytesIO(data), "frame.jpg")
    return one(frame.image), (one(frame.truth) if frame.truth is not None else None)


class NoWindow(RuntimeError):
    """The window cannot open (no display, or no video driver)."""


def open_display() -> None:
    """Start pygame's display (and fonts), or raise NoWindow: `worldsim play` asks before it
    loads a model. Display and fonts only: pygame.init() would also open the sound card, which
    a world model does not use (and which logs errors on machines without one)."""
    try:
        pygame.display.init()
        pygame.font.init()
    except pygame.error as e:  # no video driver
        raise NoWindow(str(e)) from None


def close_display() -> None:
    pygame.quit()


class Recorder:
    """Frames as shown and the action that made each, as the server applied it (the inputs
    since the frame before, merged); written on `stop` as an mp4 and an episode in the
    episode-store format (`worldsim.data.store`) per unbroken stretch. A reset, or frames the
    window never got (a slow client is sent only the newest), end a stretch, so that every
    recorded step is a step of one game under the action recorded with it."""

    def __init__(self, welcome: P.Welcome):
        self.welcome = welcome
        self.frames: list[bytes] = []  # RGB, (H, W, 3) each: the stretch being recorded
        self.actions: list[Any] = []
        self.steps: list[int] = []  # each frame's game step: its daylight, for Crafter
        self.stretches: list[tuple[list[bytes], list[Any], list[int]]] = []  # the finished ones
        self.count = 0  # frames recorded in all
        self.last_step: int | None = None
        self.real = welcome.ground_truth  # the real game's frames make better training data

    def add(self, dream: pygame.Surface, truth: pygame.Surface | None, frame: P.Frame, sent: Any) -> None:
        surface = truth if (self.real and truth is not None) else dream
        follows = frame.decoder is not None and self.last_step is not None and frame.step == self.last_step + 1
        if self.frames and not follows:
            self._cut()
        if self.frames:  # `sent`: a server that does not say which action it applied
            self.actions.append(frame.action if frame.action is not None else sent)
        self.frames.append(pygame.image.tobytes(surface, "RGB"))
        self.steps.append(frame.step)
        self.last_step = frame.step
        self.count += 1

    def _cut(self) -> None:
        if len(self.frames) >= 2:
            self.stretches.append((self.frames, self.actions, self.steps))
        self.frames, self.actions, self.steps = [], [], []

    def stop(self, out_dir: Path) -> list[Path]:
        self._cut()
        if not self.stretches:
            return []
        from worldsim.data.recording import write_recording  # numpy and imageio: only now

        w = self.welcome
        return [path for frames, actions, steps in self.stretches
                for path in write_recording(out_dir, frames, w.height, w.width, actions, w.action_space,
                                            int(w.fps or 10), {"recorder": "worldsim play", "real": self.real},
                                            steps=steps)]


class Autopilot:
    """Presses keys by itself, for demos and smoke tests: runs of one move (the view scrolls
    tile by tile), now and then the action key. It posts ordinary pygame key events, so the
    window plays exactly as it does under a person's hands."""

    def __init__(self, keymap: Keymap, seed: int = 0):
        import random

        self.rng = random.Random(seed)
        moves = [pygame.K_w, pygame.K_a, pygame.K_s, pygame.K_d]
        self.moves = [k for k in moves if keymap.uses(k)]
        self.act = pygame.K_SPACE if keymap.uses(pygame.K_SPACE) else None
        self.key: int | None = None
        self.left = 0

    def __call__(self, window: "GameWindow") -> None:
        self.left -= 1
        if self.left > 0 or not self.moves:
            return
        if self.key is not None:
            pygame.event.post(pygame.event.Event(pygame.KEYUP, key=self.key))
        if self.act is not None and self.rng.random() < 0.25:
            self.key, self.left = self.act, self.rng.randint(1, 3)
        else:
            self.key, self.left = self.rng.choice(self.moves), self.rng.randint(2, 8)
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=self.key))


class GameWindow:
    def __init__(self, conn: Connection, scale: int | None = None, out_dir: str | Path = ".",
                 max_fps: int = 120, autopilot: bool = False, gif: str | Path | None = None):
        self.conn = conn
        self.welcome = conn.welcome
        w = self.welcome
        self.keymap: Keymap = keymap_for(w.action_space)
        self.scale = scale or max(1, 576 // w.height)
        self.out_dir = Path(out_dir)
        self.max_fps = max_fps
        self.decoder, self.steps = w.decoder, w.steps
        self.held: list[int] = []  # keys held, in the order they were pressed
        self.fresh: set[int] = set()  # keys pressed since the last input sent
        self.taps: list[int] = []  # of those, the ones already released: sent once all the same
        self.buttons: set[int] = set()
        self.motion = [0.0, 0.0]  # mouse motion since the last action sent
        self.last_sent: Any = None
        self.last_message = time.monotonic()  # when the window last sent the server anything
        # While paused, a message often enough that the server's announced idle timeout (a
        # third of it, so that one late message still keeps the game) never closes the game.
        idle = (w.limits or {}).get("idle_timeout_s") or 0
        self.keepalive_s = min(KEEPALIVE_S, idle / 3) if idle > 0 else KEEPALIVE_S
        self.new_frame = True  # a frame arrived since the last action was sent
        self.paused = self.hud = self.quit = False
        self.mouse_captured = False
        self.recorder: Recorder | None = None
        self.frame: P.Frame | None = None
        self.arrivals: deque[float] = deque(maxlen=64)
        self.frames_shown = 0
        self.saved: list[Path] = []
        self.autopilot = Autopilot(self.keymap) if autopilot else None
        self.gif = Path(gif) if gif is not None else None
        # the window at half size, one per frame shown, zlib-compressed (pixel art shrinks about
        # 25-fold, so a long session holds little): the last GIF_MAX_FRAMES of them
        self.gif_frames: deque[bytes] = deque(maxlen=GIF_MAX_FRAMES)
        self.gif_seen = 0  # frames kept for the GIF, those since dropped included

        width = w.width * self.scale * (2 if w.ground_truth else 1) + (GAP if w.ground_truth else 0)
        open_display()
        try:
            self.screen = pygame.display.set_mode((width, w.height * self.scale))
        except pygame.error as e:  # no screen to draw on
            close_display()
            raise NoWindow(str(e)) from None
        pygame.display.set_caption(f"worldsim: {w.action_space['name']} (F1 help)")
        self.font = pygame.font.Font(None, 20)
        self.view: list[tuple[pygame.Surface, tuple[int, int]]] = []  # the scaled frames, placed
        if self.keymap.captures_mouse:
            self._capture(True)
        if conn.first_frame is not None:
            self._show(conn.first_frame)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, max_frames: int | None = None,
            on_frame: Callable[["GameWindow"], None] | None = None) -> int:
        """Play until the window closes (or `max_frames` frames were shown); returns frames shown."""
        if self.gif is not None and self.frame is not None and not self.gif_frames:
            self._draw()
            self._keep_for_gif()  # the real frame the session starts from
        try:
            while not self.quit and (max_frames is None or self.frames_shown < max_frames):
                try:
                    self._events()
                    if self.quit:
                        break
                    if not self.paused:
                        self._send_input()
                    elif time.monotonic() - self.last_message > self.keepalive_s:
                        self.conn.configure(paused=True)  # a paused player is not an idle one
                        self.last_message = time.monotonic()
                except ConnectionFailed:
                    self.conn.latest(timeout=1.0)  # the reason of the close comes with it
                    self._say_errors()
                    print(f"worldsim play: the server closed the session: {self.conn.closed_reason or 'closed'}")
                    break
                self._say_errors()
                frame = self.conn.latest(timeout=1.0 / self.max_fps)
                if frame is not None:
                    self._show(frame)
                    if self.autopilot is not None:
                        self.autopilot(self)
                    if on_frame is not None:
                        on_frame(self)
                elif not self.conn.open_now:
                    print(f"worldsim play: the server closed the session: {self.conn.closed_reason}")
                    break
                self._draw()
                if frame is not None and self.gif is not None:
                    self._keep_for_gif()
        finally:
            self._stop_recording()
            self._write_gif()
        return self.frames_shown

    def close(self) -> None:
        close_display()

    # -- input ---------------------------------------------------------------------------------------
    def _events(self) -> None:
        for e in pygame.event.get():
            if e.type == pygame.QUIT:
                self.quit = True
            elif e.type == pygame.KEYDOWN:
                self._key_down(e.key)
            elif e.type == pygame.KEYUP:
                if e.key in self.held:
                    self.held.remove(e.key)
                if e.key in self.fresh and e.key not in self.taps:
                    self.taps.append(e.key)  # pressed and released before anything was sent
            elif e.type == pygame.MOUSEMOTION and self.mouse_captured and not self.paused:
                self.motion[0] += e.rel[0]  # summed: every event since the last frame counts
                self.motion[1] += e.rel[1]
            elif e.type == pygame.MOUSEBUTTONDOWN:
                if self.keymap.captures_mouse and not self.mouse_captured:
                    self._capture(True)
                else:
                    self.buttons.add(e.button)
            elif e.type == pygame.MOUSEBUTTONUP:
                self.buttons.discard(e.button)

    def _key_down(self, key: int) -> None:
        if key == pygame.K_ESCAPE:
            if self.mouse_captured:
                self._capture(False)
            else:
                self.quit = True
        elif key == pygame.K_F1:
            self.hud = not self.hud
        elif key == pygame.K_F2:
            names = self.welcome.decoders
            self.decoder = names[(names.index(self.decoder) + 1) % len(names)] if self.decoder in names else names[0]
            self.conn.configure(decoder=self.decoder)
        elif key in (pygame.K_F3, pygame.K_F4):
            self.steps = max(1, min(P.MAX_STEPS, self.steps + (1 if key == pygame.K_F4 else -1)))
            self.conn.configure(steps=self.steps)
        elif key == pygame.K_F5:
            self.conn.reset(wait=False)
            self.last_sent = None  # a reset lets go of held keys: say again which are held
        elif key in (pygame.K_F8, pygame.K_PAUSE) or (key == pygame.K_p and not self.keymap.uses(key)):
            self.paused = not self.paused
            self.motion = [0.0, 0.0]  # the mouse moved while paused turns nothing
            self.conn.configure(paused=self.paused)
            self.last_message = time.monotonic()
        elif key == pygame.K_F9:
            self._toggle_recording()
        elif key == pygame.K_F12:
            self.saved.append(self.screenshot())
        elif key not in self.held:
            self.held.append(key)
            self.fresh.add(key)

    def _capture(self, on: bool) -> None:
        self.mouse_captured = on
        pygame.event.set_grab(on)
        pygame.mouse.set_visible(not on)

    def current_action(self) -> Any:
        keys = self.held + [k for k in self.taps if k not in self.held]  # a tap counts as the newest
        return self.keymap.action(keys, sorted(self.buttons), (self.motion[0], self.motion[1]))

    def _send_input(self) -> None:
        """Send the input when it changed, when the mouse moved, or, when the server makes a
        frame per input (fps 0), once per frame received."""
        action = self.current_action()
        moved = self.motion != [0.0, 0.0]
        # In lockstep a frame answers each input; one that never came (the input was dropped
        # for rate) would otherwise stop the game: after a second, the input goes again.
        lockstep = self.welcome.fps == 0 and (self.new_frame or time.monotonic() - self.last_message > RESEND_S)
        if action != self.last_sent or moved or lockstep:
            self.conn.send_action(action)
            self.last_sent = action
            self.motion = [0.0, 0.0]
            self.new_frame = False
            self.last_message = time.monotonic()
            self.fresh.clear()
            self.taps.clear()

    def _say_errors(self) -> None:
        """What the server reports (a refused setting, ground truth it cannot give, a rate
        limit), as it comes."""
        while self.conn.errors:
            print(f"worldsim play: server: {self.conn.errors.popleft().message}")

    # -- output ------------------------------------------------------------------------------------
    def _show(self, frame: P.Frame) -> None:
        dream, truth = decode_frame(frame)
        self.frame = frame
        self.new_frame = True
        self.frames_shown += 1
        self.arrivals.append(time.monotonic())
        w, h = frame.width * self.scale, frame.height * self.scale
        # pygame.transform.scale samples the nearest pixel: Crafter's tiles stay crisp.
        self.view = [(pygame.transform.scale(dream, (w, h)), (0, 0))]
        if truth is not None:
            self.view.append((pygame.transform.scale(truth, (w, h)), (w + GAP, 0)))
        if self.recorder is not None:
            self.recorder.add(dream, truth, frame, self.last_sent if self.last_sent is not None else
                              self.keymap.action([]))

    def _draw(self) -> None:
        """The newest frame and, over it, the HUD, redrawn every pass so that turning the HUD
        off (or resuming) clears it at once."""
        self.screen.fill((0, 0, 0))
        for surface, at in self.view:
            self.screen.blit(surface, at)
        self._draw_hud()
        pygame.display.flip()

    def _temperature(self) -> str:
        t = self.welcome.temperature
        return "" if t is None else "  greedy" if t == 0 else f"  T {t:g}"

    def _draw_hud(self) -> None:
        if not self.hud and not self.paused and self.recorder is None:
            return
        lines = []
        if self.hud:
            fps = (len(self.arrivals) - 1) / (self.arrivals[-1] - self.arrivals[0]) \
                if len(self.arrivals) > 1 and self.arrivals[-1] > self.arrivals[0] else 0.0
            lat = self.conn.median_latency()
            lines += [f"{fps:.1f} fps   latency {lat:.0f} ms" if lat is not None else f"{fps:.1f} fps",
                      f"{self.decoder} steps {self.steps}{self._temperature()} (F2 decoder, F3/F4 steps)",
                      f"frame {self.frame.index if self.frame else 0}  game step {self.frame.step if self.frame else 0}",
                      "F5 reset  F8 pause  F9 record  F12 shot  Esc quit"]
        if self.paused:
            lines.append("paused")
        if self.recorder is not None:
            lines.append(f"recording {self.recorder.count} frames")
        for i, text in enumerate(lines):
            surf = self.font.render(text, True, (255, 255, 255), (0, 0, 0))
            self.screen.blit(surf, (4, 4 + i * HUD_LINE))

    def _keep_for_gif(self) -> None:
        w, h = self.screen.get_size()
        half = pygame.transform.scale(self.screen, (w // 2, h // 2))
        self.gif_frames.append(zlib.compress(pygame.image.tobytes(half, "RGB"), 1))
        self.gif_seen += 1

    def _write_gif(self) -> None:
        if self.gif is None or not self.gif_frames:
            return
        from worldsim.data.recording import write_gif  # numpy and imageio: only now

        w, h = self.screen.get_size()
        n = write_gif(self.gif, map(zlib.decompress, self.gif_frames), h // 2, w // 2, self.welcome.fps or 10)
        self.saved.append(self.gif)
        kept = f"the last {n} of {self.gif_seen} frames" if n < self.gif_seen else f"{n} frames"
        print(f"worldsim play: wrote {kept} to {self.gif}")

    def screenshot(self, path: str | Path | None = None) -> Path:
        if path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path, n = self.out_dir / f"worldsim-{stamp}.png", 1
            while path.exists():  # two in one second keep both
                n += 1
                path = self.out_dir / f"worldsim-{stamp}-{n}.png"
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pygame.image.save(self.screen, str(path))
        return path

    def _toggle_recording(self) -> None:
        if self.recorder is None:
            self.recorder = Recorder(self.welcome)
        else:
            self._stop_recording()

    def _stop_recording(self) -> None:
        if self.recorder is not None:
            rec, self.recorder = self.recorder, None
            written = rec.stop(self.out_dir)
            self.saved += written
            if written:
                print(f"worldsim play: recorded {rec.count} frames: {', '.join(map(str, written))}")
