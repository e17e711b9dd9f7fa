"""`worldsim info`: versions, devices, threads and which optional integrations are available."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import os
import platform


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show versions, devices, threads and optional integrations",
                       description="Show versions, compute devices, thread counts and which "
                                   "optional integrations (MineRL, ffmpeg, ...) are available.")
    p.set_defaults(func=run)


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run(args: argparse.Namespace) -> int:
    import torch

    from worldsim import __version__

    rows: list[tuple[str, str]] = [
        ("worldsim", __version__),
        ("python", f"{platform.python_version()} ({platform.machine()}, {platform.system()})"),
    ]
    for dist in ("torch", "numpy", "crafter", "pygame", "websockets", "msgpack", "imageio",
                 "safetensors", "tqdm"):
        rows.append((dist, _version(dist)))
    rows.append(("cpu cores", str(os.cpu_count())))
    rows.append(("torch threads", f"{torch.get_num_threads()} intra-op, "
                                  f"{torch.get_num_interop_threads()} inter-op"))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            prop = torch.cuda.get_device_properties(i)
            rows.append((f"cuda:{i}", f"{prop.name}, {prop.total_memory / 2**30:.0f} GiB, "
                                      f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"))
    else:
        rows.append(("cuda", "not available"))
    mps = getattr(torch.backends, "mps", None)
    rows.append(("mps", "available" if mps is not None and mps.is_available() else "not available"))
    try:
        import imageio_ffmpeg

        ffmpeg = f"yes ({imageio_ffmpeg.get_ffmpeg_exe()})"
    except (ImportError, RuntimeError):
        ffmpeg = "no (pip install imageio-ffmpeg)"
    rows.append(("mp4 (ffmpeg)", ffmpeg))
    rows.append(("minerl", _version("minerl") if _available("minerl")
                 else "no (needs MineRL 1.0 and Java 8; see minerl.readthedocs.io)"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0
