"""Bundles: a folder that describes a model completely.

    BUNDLE/config.json                 {"format": "worldsim.bundle", "version": 1,
                                        "image_tokenizer": {...}, "action_tokenizer": {...},
                                        "model": {...}, "env": ..., "metrics": {...}}
    BUNDLE/<component>.safetensors     weights of each component that has them

Every hyper-parameter lives in config.json, so loading builds each component from its config
and then assigns the weights from a memory-mapped safetensors file. Nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from worldsim.errors import WorldsimError
from worldsim.fileio import atomic_open, atomic_write_json

FORMAT = "worldsim.bundle"
VERSION = 1


class BundleError(WorldsimError):
    pass


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise BundleError(f"{folder} is not a worldsim bundle (no config.json)")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from e
    if cfg.get("format") != FORMAT:
        raise BundleError(f"{path} is not a worldsim bundle config (format {cfg.get('format')!r})")
    if cfg.get("version") != VERSION:
        raise BundleError(f"{path} has bundle version {cfg.get('version')}; this worldsim reads {VERSION}")
    return cfg


def update_config(folder: str | os.PathLike, **entries: Any) -> dict[str, Any]:
    """Merge top-level entries into the bundle's config.json (made if missing), atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = read_config(folder) if (folder / "config.json").exists() else {"format": FORMAT, "version": VERSION}
    cfg.update(entries)
    atomic_write_json(folder / "config.json", cfg)
    return cfg


def save_weights(folder: str | os.PathLike, component: str, module: torch.nn.Module) -> Path:
    path = Path(folder) / f"{component}.safetensors"
    tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    with atomic_open(path, "wb") as f:
        f.write(save(tensors))
    return path


def load_weights(folder: str | os.PathLike, component: str, module: torch.nn.Module) -> torch.nn.Module:
    """Assign weights from BUNDLE/<component>.safetensors (memory-mapped) into `module`."""
    path = Path(folder) / f"{component}.safetensors"
    if not path.is_file():
        raise BundleError(f"bundle {folder} has no weights for {component} ({path.name} missing)")
    try:
        sd = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for torn or foreign files
        raise BundleError(f"cannot read {path}: {e}") from e
    missing, unexpected = module.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise BundleError(f"{path} does not match the config: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}")
    return module
