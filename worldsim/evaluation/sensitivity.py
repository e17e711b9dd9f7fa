"""Action sensitivity: does the model's teacher-forced loss depend on the actions?

On real windows, the validation loss with the recorded actions and with the actions shuffled
across the batch (each window gets another window's actions). The gap, in nats per image
token, is reported overall and on the frames where the real view changed visibly; a model that
ignores its actions shows no gap. Both runs draw the same block-diffusion masks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from worldsim.model import WorldModel
from worldsim.objectives import ar_inputs, block_diffusion_inputs


@torch.no_grad()
def frame_losses(model: WorldModel, frames_BFN: torch.Tensor, actions_BFA: torch.Tensor,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced loss summed per target frame, and the number of loss tokens per frame:
    (B, F) float64 and (B, F) int64 (frame 0 is context and has none)."""
    cfg = model.cfg
    b, f, n = frames_BFN.shape
    dev = next(model.parameters()).device
    frames_BFN, actions_BFA = frames_BFN.to(dev), actions_BFA.to(dev)
    if cfg.objective == "ar":
        x = ar_inputs(cfg, frames_BFN, actions_BFA)
        h = model.hidden(x["tokens"], x["positions"], prev_BT=x["prev"], causal=True)
        frame_T = (torch.arange(1, x["targets"].shape[1] + 1, device=dev)) // cfg.block_len
    else:
        g = torch.Generator().manual_seed(seed)  # the same masks for true and shuffled actions
        x = block_diffusion_inputs(cfg, frames_BFN, actions_BFA, g)
        keep = (f - 1) * n  # the noisy half holds every loss token
        h = model.hidden(x["tokens"], x["positions"], mask=x["mask"], prev_BT=x["prev"])[:, :keep]
        x = {k: x[k][:, :keep] for k in ("targets", "loss_mask")}
        frame_T = torch.arange(keep, device=dev) // n + 1
    sel = x["loss_mask"]  # (B, T)
    logits = model.head(h, image_only=True).float()  # (B, T, K)
    targets = torch.where(sel, x["targets"], torch.zeros_like(x["targets"]))  # action ids are not classes
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(b, -1)
    ce = torch.where(sel, ce, torch.zeros_like(ce)).double()
    idx = frame_T.expand(b, -1)
    loss = torch.zeros(b, f, dtype=torch.float64, device=dev).scatter_add_(1, idx, ce)
    count = torch.zeros(b, f, dtype=torch.long, device=dev).scatter_add_(1, idx, sel.long())
    return loss.cpu(), count.cpu()


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation with no fixed point (n >= 2): a random cycle through all n."""
    p = rng.permutation(n)
    perm = np.empty(n, np.int64)
    perm[p] = np.roll(p, -1)
    return perm


def action_sensitivity(model: WorldModel, frames_BFN: torch.Tensor, actions_BFA: torch.Tensor,
                       changed_BF: torch.Tensor, seed: int = 0, batch: int = 16) -> dict[str, Any]:
    """Loss with true and with shuffled actions (nats per image token), overall and on frames
    whose real view changed (`changed_BF`, bool: frame f differs visibly from frame f-1)."""
    b = frames_BFN.shape[0]
    rng = np.random.default_rng(seed)
    if b >= 2:
        shuffled = actions_BFA[torch.from_numpy(derangement(b, rng))]
    elif actions_BFA.shape[1] >= 3:
        # One window: shuffle in time the actions that condition a frame (all but the last),
        # with no action left in its place, or the "shuffled" run could be the true one.
        f = actions_BFA.shape[1]
        shuffled = torch.cat([actions_BFA[:, torch.from_numpy(derangement(f - 1, rng))], actions_BFA[:, -1:]], 1)
    else:  # one window of two frames: one action that matters, nothing to shuffle it with
        none = {"tokens": 0, "loss_true": None, "loss_shuffled": None, "gap": None}
        return {"windows": b, "frames_per_window": int(frames_BFN.shape[1]), "all": none, "changed": dict(none)}
    sums = {}
    for name, acts in (("true", actions_BFA), ("shuffled", shuffled)):
        parts = [frame_losses(model, frames_BFN[i:i + batch], acts[i:i + batch], seed + i)
                 for i in range(0, b, batch)]
        sums[name] = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    count = sums["true"][1]
    out: dict[str, Any] = {"windows": b, "frames_per_window": int(frames_BFN.shape[1])}
    for subset, sel in (("all", torch.ones_like(changed_BF)), ("changed", changed_BF)):
        n_tok = int(count[sel].sum())
        if n_tok == 0:
            out[subset] = {"tokens": 0, "loss_true": None, "loss_shuffled": None, "gap": None}
            continue
        lt = float(sums["true"][0][sel].sum()) / n_tok
        ls = float(sums["shuffled"][0][sel].sum()) / n_tok
        out[subset] = {"tokens": n_tok, "loss_true": lt, "loss_shuffled": ls, "gap": ls - lt}
    return out
