"""Seeded tiny world models for decoder tests."""

import torch

from worldsim.model import WorldModel, preset_config


def tiny_model(objective: str, sharpen: float = 1.0, rope: str = "1d") -> WorldModel:
    """A seeded tiny model. `sharpen` scales its matrices: at the initial scale a random model's
    greedy tokens hardly depend on their context (a block-diffusion frame comes out the same for
    any action and any number of steps), so a decoder that fed the wrong context would pass."""
    torch.manual_seed(0)
    model = WorldModel(preset_config("tiny", objective=objective, rope=rope)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(sharpen)
    return model
