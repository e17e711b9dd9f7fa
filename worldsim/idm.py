"""Inverse dynamics model (IDM): which action led from one frame to the next.

    worldsim train-idm --data data/crafter --out runs/idm
    worldsim eval --bundle runs/wm --data data/crafter --idm runs/idm

It measures action following: run on a dreamed rollout's consecutive frames, its predictions
are scored against the actions that drove the dream, beside its score on real held-out pairs
(the ceiling: what it reads from the real game). A small conv net over (frame t, frame t+1,
their difference), one classification head per action-token slot over the action tokenizer's
ids, so the same model serves Crafter (1 slot, 17 actions) and MineRL (11 slots in MineWorld's
layout). Trained on the store's training episodes (the episode store's split rule), so its
score on the validation episodes is held out.

Scores (`score_actions`): Crafter groups movement (left, right, up, down, none: every other
action) apart from the other actions, as MineWorld groups MineRL's keys; MineRL reports each
key slot (forward/back, left/right, sprint/sneak, use/attack, jump, drop/pickItem) and the
camera's mean bin error.

The IDM folder is a bundle (config.json + idm.safetensors) with the action tokenizer it
predicts; training is resumable from train_state.safetensors like the other trainers.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from worldsim import bundle
from worldsim.checkpoint import load_checkpoint, save_checkpoint
from worldsim.config import strict_from_dict
from worldsim.data.store import EpisodeStore
from worldsim.envs.base import ActionSpace
from worldsim.errors import WorldsimError
from worldsim.fileio import clean_stale_temps, deferred_signals
from worldsim.metrics import precision_recall_f1
from worldsim.tokenizers.action import ActionTokenizer, action_tokenizer_from_config, make_action_tokenizer
from worldsim.train_settings import IDMTrainSettings  # noqa: F401 (its home before; imported from here)

STATE_FILE = "train_state.safetensors"
MOVES = ("none", "left", "right", "up", "down")  # Crafter's movement group
_CRAFTER_MOVES = {"move_left": 1, "move_right": 2, "move_up": 3, "move_down": 4}
# MineWorld's grouping of MineRL keys: (name, token slot); camera slots 1 and 2 are scored by bin error.
_MINERL_GROUPS = (("forward|back", 4), ("left|right", 5), ("sprint|sneak", 6), ("use|attack", 7),
                  ("jump", 8), ("drop|pickItem", 9))


@dataclass
class IDMConfig:
    height: int = 72
    width: int = 72
    slots: int = 1  # action tokens per action (A)
    classes: int = 17  # ids per slot: the action tokenizer's num_ids
    channels: int = 32
    pool: int = 9  # the trunk ends on a pool x pool grid (one cell per Crafter tile at 72x72)
    hidden: int = 256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IDMConfig":
        return strict_from_dict(cls, d, "inverse dynamics model")


class InverseDynamics(nn.Module):
    """(frame t, frame t+1) uint8 (B, H, W, 3) each -> logits (B, slots, classes)."""

    def __init__(self, cfg: IDMConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        # Strided convs to a coarse grid that keeps where things are: a one-tile scroll and the
        # player's sprite turning are both local, spatial cues.
        self.trunk = nn.Sequential(
            nn.Conv2d(9, c, 4, stride=4), nn.BatchNorm2d(c), nn.GELU(),  # half-tile patches
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.BatchNorm2d(2 * c), nn.GELU(),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.GELU(),
            nn.AdaptiveAvgPool2d(cfg.pool))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * c * cfg.pool**2, cfg.hidden), nn.GELU(),
                                  nn.Linear(cfg.hidden, cfg.slots * cfg.classes))

    def forward(self, prev_BHWC: torch.Tensor, next_BHWC: torch.Tensor) -> torch.Tensor:
        a = prev_BHWC.permute(0, 3, 1, 2).float() / 255
        b = next_BHWC.to(a.device).permute(0, 3, 1, 2).float() / 255
        x = torch.cat([a, b, b - a], 1)  # (B, 9, H, W)
        return self.head(self.trunk(x)).view(-1, self.cfg.slots, self.cfg.classes)

    @torch.no_grad()
    def predict(self, prev_BHWC: torch.Tensor | np.ndarray, next_BHWC: torch.Tensor | np.ndarray,
                batch: int = 256) -> np.ndarray:
        """Relative action ids (B, slots) int64: add the tokenizer's offset for action tokens."""
        dev = next(self.parameters()).device
        prev, nxt = torch.as_tensor(np.asarray(prev_BHWC)), torch.as_tensor(np.asarray(next_BHWC))
        out = [self(prev[i:i + batch].to(dev), nxt[i:i + batch].to(dev)).argmax(-1).cpu()
               for i in range(0, len(prev), batch)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.cfg.slots), np.int64)


class IDM:
    """A loaded inverse dynamics model with its action tokenizer."""

    def __init__(self, model: InverseDynamics, action_tokenizer: ActionTokenizer, space: ActionSpace,
                 info: dict[str, Any]):
        self.model, self.action_tokenizer, self.space, self.info = model, action_tokenizer, space, info

    def predict(self, prev_BHWC, next_BHWC) -> np.ndarray:
        """Relative action ids (B, slots)."""
        return self.model.predict(prev_BHWC, next_BHWC)

    def labels(self, actions: np.ndarray) -> np.ndarray:
        """On-disk actions (T,) or (T, D) -> relative ids (T, slots)."""
        return self.action_tokenizer.encode_array(actions) - self.action_tokenizer.offset

    def score(self, prev_BHWC, next_BHWC, actions_rel_BA: np.ndarray) -> dict[str, Any]:
        return score_actions(self.predict(prev_BHWC, next_BHWC), actions_rel_BA, self.space)


def load_idm(folder: str | Path, device: str | torch.device = "cpu") -> IDM:
    cfg = bundle.read_config(folder)
    if "idm" not in cfg:
        raise WorldsimError(f"{folder} holds no inverse dynamics model (make one with `worldsim train-idm`)")
    model = InverseDynamics(IDMConfig.from_dict(cfg["idm"]))
    bundle.load_weights(folder, "idm", model)
    return IDM(model.to(device).eval(), action_tokenizer_from_config(cfg["action_tokenizer"]),
               ActionSpace.from_dict(cfg["action_space"]), cfg)


# -- scores ------------------------------------------------------------------------------------
def _group_scores(pred: np.ndarray, truth: np.ndarray, names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    per = precision_recall_f1(pred, truth, range(len(names)))
    present = [c for c in per if per[c]["support"] > 0]
    return {"accuracy": float((pred == truth).mean()) if len(truth) else float("nan"),
            "macro_f1": float(np.mean([per[c]["f1"] for c in present])) if present else float("nan"),
            "pairs": int(len(truth)),
            "classes": {names[c]: per[c] for c in present}}


def crafter_movement(actions: np.ndarray, space: ActionSpace) -> np.ndarray:
    """Crafter action ids -> movement group ids (0 none, 1 left, 2 right, 3 up, 4 down)."""
    table = np.zeros(space.n, np.int64)
    for name, g in _CRAFTER_MOVES.items():
        table[space.names.index(name)] = g
    return table[np.asarray(actions, np.int64)]


def score_actions(pred_BA: np.ndarray, truth_BA: np.ndarray, space: ActionSpace) -> dict[str, Any]:
    """Precision, recall and F1 of predicted actions (relative ids (B, slots)) against the true
    ones, grouped as the game's action space suggests (see the module docstring)."""
    pred, truth = np.asarray(pred_BA, np.int64), np.asarray(truth_BA, np.int64)
    if space.kind == "discrete":
        p, t = pred[:, 0], truth[:, 0]
        out: dict[str, Any] = {"all": _group_scores(p, t, list(space.names))}
        if all(n in space.names for n in _CRAFTER_MOVES):
            out["movement"] = _group_scores(crafter_movement(p, space), crafter_movement(t, space), MOVES)
            other = crafter_movement(t, space) == 0  # steps whose true action is not a move
            out["other"] = _group_scores(p[other], t[other], list(space.names))
        out["headline"] = out.get("movement", out["all"])["macro_f1"]
        return out
    out = {}
    from worldsim.tokenizers.action import MINEWORLD_BUTTON_IDS

    names = {v: k for k, v in MINEWORLD_BUTTON_IDS.items()}
    for group, slot in _MINERL_GROUPS:
        if slot >= pred.shape[1]:
            continue
        ids = sorted(set(np.unique(truth[:, slot])) | set(np.unique(pred[:, slot])))
        per = precision_recall_f1(pred[:, slot], truth[:, slot], ids)
        keys = [i for i in ids if i in names and per[i]["support"] > 0]  # pressed keys, not null
        out[group] = {"macro_f1": float(np.mean([per[i]["f1"] for i in keys])) if keys else float("nan"),
                      "accuracy": float((pred[:, slot] == truth[:, slot]).mean()),
                      "classes": {names[i]: per[i] for i in keys}, "pairs": int(len(truth))}
    if pred.shape[1] > 2:
        # In bins: a slot's head may pick an id outside its bins (null, or the other axis's),
        # which counts as the nearest bin rather than as a distance between unrelated ids.
        tok = make_action_tokenizer(space, 0)
        first = np.array([tok.pitch_id0, tok.yaw_id0])
        got = np.clip(pred[:, 1:3] - first, 0, tok.n_camera_bins - 1)
        out["camera_bin_error"] = float(np.abs(got - (truth[:, 1:3] - first)).mean())
    f1s = [v["macro_f1"] for v in out.values() if isinstance(v, dict) and not np.isnan(v["macro_f1"])]
    out["headline"] = float(np.mean(f1s)) if f1s else float("nan")
    return out


# -- training ----------------------------------------------------------------------------------
def _load_pairs(store: EpisodeStore, ids: list[str], tok: ActionTokenizer, limit: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frames of whole episodes (M, H, W, 3), the index of each pair's first frame (P,), and
    each pair's relative action ids (P, slots)."""
    frames, starts, labels, total = [], [], [], 0
    for ep in store.iter_episodes(ids):  # corrupt episodes are skipped with a warning naming them
        if ep.num_steps < 1:
            continue
        frames.append(ep.frames)
        starts.append(total + np.arange(ep.num_steps))
        labels.append(tok.encode_array(ep.actions) - tok.offset)
        total += len(ep.frames)
        if total >= limit:
            break
    if not frames:
        raise WorldsimError(f"no readable episode with a step in {store.root}")
    return (torch.from_numpy(np.concatenate(frames)), torch.from_numpy(np.concatenate(starts)),
            torch.from_numpy(np.concatenate(labels)))


def train_idm(data: str | Path, out: str | Path, settings: IDMTrainSettings | None = None,
              channels: int = 32, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Train (or resume) an IDM on a store's training episodes; returns held-out scores."""
    from worldsim.device import pick_device

    s = settings or IDMTrainSettings()
    out = Path(out)
    store = EpisodeStore(data)
    space = store.info.action_space
    tok = make_action_tokenizer(space, offset=0)
    h, w = store.info.frame_size
    cfg = IDMConfig(height=h, width=w, slots=tok.tokens_per_action, classes=tok.num_ids, channels=channels)
    if (out / "config.json").exists():
        held = bundle.read_config(out)
        if "model" in held or "image_tokenizer" in held:  # checked before anything is written there
            raise WorldsimError(f"{out} holds a world model; train the inverse dynamics model into another --out")
        old = held.get("idm")
        if old is not None and old != cfg.to_dict():
            raise WorldsimError(f"{out} holds an inverse dynamics model with another config; choose another --out")
    if not 0 < s.val_fraction < 1:  # scored on held-out episodes, trained on the rest: both needed
        raise WorldsimError(f"val_fraction must be above 0 and below 1, got {s.val_fraction}: the model "
                            "is trained on some episodes and scored on the held-out others")
    state_path = out / STATE_FILE
    trained = ((bundle.read_config(out).get("idm_training") or {})
               if state_path.exists() and (out / "config.json").exists() else {})
    # A resume on another split (or store) would train on episodes the model was scored on as
    # held out before, or score it on episodes it trained on: its held-out scores would lie.
    for key, now, flag in (("val_fraction", s.val_fraction, "--val-fraction"),
                           ("data_path", str(Path(data).resolve()), "--data")):
        if trained.get(key) is not None and trained[key] != now:
            shown = trained.get("data", trained[key]) if key == "data_path" else trained[key]
            raise WorldsimError(f"{out} was trained with {flag} {shown}; resume it with {flag} {shown} "
                                f"(its held-out episodes must stay held out), or choose another --out")
    train_ids, val_ids = store.split(s.val_fraction)
    if not val_ids or not train_ids:
        n = len(train_ids) + len(val_ids)
        if n < 2:
            raise WorldsimError(f"{data} holds {n} episode(s); train-idm needs at least 2, one to train "
                                "on and one held out to score on")
        raise WorldsimError(f"--val-fraction {s.val_fraction} holds out all {n} episodes of {data}, "
                            "leaving none to train on; lower it")
    dev = pick_device(device)
    frames, starts, labels = _load_pairs(store, train_ids, tok, s.max_frames)
    vframes, vstarts, vlabels = _load_pairs(store, val_ids, tok, s.eval_pairs + len(val_ids))
    vstarts, vlabels = vstarts[:s.eval_pairs], vlabels[:s.eval_pairs]
    bundle.update_config(out, idm=cfg.to_dict(), action_tokenizer=tok.to_config(),
                         action_space=space.to_dict(), env=store.info.env,
                         frame_size=[h, w], idm_training={**asdict(s), "data": str(data),
                                                          "data_path": str(Path(data).resolve()),
                                                          "train_pairs": len(starts)})
    torch.manual_seed(s.seed)
    model = InverseDynamics(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    step, elapsed = 0, 0.0
    clean_stale_temps(out)  # a checkpoint write a kill cut short
    if state_path.exists():
        st = load_checkpoint(state_path, model, opt)
        step, elapsed = int(st["step"]), float(st.get("seconds", 0.0))
        if progress:
            print(f"resuming from step {step} ({state_path})")

    saved = step  # the step the checkpoint on disk holds
    mid_step = False  # inside a step: its update may be half applied, and is not saved

    def checkpoint() -> None:
        nonlocal saved
        if step == saved or mid_step:
            return
        with deferred_signals():  # a signal held through the write lands after `saved` is set
            save_checkpoint(state_path, model, opt, {"step": step, "seconds": elapsed})
            saved = step

    bar = tqdm(total=s.steps, initial=step, desc="train-idm", unit="step", disable=not progress)
    t_start = t_ckpt = time.perf_counter()
    elapsed0 = elapsed
    model.train()
    try:
        while step < s.steps:
            g = torch.Generator().manual_seed(s.seed * 1_000_003 + step)  # same batches on resume
            pick = torch.randint(0, len(starts), (s.batch,), generator=g)
            i = starts[pick]
            for grp in opt.param_groups:  # cosine decay to a tenth
                grp["lr"] = s.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / s.steps)))
            with deferred_signals():  # a signal lands between whole steps, never inside one
                mid_step = True
                logits = model(frames[i].to(dev), frames[i + 1].to(dev))  # (B, slots, classes)
                loss = F.cross_entropy(logits.flatten(0, 1), labels[pick].to(dev).flatten())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                mid_step = False
            now = time.perf_counter()
            elapsed = elapsed0 + now - t_start
            bar.update(1)
            if step % 10 == 0:
                acc = (logits.argmax(-1).cpu() == labels[pick]).float().mean()
                bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.0%}")
            if now - t_ckpt > s.checkpoint_seconds:
                checkpoint()
                t_ckpt = now
    finally:
        bar.close()
        checkpoint()  # unless it holds this step already, or the step was cut off
    model.eval()
    bundle.save_weights(out, "idm", model)
    pred = model.predict(vframes[vstarts], vframes[vstarts + 1])
    scores = score_actions(pred, vlabels.numpy(), space)
    result = {"steps": step, "seconds": elapsed, "heldout_pairs": int(len(vstarts)),
              "heldout": scores}
    bundle.update_config(out, idm_metrics=result)
    return result
