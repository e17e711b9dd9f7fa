"""What every training run shares: the learning-rate schedule, resume from and save to a
checkpoint, the logging and checkpoint cadence, and the stop on a loss that is no longer finite.

A run is an object over a bundle folder. A subclass builds its model and optimizer (`setup`),
takes one optimizer step (`train_step`, returning the loss as a device tensor), and says what
happens after a step and at the logging cadence (`after_step`, `log`); `TrainingRun.loop` ties
them together:

    resume()                          model + optimizer + step from OUT/train_state.safetensors
    while step < steps:               (or until max_seconds of training)
        loss = train_step()           batches are drawn from (seed, step): a resumed run sees the
                                      batches it would have seen
        ema.update_parameters(model)  where the run keeps a moving average of its weights
        after_step(loss)
        every log_every steps and at the end: check the loss is finite, log(loss)
        every checkpoint_seconds: save()
    save()                            also on the way out of a Ctrl-C or SIGTERM

A loss that turns NaN or infinite stops the run with `NonFiniteLoss`; nothing is saved from
then on, so the last checkpoint holds the last finite state and no bundle is written.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from worldsim.checkpoint import load_checkpoint, read_checkpoint_state, save_checkpoint
from worldsim.errors import WorldsimError
from worldsim.fileio import clean_stale_temps, deferred_signals

STATE_FILE = "train_state.safetensors"


def lr_at(step: int, lr: float, warmup: int, steps: int, min_ratio: float = 0.1,
          time_fraction: float = 0.0) -> float:
    """Linear warmup over `warmup` steps, then cosine decay from `lr` to `min_ratio * lr` at
    `steps`. `step` is the 0-based index of the step about to be taken. A run with a time budget
    passes the fraction of it spent: the decay then follows whichever of steps and time is
    further along, so a run that its budget ends still ends its cosine. A warmup longer than
    half the run is cut to half, so that a short run reaches `lr` and still decays (cut to the
    whole run, a run of the default warmup's length or less ended at its peak rate)."""
    warmup = min(warmup, max(1, steps // 2))
    if step < warmup:
        return lr * (step + 1) / warmup
    t = min(1.0, max((step - warmup) / max(1, steps - warmup), time_fraction))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def require_positive(settings: Any, *names: str) -> None:
    """Settings that would fail only late in a run (after training, at the first validation)
    are checked when it starts. The CLI checks them while parsing; this covers other callers."""
    for name in names:
        if getattr(settings, name) < 1:
            raise WorldsimError(f"{name} must be at least 1, got {getattr(settings, name)}")


class NonFiniteLoss(WorldsimError):
    """The loss became NaN or infinite: the run stopped without writing a bundle."""


class TrainingRun:
    """The loop, cadence, checkpointing and resume shared by every trainer (see the module
    docstring). Subclasses set `model` and `opt` in `setup` and implement `train_step`."""

    desc = "train"
    kind = "model"  # what the checkpoint holds, recorded in it: another kind's state is refused

    def __init__(self, out: str | Path, steps: int, checkpoint_seconds: float, log_every: int = 10,
                 max_seconds: float = 0.0, progress: bool = True, is_main: bool = True) -> None:
        self.out = Path(out)
        self.steps = steps
        self.checkpoint_seconds = checkpoint_seconds
        self.log_every = log_every
        self.max_seconds = max_seconds
        self.progress = progress
        self.is_main = is_main  # the process that writes files (rank 0 under torchrun)
        self.model: torch.nn.Module | None = None
        self.opt: torch.optim.Optimizer | None = None
        # An exponential moving average of the weights, for runs that keep one (set in `setup`):
        # updated after every step, checkpointed beside the weights.
        self.ema: AveragedModel | None = None
        self.step = 0  # optimizer steps taken
        self.elapsed = 0.0  # seconds of training, over every resumed session
        self.saved_step: int | None = None  # step of the checkpoint on disk
        self.diverged = False
        self.mid_step = False  # inside a step: its update may be half applied (see `save`)
        self._nonfinite: torch.Tensor | None = None  # () bool on the device: any loss not finite
        self.last_loss: torch.Tensor | None = None
        self.bar: tqdm | None = None

    # -- subclass hooks --------------------------------------------------------------------------
    def train_step(self) -> torch.Tensor:
        """One optimizer step at `self.step` (not yet incremented); returns the loss, () tensor."""
        raise NotImplementedError

    def after_step(self, loss: torch.Tensor) -> None:
        """After each step, `self.step` already counts it (validation cadence, statistics)."""

    def log(self, loss: torch.Tensor) -> None:
        """At the logging cadence, after the loss was checked to be finite."""

    def out_of_time(self) -> bool:
        """Whether the time budget is spent (asked before each step when there is one)."""
        return self.elapsed > self.max_seconds

    def any_nonfinite(self, flag: torch.Tensor) -> bool:
        """Whether any process saw a non-finite loss; data-parallel runs reduce it across ranks
        so that every rank stops at the same step."""
        return bool(flag)

    # -- shared ----------------------------------------------------------------------------------
    def keep_ema(self, decay: float) -> None:
        """Keep an exponential moving average of the weights with this decay per step (call in
        `setup`, after the model is made). Its first update copies the weights of that step."""
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)

    def averaged_weights(self) -> torch.nn.Module:
        """The weights a bundle gets: the moving average where the run keeps one and has
        updated it (a resume that trained nothing from a checkpoint without one has not)."""
        if self.ema is not None and int(self.ema.n_averaged) > 0:
            return self.ema.module
        return self.model

    @property
    def state_path(self) -> Path:
        return self.out / STATE_FILE

    def saved_state(self) -> dict[str, Any] | None:
        """The checkpoint's header (step, seconds) without loading its tensors, or None."""
        return read_checkpoint_state(self.state_path) if self.state_path.exists() else None

    def check_saved_run(self) -> None:
        """Refuse an --out whose checkpoint belongs to another kind of run (a world model sent
        into the image tokenizer's folder, say), before anything is written there."""
        state = self.saved_state()
        if state is not None and state.get("run", self.kind) != self.kind:
            raise WorldsimError(f"{self.state_path} holds the training state of another kind of "
                                f"model ({state['run']}, not {self.kind}); choose another --out")

    def resume(self) -> bool:
        """Restore model, optimizer, step and training time from the checkpoint, if there is one."""
        if self.is_main and self.out.is_dir():
            clean_stale_temps(self.out)  # a checkpoint write a kill cut short
        if not self.state_path.exists():
            return False
        st = load_checkpoint(self.state_path, self.model, self.opt, self.ema)
        self.step, self.elapsed = int(st["step"]), float(st.get("seconds", 0.0))
        self.saved_step = self.step
        if self.is_main:
            self.forget_logs_after(self.step)
            print(f"resuming from step {self.step} ({self.state_path})")
            if self.ema is not None and not st["ema_restored"]:
                print("the checkpoint holds no moving average of the weights: it starts from them")
            elif self.ema is None and st["ema_saved"]:
                # Said, since the bundle then holds the last step's weights and the next
                # checkpoint no longer keeps the average.
                print("the checkpoint keeps a moving average of the weights that this run, without "
                      "--ema, drops: give --ema again to keep it")
        return True

    def forget_logs_after(self, step: int) -> None:
        """On resume: drop log lines of steps after the checkpoint, which are trained again (a
        run killed without saving logged them). Runs that log nowhere have nothing to drop."""

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def save(self) -> None:
        """Checkpoint, unless nothing was trained or the state is no longer finite."""
        if not self.is_main or self.step == 0 or self.step == self.saved_step:
            return
        if self.diverged or (self._nonfinite is not None and bool(self._nonfinite)):
            return  # keep the last finite checkpoint
        # Under data parallelism another rank's NaN reaches these weights through the averaged
        # gradients before this rank's loss shows it: look at the weights themselves.
        if not bool(torch.stack([p.detach().isfinite().all() for p in self.model.parameters()]).all()):
            return
        if self.mid_step:
            return  # an error inside a step: its update may be half applied; keep the last whole one
        # A signal held through the write lands after saved_step is set: a second write of the
        # same step on the way out would only cost time.
        with deferred_signals():
            save_checkpoint(self.state_path, self.model, self.opt,
                            {"step": self.step, "seconds": self.elapsed, "run": self.kind}, self.ema)
            self.saved_step = self.step

    def check_finite(self, loss: torch.Tensor, every_rank: bool = True) -> None:
        """Raise NonFiniteLoss if a loss since the start was not finite. `every_rank` asks all
        processes (a collective: only where every rank checks at the same step)."""
        if self._nonfinite is None:
            return
        if not (self.any_nonfinite(self._nonfinite) if every_rank else bool(self._nonfinite)):
            return
        self.diverged = True
        kept = (f"the checkpoint at step {self.saved_step} is kept" if self.saved_step
                else "no checkpoint was written")
        raise NonFiniteLoss(f"the loss became {float(loss.detach()):.4g} by step {self.step}, so the "
                            f"run stopped without writing a bundle ({kept}); lower --lr or check "
                            "the data")

    def log_due(self) -> bool:
        return self.step % self.log_every == 0 or self.step == self.steps

    def loop(self) -> None:
        """Train from `self.step` to `self.steps` (or `max_seconds`), checkpointing on the way."""
        self.bar = tqdm(total=self.steps, initial=self.step, desc=self.desc, unit="step",
                        disable=not (self.progress and self.is_main))
        t_start = t_ckpt = time.perf_counter()
        self.t_start, elapsed0, step0 = t_start, self.elapsed, self.step
        try:
            while self.step < self.steps:
                if self.max_seconds and self.out_of_time():
                    break
                # A signal lands between whole steps: inside one it would save a half-applied
                # update (one optimizer of a chain stepped, or part of a parameter loop) under
                # the old step number, and the resume would take that step again.
                with deferred_signals():
                    self.mid_step = True  # until the step is whole: an error here saves nothing
                    loss = self.last_loss = self.train_step()
                    self.step += 1
                    if self.ema is not None:
                        self.ema.update_parameters(self.model)
                    self.mid_step = False
                # Accumulated on the device: no host sync per step, checked at the log cadence.
                bad = ~torch.isfinite(loss.detach())
                self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
                now = time.perf_counter()
                self.elapsed = elapsed0 + now - t_start
                if self.max_seconds:
                    # The bar ends where the time budget will, at this pace (not at --steps,
                    # which a budgeted run sets far out: its ETA read days).
                    per_step = (self.elapsed - elapsed0) / (self.step - step0)
                    ahead = max(0.0, self.max_seconds - self.elapsed) / max(per_step, 1e-9)
                    self.bar.total = max(self.step, min(self.steps, self.step + round(ahead)))
                self.bar.update(1)
                self.after_step(loss)
                if self.log_due():
                    self.check_finite(loss)
                    self.log(loss)
                if now - t_ckpt > self.checkpoint_seconds:
                    # Ranks' clocks differ, so this step may be checkpoint time on one rank only:
                    # no collective here (torchrun stops the other ranks if this one raises).
                    self.check_finite(loss, every_rank=False)
                    self.save()
                    t_ckpt = now
        except BaseException:
            # Ctrl-C, SIGTERM or an error: keep the finished work, if it is finite.
            self.bar.close()
            self.save()
            raise
        self.bar.close()
        if self.last_loss is not None:
            self.check_finite(self.last_loss)
        self.save()
