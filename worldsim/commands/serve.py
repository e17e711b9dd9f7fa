"""`worldsim serve`: stream a bundle's dreams to websocket clients (protocol v1)."""

from __future__ import annotations

import argparse
from pathlib import Path

from worldsim.commands._args import device, nonneg_float, positive_float, positive_int

HELP = """\
Serve a world model over websockets (msgpack messages, docs/protocol.md). Each client gets a
session that starts from a real game frame (a Crafter reset with the client's seed, or a
recorded episode with --scene) and gets a frame per tick of the game clock (--fps, default the
bundle's) dreamed from its newest input; all sessions are stepped as one batch.

  worldsim serve                                  # the shipped model on ws://127.0.0.1:8765
  worldsim serve --bundle runs/wm --fps 0         # a frame per input, as fast as they come
  worldsim serve --host 0.0.0.0 --token SECRET    # other machines need a token (or --insecure)
  worldsim serve --scene data/crafter:000003:40   # start from frame 40 of a recorded episode"""

DEFAULT_BUNDLE = Path("assets") / "models" / "crafter"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="stream a model's frames to players over websockets",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0: any free port)")
    p.add_argument("--max-sessions", type=positive_int, default=4, help="players at once (default: 4)")
    p.add_argument("--token", default=None, help="clients must send this token in hello")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without --token")
    p.add_argument("--max-rate", type=positive_float, default=240.0,
                   help="client messages per second before they are dropped (default: 240)")
    p.add_argument("--idle-timeout", type=positive_float, default=300.0,
                   help="seconds without a client message before closing (default: 300)")
    p.set_defaults(func=run)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """Arguments `serve` and `play` (for its embedded server) share."""
    p.add_argument("--bundle", default=None, help=f"a trained bundle (default: the shipped model, {DEFAULT_BUNDLE})")
    p.add_argument("--fps", type=nonneg_float, default=None,
                   help="frames per second of the game clock (default: the bundle's; 0: a frame "
                        "per input, as fast as the engine makes them)")
    p.add_argument("--device", type=device, default="auto", help="cpu | cuda | auto (default: auto)")
    p.add_argument("--decoder", default="auto", help="ar | diagonal | block_diffusion | auto (default: auto)")
    p.add_argument("--steps", type=positive_int, default=4, help="block-diffusion passes per frame (default: 4)")
    p.add_argument("--temperature", type=nonneg_float, default=None,
                   help="sampling temperature (default: the bundle's own, chosen on held-out windows; "
                        "0.8 for a bundle that records none)")
    p.add_argument("--guidance", type=nonneg_float, default=0.0,
                   help="block-diffusion action guidance: w in logits + w * (logits - logits under "
                        "the no-op); each pass runs twice the rows. It lost in the study: the "
                        "shipped model's dreams scroll less with it (default: 0, off)")
    p.add_argument("--scene", default=None,
                   help="start sessions from a recorded episode: STORE[:EPISODE[:FRAME]]")
    p.add_argument("--no-memory", action="store_true",
                   help="dream without world memory: by default a Crafter model of tile tokens keeps the "
                        "map it has drawn, so a place the player comes back to looks as it was left")


def find_bundle(bundle: str | None) -> str:
    """The bundle to serve: --bundle, else the shipped model, else one line on getting one."""
    from worldsim.bundle import find_bundle as find

    return find(bundle, "model to play")


def build_server(args: argparse.Namespace, settings):
    from worldsim.bundle import play_temperature
    from worldsim.device import pick_device
    from worldsim.inference.engine import DecoderSettings
    from worldsim.inference.sampling import SamplingSettings
    from worldsim.inference.server import make_server

    bundle = find_bundle(args.bundle)
    dev = pick_device(args.device)
    decoder = DecoderSettings(args.decoder, steps=args.steps, guidance=args.guidance,
                              sampling=SamplingSettings(temperature=play_temperature(bundle, args.temperature)))
    return bundle, dev, make_server(bundle, settings, fps=args.fps, device=str(dev),
                                    decoder=decoder, scene=args.scene, memory=not args.no_memory)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import time

    from worldsim.inference.server import ServerSettings

    settings = ServerSettings(host=args.host, port=args.port, max_sessions=args.max_sessions,
                              token=args.token, insecure=args.insecure, max_rate=args.max_rate,
                              idle_timeout=args.idle_timeout)
    settings.check()  # before the model loads: a refused address costs nothing
    logging.basicConfig(level=logging.INFO, format="worldsim serve: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    bundle, dev, server = build_server(args, settings)
    sched = server.scheduler
    n = settings.max_sessions
    print(f"worldsim serve: {bundle} on {dev}, {sched.decoder.name} decoder at temperature "
          f"{sched.decoder.sampling.temperature:g}, "
          f"{'world memory' if sched.engine.memory is not None else 'no world memory'}, "
          f"{'a frame per input' if sched.fps == 0 else f'{sched.fps:g} fps'}, "
          f"up to {n} session{'s' if n != 1 else ''} (Ctrl-C stops)", flush=True)
    t0 = time.monotonic()
    try:
        asyncio.run(server.serve())
    except KeyboardInterrupt:  # the way to stop a server: not an error
        pass
    finally:
        sched.stop()
    print(f"worldsim serve: served {sched.frames} frames in {sched.batches} batches "
          f"over {time.monotonic() - t0:.0f} s")
    return 0
