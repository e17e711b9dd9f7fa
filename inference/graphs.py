"""Replayed passes: each decoding pass shape is captured once as a CUDA graph and replayed.

A block-diffusion frame makes two kinds of pass, the fused one ([clean frame t + action t ;
noisy frame t+1], L + N tokens) and the later ones (the noisy frame, N tokens), and for a fixed
set of sessions their shapes never change. Launched one by one, a pass of the 20-layer
`mineworld-300m` shape dispatches some 750 operators (`benchmarks/host_overhead.py`), each
costing the host a few microseconds, so on a fast GPU the host, not the device, sets the frame
rate. A CUDA graph replays all of a pass's kernels with one launch.

What a replay reads must live at fixed addresses, so every input of the captured forward is a
static buffer that each pass copies into: the tokens, positions and previous-frame hints, and the
cache's plan for the pass (the attention mask, the rotations, the rows to write; a pass without a
mask is a shape of its own). The cache's own tensors are fixed already, and the sessions' rows
must be a consecutive range (views, not copies); other row sets run eagerly.

On devices without CUDA graphs `run` calls the same forward on the same static buffers, so the
plumbing (what is copied where, what is keyed by what) is tested on any machine; only the
capture itself needs a GPU.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from worldsim.model import WorldModel
from worldsim.inference.cache import KVCache, PassPlan
from worldsim.inference.common import pass_logits



class PassGraphs:
    def __init__(self, model: WorldModel, cache: KVCache, capture: bool | None = None):
        """capture: record CUDA graphs (default: when the cache is on a CUDA device)."""
        self.model, self.cache = model, cache
        self.capture = cache.device.type == "cuda" if capture is None else capture
        if self.capture and cache.device.type != "cuda":
            raise ValueError("CUDA graphs need the model and cache on a CUDA device")
        self.entries: dict[tuple, dict[str, Any]] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None
        self.replays = 0  # passes served from a static entry (for tests and stats)

    def _forward(self, e: dict[str, Any]) -> torch.Tensor:
        return pass_logits(self.model, self.cache, e["tokens"], e["pos"], e["prev"], e["keep"])

    def run(self, tokens_BT: torch.Tensor, pos_BT: torch.Tensor, prev_BT: torch.Tensor,
            keep: int) -> torch.Tensor:
        """Logits (B, keep, K) of the last `keep` tokens of a pass that `cache.prepare` has
        just planned. The result is a static buffer: read it before the next `run`."""
        plan = self.cache.plan
        assert plan is not None, "call cache.prepare() before run()"
        rows = plan.rows
        if not isinstance(rows, slice):  # scattered rows: index copies, no fixed addresses
            e = {"tokens": tokens_BT, "pos": pos_BT, "prev": prev_BT, "keep": keep}
            return self._forward(e)
        key = (rows.start, rows.stop, tokens_BT.shape[1], keep, plan.mask is None)
        e = self.entries.get(key)
        if e is None:
            static = {k: getattr(plan, k).clone() for k in PassPlan.TENSORS if getattr(plan, k) is not None}
            e = {"tokens": tokens_BT.clone(), "pos": pos_BT.clone(), "prev": prev_BT.clone(),
                 "keep": keep, "plan": replace(plan, **static)}
            self.cache.plan = e["plan"]
            e["out"] = self._record(e) if self.capture else None
            self.entries[key] = e
        else:
            for name, src in (("tokens", tokens_BT), ("pos", pos_BT), ("prev", prev_BT)):
                e[name].copy_(src)
            for k in PassPlan.TENSORS:
                if getattr(plan, k) is not None:
                    getattr(e["plan"], k).copy_(getattr(plan, k))
            self.cache.plan = e["plan"]
        self.replays += 1
        if not self.capture:
            return self._forward(e)
        e["graph"].replay()
        return e["out"]

    def _record(self, e: dict[str, Any]) -> torch.Tensor:
        # Warm up on a side stream (lazy initialisation must not be captured), then capture.
        # Both write this pass's keys into the cache, as the replay that follows does again.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._forward(e)
        torch.cuda.current_stream().wait_stream(side)
        e["graph"] = torch.cuda.CUDAGraph()
        with torch.cuda.graph(e["graph"], pool=self.pool):
            out = self._forward(e)
        return out

    def clear(self) -> None:
        """Forget every captured pass (their memory goes back to the pool)."""
        self.entries.clear()
