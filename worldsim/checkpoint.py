"""Training checkpoints as single safetensors files: model weights, optimizer state and a JSON
header in one atomic write. Nothing is pickled, so resuming never executes code from a file.

Tensor names: `model.<param>` for weights, `optim.<param index>.<key>` for optimizer state,
`ema.<param>` for the moving average of the weights where a run keeps one.
The safetensors metadata holds `state` (JSON): step, optimizer param_groups, anything else the
trainer keeps (RNG seeds, best validation loss, the run's arguments).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from worldsim.errors import WorldsimError
from worldsim.fileio import atomic_open, deferred_signals


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None, state: dict[str, Any],
                    ema: torch.nn.Module | None = None) -> None:
    """Write the checkpoint atomically. Ctrl-C and SIGTERM wait until it is in place (from the
    first copy of a weight on), so the checkpoint written on the way out of a run survives a
    second Ctrl-C."""
    with deferred_signals():
        _save(path, model, optimizer, state, ema)


def _save(path: str | os.PathLike, model: torch.nn.Module,
          optimizer: torch.optim.Optimizer | None, state: dict[str, Any],
          ema: torch.nn.Module | None = None) -> None:
    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().contiguous().cpu() for k, v in ema.state_dict().items()})
    header = dict(state)
    if optimizer is not None:
        sd = optimizer.state_dict()
        for idx, s in sd["state"].items():
            for key, value in s.items():
                t = value if torch.is_tensor(value) else torch.tensor(value)
                tensors[f"optim.{idx}.{key}"] = t.detach().contiguous().cpu()
        header["optim_param_groups"] = sd["param_groups"]
    with atomic_open(path, "wb") as f:
        f.write(save(tensors, metadata={"state": json.dumps(header)}))


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    ema: torch.nn.Module | None = None) -> dict[str, Any]:
    """Restore model (and optimizer, and the weights' moving average) in place; returns the
    saved state dict, with `ema_saved` saying whether the checkpoint held an average and
    `ema_restored` whether it went into `ema`."""
    state = read_checkpoint_state(path)
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for torn or foreign files
        raise WorldsimError(f"cannot read the checkpoint {path}: {e}; delete it to start the run over") from e
    try:
        model.load_state_dict(_part(tensors, "model"))
    except RuntimeError:  # another model's state (checkpoints from before they named their run)
        raise WorldsimError(f"{path} holds the training state of another model (its weights do not "
                            "fit this one); choose another --out") from None
    if optimizer is not None and "optim_param_groups" in state:
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, key = k.split(".", 2)
                per_param.setdefault(int(idx), {})[key] = v
        try:
            optimizer.load_state_dict({"state": per_param, "param_groups": state["optim_param_groups"]})
        except ValueError as e:  # parameters were split or merged since the checkpoint was written
            raise WorldsimError(f"{path}: its optimizer state does not fit this model's parameters "
                                f"({e}); start a new run in another folder") from None
    ema_sd = _part(tensors, "ema")
    state["ema_saved"] = bool(ema_sd)
    state["ema_restored"] = ema is not None and bool(ema_sd)
    if state["ema_restored"]:
        ema.load_state_dict(ema_sd)
    return state


def checkpoint_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model's weights in a checkpoint (its last step's, not the moving average), as a state
    dict, without building the model."""
    try:
        return _part(load_file(str(path)), "model")
    except Exception as e:  # safetensors raises its own error types for torn or foreign files
        raise WorldsimError(f"cannot read the checkpoint {path}: {e}") from e


def _part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors saved under `prefix.`, with the prefix taken off."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def read_checkpoint_state(path: str | os.PathLike) -> dict[str, Any]:
    """The saved state dict (step, seconds, ...) from the header alone, without the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            state = json.loads((f.metadata() or {}).get("state", "{}"))
    except Exception as e:  # safetensors raises its own error types for torn or foreign files
        raise WorldsimError(f"cannot read the checkpoint {path}: {e}; delete it to start the run over") from e
    if not isinstance(state, dict):  # a foreign file's "state": callers look keys up in it
        raise WorldsimError(f"{path} is not a worldsim checkpoint (its state is a JSON "
                            f"{type(state).__name__}, not an object); choose another --out")
    return state


def checkpoint_exists(path: str | os.PathLike) -> bool:
    return Path(path).is_file()
