"""Action-to-frame latency over loopback, and many sessions on one server.

    python benchmarks/latency.py --preset crafter              # random weights: speed only
    python benchmarks/latency.py --bundle assets/models/crafter --device cuda

1. The engine alone: one session's ms per frame (`session.step`, image decode included), and
   `--sessions` sessions stepped as one batch (aggregate frames/s, as `worldsim bench` reports).
2. `worldsim serve --fps 0` in a subprocess (its own interpreter, so the clients here do not
   share its GIL); one client in lockstep measures action-to-frame latency from the client:
   from sending `action` seq s to receiving the first frame with seq >= s (median, p95), next
   to the engine's own ms per frame.
3. `--sessions` clients at once, each in lockstep, for `--seconds`: aggregate frames/s, and
   fairness (the slowest session's frames over the fastest one's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from worldsim.commands._args import device as device_name, existing_dir, out_file, positive_float, positive_int


def preset_bundle(folder: Path, preset: str, objective: str) -> Path:
    """A bundle with random weights for a preset (speed does not depend on weights)."""
    import torch

    from worldsim import bundle
    from worldsim.envs.crafter import CRAFTER_FPS, CRAFTER_SPACE
    from worldsim.model import WorldModel, preset_config
    from worldsim.tokenizers.action import make_action_tokenizer
    from worldsim.tokenizers.image import PRESETS, ImageTokenizer

    if preset != "crafter":
        raise SystemExit("only the crafter preset has a game to serve; use --bundle for others")
    torch.manual_seed(0)
    cfg = preset_config(preset, objective=objective)
    tok = PRESETS["crafter"]
    bundle.save_weights(folder, "model", WorldModel(cfg))
    bundle.save_weights(folder, "image_tokenizer", ImageTokenizer(tok))
    bundle.update_config(folder, image_tokenizer=tok.to_dict(), model=cfg.to_dict(),
                         action_tokenizer=make_action_tokenizer(CRAFTER_SPACE, cfg.codebook_size).to_config(),
                         env="crafter", action_space=CRAFTER_SPACE.to_dict(),
                         frame_size=[tok.height, tok.width], fps=CRAFTER_FPS)
    return folder


def engine_figures(bundle_dir: Path, device: str, steps: int, frames: int, sessions: int) -> dict:
    import torch

    from worldsim.envs.crafter import CrafterEnv
    from worldsim.inference.engine import DecoderSettings, Engine

    engine = Engine.from_bundle(bundle_dir, device=device, decoder=DecoderSettings(steps=steps),
                                max_sessions=sessions)
    h = engine.image_tokenizer.cfg.height
    env = CrafterEnv(size=h, seed=0)
    first = env.reset()[None]  # (1, H, W, 3)
    rng = np.random.default_rng(0)

    def sync() -> None:
        if engine.device.type == "cuda":
            torch.cuda.synchronize()

    one = engine.open(first, [], seed=0)
    ms = []
    for i in range(frames + 3):
        t0 = time.perf_counter()
        one.step(int(rng.integers(0, 17)))
        sync()
        if i >= 3:  # the first frames warm caches and allocators
            ms.append((time.perf_counter() - t0) * 1e3)
    one.close()
    many = [engine.open(first, [], seed=i) for i in range(sessions)]
    for _ in range(2):
        engine.step({s: int(rng.integers(0, 17)) for s in many})
    sync()
    n = max(4, frames // 4)
    t0 = time.perf_counter()
    for _ in range(n):
        engine.step({s: int(rng.integers(0, 17)) for s in many})
    sync()
    wall = time.perf_counter() - t0
    for s in many:
        s.close()
    return {"decoder": engine.decoder.name, "steps": engine.decoder.steps, "ms_median": statistics.median(ms),
            "ms_p95": float(np.percentile(ms, 95)), "batched_fps": sessions * n / wall, "sessions": sessions}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle_dir: Path, device: str, steps: int, sessions: int, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "worldsim", "serve", "--bundle", str(bundle_dir), "--fps", "0",
           "--port", str(port), "--max-sessions", str(sessions), "--device", device, "--steps", str(steps),
           "--max-rate", "100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited: {proc.stdout.read()}")
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start within 120 s")


class StartLine:
    """Clients wait here until every one has its session, so that all run over the same time."""

    def __init__(self, n: int):
        self.n, self.event = n, asyncio.Event()

    async def wait(self) -> None:
        self.n -= 1
        if self.n <= 0:
            self.event.set()
        await self.event.wait()


async def lockstep(url: str, seconds: float | None, frames: int | None, seed: int, warmup: int = 3,
                   start: "StartLine | None" = None, ahead: int = 1) -> dict:
    """One client: send an action, wait for the frame that includes it, acknowledge, repeat.
    With `ahead` > 1 it keeps that many actions sent ahead of the frames, as a player who
    holds a key does: the session always has an input waiting when a frame is done."""
    from websockets.asyncio.client import connect

    from worldsim import protocol as P

    rng = np.random.default_rng(seed)
    lat, count = [], 0
    async with connect(url, compression=None, max_size=P.MAX_SERVER_MESSAGE, open_timeout=60) as ws:
        await ws.send(P.pack(P.Hello(seed=seed)))
        while not isinstance(P.unpack(await ws.recv()), P.Frame):
            pass
        await ws.send(P.pack(P.Ack(index=0)))
        if start is not None:
            await start.wait()
        t_end = time.monotonic() + seconds if seconds else None
        sent: dict[int, float] = {}
        seq = 0
        timings: list[dict] = []
        while (frames is None or count < frames + warmup) and (t_end is None or time.monotonic() < t_end):
            while len(sent) < ahead:
                sent[seq] = time.perf_counter()
                await ws.send(P.pack(P.Action(seq=seq, action=int(rng.integers(0, 17)))))
                seq += 1
            while True:
                msg = P.unpack(await ws.recv())
                if isinstance(msg, P.Frame):
                    await ws.send(P.pack(P.Ack(index=msg.index)))
                    done = [s for s in sent if s <= msg.seq]
                    if done:
                        break
            now = time.perf_counter()
            if count >= warmup:
                lat.append((now - sent[max(done)]) * 1e3)
                timings.append(msg.timings)
            for s in done:
                del sent[s]
            count += 1
    return {"frames": count, "latency": lat, "timings": timings}


async def many(url: str, seeds: list[int], seconds: float, ahead: int, barrier=None) -> list[dict]:
    # Opening a session generates a Crafter world (about a second of the server's CPU): every
    # client starts its clock once all have their sessions.
    start = StartLine(len(seeds))
    tasks = [asyncio.create_task(lockstep(url, seconds, None, seed=i, warmup=0, start=start, ahead=ahead))
             for i in seeds]
    if barrier is not None:  # the other client processes' sessions too
        await start.event.wait()
        await asyncio.to_thread(barrier.wait)
    return await asyncio.gather(*tasks)


def client_process(url, seeds, seconds, ahead, barrier, results) -> None:
    results.put(asyncio.run(many(url, seeds, seconds, ahead, barrier)))


def many_processes(url: str, sessions: int, seconds: float, ahead: int, procs: int) -> list[dict]:
    """`sessions` clients spread over `procs` processes, so that one Python process's speed
    does not cap what the server is measured at."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    groups = [list(range(sessions))[i::procs] for i in range(procs)]
    ps = [ctx.Process(target=client_process, args=(url, g, seconds, ahead, barrier, results)) for g in groups]
    for p in ps:
        p.start()
    out = [r for _ in ps for r in results.get(timeout=seconds + 300)]
    for p in ps:
        p.join()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", type=existing_dir, help="a trained bundle")
    src.add_argument("--preset", choices=["crafter"], help="crafter: random weights")
    p.add_argument("--objective", default="block_diffusion", choices=["ar", "block_diffusion"],
                   help="for --preset (default: block_diffusion)")
    p.add_argument("--device", type=device_name, default="cpu", help="cpu | cuda | auto (default: cpu)")
    p.add_argument("--steps", type=positive_int, default=4, help="block-diffusion passes per frame (default: 4)")
    p.add_argument("--frames", type=positive_int, default=64, help="frames for the latency run (default: 64)")
    p.add_argument("--sessions", type=positive_int, default=16, help="sessions of the many-client run (default: 16)")
    p.add_argument("--seconds", type=positive_float, default=20.0, help="length of the many-session run (default: 20)")
    p.add_argument("--ahead", type=positive_int, default=2,
                   help="actions each of the many sessions keeps sent ahead of its frames (default: 2)")
    p.add_argument("--client-procs", type=positive_int, default=4, help="processes for the many clients (default: 4)")
    p.add_argument("--json", type=out_file, default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    from worldsim.device import pick_device

    args.device = str(pick_device(args.device))  # "auto" made concrete: the server and engine take it
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir = Path(args.bundle) if args.bundle else preset_bundle(Path(tmp) / "bundle", args.preset, args.objective)
        print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; device {args.device}", flush=True)
        eng = engine_figures(bundle_dir, args.device, args.steps, args.frames, args.sessions)
        print(f"engine: {eng['decoder']} K={eng['steps']}: {eng['ms_median']:.1f} ms/frame median "
              f"(p95 {eng['ms_p95']:.1f}); {eng['sessions']} sessions batched: {eng['batched_fps']:.1f} frames/s",
              flush=True)
        port = free_port()
        proc = start_server(bundle_dir, args.device, args.steps, args.sessions, port)
        try:
            url = f"ws://127.0.0.1:{port}"
            one = asyncio.run(lockstep(url, None, args.frames, seed=0))
            lat = one["latency"]
            med, p95 = statistics.median(lat), float(np.percentile(lat, 95))
            split = {k: statistics.median(t.get(k, 0.0) for t in one["timings"]) for k in ("model", "decode", "encode")}
            print(f"served, 1 session: action-to-frame latency {med:.1f} ms median, p95 {p95:.1f} ms "
                  f"(engine {eng['ms_median']:.1f} ms/frame: +{med - eng['ms_median']:.1f} ms); in the server: "
                  + ", ".join(f"{k} {v:.1f} ms" for k, v in split.items()), flush=True)
            runs = many_processes(url, args.sessions, args.seconds, args.ahead, max(1, min(args.client_procs, args.sessions)))
            counts = [r["frames"] for r in runs]
            agg = sum(counts) / args.seconds
            fair = min(counts) / max(counts) if max(counts) else 0.0
            all_lat = [x for r in runs for x in r["latency"]]
            print(f"served, {args.sessions} sessions ({args.ahead} actions ahead) for {args.seconds:g} s: {agg:.1f} frames/s aggregate "
                  f"(engine batched: {eng['batched_fps']:.1f}); slowest/fastest session {fair:.2f} "
                  f"({min(counts)}/{max(counts)} frames); latency median {statistics.median(all_lat):.1f} ms",
                  flush=True)
        finally:
            proc.terminate()
            try:
                out, _ = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
        result = {"source": args.bundle or f"preset {args.preset} ({args.objective}, random weights)",
                  "device": args.device, "engine": eng, "latency_ms_median": med, "latency_ms_p95": p95,
                  "latency_minus_engine_ms": med - eng["ms_median"], "sessions": args.sessions,
                  "aggregate_fps": agg, "fairness": fair, "frames_per_session": counts,
                  "server_split_ms": split, "ahead": args.ahead,
                  "loadavg": os.getloadavg()[0], "server_log": out.splitlines()[-40:]}
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
