"""`worldsim info`: versions, devices, threads and which optional integrations are available."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import os
import platform
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show versions, devices, threads and optional integrations",
                       description="Show versions, compute devices, thread counts and which "
                                   "optional integrations (MineRL, ffmpeg, ...) are available, and "
                                   "the shipped model (or --bundle): what it is and the temperature "
                                   "it plays at; with --preset, the shape and parameter count of a "
                                   "model preset.")
    p.add_argument("--preset", default=None,
                   help="also describe a model preset: tiny | crafter | mineworld-300m")
    p.add_argument("--bundle", default=None, help="describe this bundle instead of the shipped model")
    p.set_defaults(func=run)


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def describe_bundle(folder: str) -> str:
    """One line: objective, game, size, memory, training and the temperature it plays at."""
    from worldsim.bundle import PLAY_TEMPERATURE, BundleError, read_config, recorded_temperature
    from worldsim.model import ModelConfig

    cfg = read_config(folder)
    model, metrics = cfg.get("model") or {}, cfg.get("model_metrics") or {}
    for key, value in (("model", model), ("model_metrics", metrics)):
        if not isinstance(value, dict):
            raise BundleError(f"{Path(folder) / 'config.json'}: {key} must be a JSON object, not "
                              f"{type(value).__name__}")
    # A key the model config lacks (a bundle from before it existed) loads as its default.
    model = {"objective": ModelConfig.objective, "frames": ModelConfig.frames, **model} if model else {}
    game = cfg.get("env", "an unnamed game")
    if not model:  # nothing to play: say what the bundle holds instead
        held = [name for key, name in (("idm", "an inverse dynamics model"), ("image_tokenizer", "an image tokenizer"))
                if cfg.get(key)]
        return f"{folder}: no world model; {' and '.join(held) or 'nothing worldsim reads'} for {game}"
    parts = [f"{model['objective']} on {game}"]
    if not (Path(folder) / "model.safetensors").is_file():
        parts.append(_no_weights(Path(folder)))
    if metrics.get("params"):
        parts.append(f"{metrics['params'] / 1e6:.1f}M parameters")
    if model.get("frames"):
        parts.append(f"{model['frames']}-frame window")
    if metrics.get("steps"):
        loss = f", val loss {metrics['val_loss']:.3f}" if metrics.get("val_loss") is not None else ""
        parent = " from a parent bundle" if cfg.get("init") else ""
        parts.append(f"{metrics['steps']:,} steps{parent}{loss}")
    if (interp := metrics.get("interpolated")) is not None:
        # scripts/ship_model.py --interpolate: neither the run's weights nor the parent's
        parts.append(f"weights {interp['alpha']:g} of the way from the parent's to the run's")
    t = recorded_temperature(folder)
    parts.append(f"plays at temperature {t:g}" if t is not None
                 else f"records no temperature (plays at {PLAY_TEMPERATURE:g})")
    # As inference.memory.geometry_for decides it, from the config alone (no torch here).
    tokenizer = cfg.get("image_tokenizer")
    if model["objective"] == "block_diffusion" and game == "crafter" \
            and isinstance(tokenizer, dict) and tokenizer.get("kind") == "tile":
        parts.append("with world memory")
    return f"{folder}: " + ", ".join(parts)


def _no_weights(folder: Path) -> str:
    """What a bundle without model.safetensors is: a run training into it (or stopped before it
    wrote them) has a checkpoint; anything else lost its weights."""
    from worldsim.checkpoint import read_checkpoint_state
    from worldsim.errors import WorldsimError
    from worldsim.trainer import STATE_FILE

    if (folder / STATE_FILE).is_file():
        try:
            step = read_checkpoint_state(folder / STATE_FILE).get("step")
        except WorldsimError:
            step = None
        at = f" (its checkpoint is at step {step:,})" if isinstance(step, int) else ""
        return f"no weights yet: a training run that has not finished{at}"
    return "its weights (model.safetensors) missing"


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
                 else "no (needs MineRL 1.0 and Java 8; see minerl.readthedocs.io; "
                      "`collect --from-vpt` reads VPT recordings without it)"))
    from worldsim.bundle import BundleError, find_bundle

    if args.bundle is not None:
        rows.append(("bundle", describe_bundle(find_bundle(args.bundle))))
    else:
        try:
            rows.append(("shipped model", describe_bundle(find_bundle(None))))
        except BundleError:
            rows.append(("shipped model", "none found (a checkout has one in assets/models/crafter)"))
    if args.preset:
        from worldsim.errors import WorldsimError
        from worldsim.model import preset_config

        try:
            cfg = preset_config(args.preset)
        except ValueError as e:
            raise WorldsimError(str(e)) from None
        rows.append((f"preset {args.preset}",
                     f"{cfg.num_params() / 1e6:.1f}M parameters ({cfg.num_params():,}): hidden {cfg.dim}, "
                     f"FFN {cfg.ffn_dim}, {cfg.n_layers} layers, {cfg.n_heads} heads, {cfg.n_kv_heads} KV "
                     f"heads of dim {cfg.head_dim}, vocab {cfg.vocab_size}, {cfg.frames} frames of "
                     f"{cfg.block_len} tokens ({cfg.grid[0]}x{cfg.grid[1]} image + {cfg.action_tokens} action)"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0
