"""`worldsim play`: a pygame window onto a served model (an embedded server by default)."""

from __future__ import annotations

import argparse

from worldsim.commands._args import nonneg_int, out_dir, out_file, positive_int, seed
from worldsim.commands.serve import add_engine_args

HELP = """\
Play a world model in a window: keys and mouse go to the model, its frames come back.
Without --server it starts a server for the bundle in the background on a free loopback port;
with --server it joins a running `worldsim serve`.

  worldsim play                                   # the shipped Crafter model
  worldsim play --bundle runs/wm --ground-truth   # the real game beside the dream
  worldsim play --server ws://gpu-box:8765 --token SECRET
  SDL_VIDEODRIVER=dummy worldsim play --autoplay --frames 100 --gif play.gif   # no screen needed

Crafter: WASD move, Space do, Tab sleep, R/T/F/P place stone/table/furnace/plant, 1-6 craft.
MineRL: WASD, Space jump, Shift sneak, Ctrl sprint, mouse look, clicks attack/use, 1-9 hotbar,
E inventory, Q drop, P pause. F1 HUD, F2 decoder, F3/F4 steps, F5 reset, F8 pause, F9 record,
F12 screenshot, Esc releases the mouse, then quits."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("play", help="play a model in a pygame window",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default=None, help="join this server (ws://HOST:PORT) instead of starting one")
    p.add_argument("--token", default=None, help="the server's token, if it asks for one")
    # hello carries a seed of at most 31 bits: checked now, not by the server once a model loaded
    p.add_argument("--seed", type=seed, default=None, help="the game's seed (default: random)")
    p.add_argument("--ground-truth", action="store_true",
                   help="also step the real game with your actions and show it beside the dream")
    p.add_argument("--encoding", choices=["jpeg", "raw"], default="jpeg", help="frame encoding (default: jpeg)")
    p.add_argument("--scale", type=positive_int, default=None, help="window pixels per frame pixel (default: fits 576)")
    p.add_argument("--frames", type=nonneg_int, default=0, help="quit after this many frames (default: 0, never)")
    # checked now: a folder that cannot be written would otherwise end the game at F12 or F9
    p.add_argument("--out", type=out_dir, default=".", help="folder for screenshots and recordings (default: .)")
    p.add_argument("--autoplay", action="store_true",
                   help="press keys by itself (runs of moves, now and then the action key): demos, smoke tests")
    p.add_argument("--gif", type=out_file, default=None,
                   help="also write the session, as shown, to this GIF (its last 1,200 frames: two "
                        "minutes at 10 frames/s; F9 records a whole session)")
    add_engine_args(p)
    p.set_defaults(func=run)


def engine_defaults() -> dict:
    """The engine arguments and their defaults: with --server, any other value is refused."""
    p = argparse.ArgumentParser(add_help=False)
    add_engine_args(p)
    return vars(p.parse_args([]))


def no_window(e: Exception) -> str:
    return f"cannot open a window: {e} (SDL_VIDEODRIVER=dummy plays without a screen, with --autoplay and --gif)"


def run(args: argparse.Namespace) -> int:
    from worldsim.client.game import NoWindow, close_display, open_display
    from worldsim.errors import WorldsimError

    url = args.server
    if url is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in engine_defaults().items() if getattr(args, k) != v]
        if given:  # they shape the embedded server's engine; a running server has its own
            raise WorldsimError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} up the model "
                                "`worldsim play` serves itself; with --server, give it to `worldsim serve` there")
    elif args.token is not None:  # the server it starts itself asks for none
        raise WorldsimError("--token is for a server joined with --server; `worldsim play` without "
                            "--server starts its own, which takes no token")
    try:  # before a model loads: a machine without a screen is told at once
        open_display()
    except NoWindow as e:
        raise WorldsimError(no_window(e)) from None
    try:
        return play(args, url)
    finally:
        close_display()  # whatever stopped it: the window, a refused session, Ctrl-C


def play(args: argparse.Namespace, url: str | None) -> int:
    from worldsim.client.connection import Connection, ConnectionFailed
    from worldsim.client.game import GameWindow, NoWindow
    from worldsim.errors import WorldsimError

    embedded = None
    if url is None:
        from worldsim.commands.serve import build_server
        from worldsim.inference.server import ServerSettings, ServerThread

        # One player, who may pause for as long as they like: no idle timeout.
        _, dev, server = build_server(args, ServerSettings(host="127.0.0.1", port=0, max_sessions=1,
                                                           idle_timeout=1e9))
        embedded = ServerThread(server).start()
        url = embedded.url
    try:
        try:
            conn = Connection(url, encoding=args.encoding, seed=args.seed,
                              ground_truth=args.ground_truth, token=args.token).open()
        except ConnectionFailed as e:
            raise WorldsimError(str(e)) from None
        try:
            try:
                window = GameWindow(conn, scale=args.scale, out_dir=args.out, autopilot=args.autoplay, gif=args.gif)
            except NoWindow as e:
                raise WorldsimError(no_window(e)) from None
            interrupted = False
            try:
                shown = window.run(max_frames=args.frames or None)
            except KeyboardInterrupt:  # Ctrl-C ends a game as the window does: the summary still comes
                interrupted, shown = True, window.frames_shown
            finally:
                window.close()
        finally:
            conn.close()
        lat = conn.median_latency()
        print(f"worldsim play: {shown} frame{'' if shown == 1 else 's'} from {url}"
              + (f", median action-to-frame latency {lat:.1f} ms" if lat is not None else ""))
        if interrupted:
            raise KeyboardInterrupt
    finally:
        if embedded is not None:
            embedded.stop()
    return 0
