"""The world model's optimizers: AdamW, or Muon for the hidden matrices with AdamW for the rest.

Muon (torch.optim.Muon) orthogonalises each matrix's momentum by Newton-Schulz iterations before
the step. It is meant for the 2-D weights inside the transformer's blocks; embeddings, the output
head and the norms' gains stay with AdamW. Its step is scaled to AdamW's RMS
(`adjust_lr_fn="match_rms_adamw"`), so one peak learning rate and one schedule drive both.

`OptimizerChain` steps several optimizers as one: the training loop sets learning rates through
`param_groups` and the checkpoint stores one `state_dict`, numbered as if the chain were a single
optimizer over all its parameters.
"""

from __future__ import annotations

from typing import Any

import torch

OPTIMIZERS = ("adamw", "muon")
DEFAULT_OPTIMIZER = "muon"  # new runs; a resumed run keeps its own


class OptimizerChain:
    """Several optimizers over disjoint parameters, stepped, zeroed and checkpointed as one."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict[str, Any]:
        """One optimizer's layout: parameter ids run on from one optimizer to the next."""
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        offset = 0
        for o in self.optimizers:
            sd = o.state_dict()
            state.update({offset + i: s for i, s in sd["state"].items()})
            groups += [{**g, "params": [offset + i for i in g["params"]]} for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        groups = sd["param_groups"]
        want = [len(o.param_groups) for o in self.optimizers]
        if len(groups) != sum(want):
            raise ValueError(f"the saved optimizer has {len(groups)} parameter groups and this one "
                             f"{sum(want)}: it was written by another --optimizer")
        offset = 0
        for o, n in zip(self.optimizers, want):
            mine, groups = groups[:n], groups[n:]
            ids = [i for g in mine for i in g["params"]]
            o.load_state_dict({
                "state": {i - offset: sd["state"][i] for i in ids if i in sd["state"]},
                "param_groups": [{**g, "params": [i - offset for i in g["params"]]} for g in mine]})
            offset += len(ids)


def make_optimizer(model: torch.nn.Module, kind: str, lr: float, weight_decay: float,
                   fused: bool = False) -> torch.optim.Optimizer | OptimizerChain:
    """AdamW over every parameter (weight decay on matrices but embeddings), or with `kind`
    "muon", Muon over the matrices of the transformer's blocks and AdamW over the rest."""
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {kind!r}; choose one of {', '.join(OPTIMIZERS)}")
    named = list(model.named_parameters())
    hidden = {id(p) for n, p in named if kind == "muon" and p.ndim == 2 and n.startswith("layers.")}
    rest = [(n, p) for n, p in named if id(p) not in hidden]
    decay = [p for n, p in rest if p.ndim >= 2 and "emb" not in n]
    no_decay = [p for n, p in rest if not (p.ndim >= 2 and "emb" not in n)]
    adamw = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}],
                              lr=lr, betas=(0.9, 0.95), fused=fused)
    if kind == "adamw":
        return adamw
    muon = torch.optim.Muon([p for _, p in named if id(p) in hidden], lr=lr,
                            weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
    return OptimizerChain(muon, adamw)
