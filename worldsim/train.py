"""Train the world model on token shards, on one process or under torchrun.

    worldsim train --shards S --tokenizer TOK --out B --objective ar|block_diffusion
    torchrun --nproc-per-node 2 -m worldsim train ...      (the same command, data-parallel)

Optimisation: Muon for the matrices of the transformer's blocks and AdamW for the rest (or AdamW
for all, `--optimizer adamw`; see worldsim.optim), linear warmup then cosine decay, gradient
clipping, bf16 autocast where the device runs it fast; optionally (`--ema`) an exponential moving
average of the weights, which the bundle then gets. Data: memory-mapped random windows of F
frames, drawn from a generator seeded by (seed, step, rank), so a resumed run sees the batches it
would have seen.

Writes into the output bundle:
    config.json            image tokenizer, action tokenizer, model config, env, training settings
    image_tokenizer.safetensors, model.safetensors
    train_state.safetensors  model + optimizer + step (atomic, every --checkpoint-seconds)
    train_log.jsonl          one line per log interval: step, loss, val_loss, tokens/s, seconds

The run is a `WorldModelRun` (worldsim.trainer.TrainingRun: the loop, schedule, checkpoints and
logging cadence it shares with the tokenizer's training). The shards must come from the image
tokenizer given with --tokenizer (their index records its weights' checksum); a loss that turns
NaN or infinite stops the run without writing a bundle; a rerun of a finished bundle does nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from worldsim import bundle
from worldsim.data.store import split_ids
from worldsim.device import pick_device
from worldsim.errors import WorldsimError
from worldsim.fileio import atomic_open, file_sha256
from worldsim.model import PRESETS, ModelConfig, WorldModel, preset_config
from worldsim.objectives import Objective
from worldsim.optim import DEFAULT_OPTIMIZER, make_optimizer
from worldsim.data.shards import TokenShards
from worldsim.train_settings import TrainSettings
from worldsim.trainer import STATE_FILE, TrainingRun, lr_at, require_positive

LOG_FILE = "train_log.jsonl"
__all__ = ["LOG_FILE", "STATE_FILE", "TrainSettings", "WorldModelRun", "train"]


def cpu_has_fast_bf16() -> bool:
    """bf16 matmuls beat fp32 on CPUs with AMX or AVX512-BF16; elsewhere they are emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_for(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    use_bf16 = dtype == "bf16" or (dtype == "auto" and (
        (device.type == "cuda" and torch.cuda.is_bf16_supported()) or
        (device.type == "cpu" and cpu_has_fast_bf16())))
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Distributed:
    """torchrun's environment, or a single process."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        return pick_device(requested, self.local_rank)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _build_config(preset: str, shards: TokenShards, objective: str, frames: int, rope: str = "",
                  width: int = 0, depth: int = 0) -> ModelConfig:
    """The preset's model for these shards; `width` (the model dimension, the feed-forward
    dimension scaled with it) and `depth` (layers) override the preset's where not 0."""
    idx = shards.index
    tok = shards.action_tokenizer
    overrides: dict[str, Any] = dict(codebook_size=shards.K, tokens_per_frame=shards.N,
                                     action_tokens=shards.A, grid=tuple(idx["grid"]),
                                     action_ids=tok.num_ids, objective=objective, vocab_size=0)
    if frames:
        overrides["frames"] = frames
    if rope:
        overrides["rope"] = rope
    if width and preset in PRESETS:  # an unknown preset is refused below
        base = PRESETS[preset]
        overrides.update(dim=width, ffn_dim=round(width * base["ffn_dim"] / base["dim"]))
    if depth:
        overrides["n_layers"] = depth
    try:
        return preset_config(preset, **overrides)
    except ValueError as e:
        raise WorldsimError(str(e)) from e


def _same_config(old: dict[str, Any], cfg: ModelConfig) -> bool:
    """Whether a bundle's model config is `cfg` but for the window, which no weight depends on."""
    return not _config_differences(old, cfg)


def _config_differences(old: dict[str, Any], cfg: ModelConfig) -> str:
    """How a bundle's model config differs from `cfg` but for the window ("dim 64 here, 256
    asked"), or "" where it does not."""
    try:
        held = replace(ModelConfig.from_dict(old), frames=cfg.frames)
    except ValueError as e:  # keys this code does not know, or values it refuses
        return str(e)
    if held == cfg:
        return ""
    a, b = held.to_dict(), cfg.to_dict()
    diff = [f"{k} {a[k]} there, {b[k]} asked" for k in a if a[k] != b[k]]
    return "; ".join(diff[:4]) + ("; ..." if len(diff) > 4 else "")


def check_shards_tokenizer(shards: TokenShards, shards_dir: str | Path, tokenizer: str | Path,
                           option: str = "--tokenizer") -> None:
    """Refuse shards made by another image tokenizer than `tokenizer`: the model would learn
    codes that the bundle's tokenizer draws as something else. Shards record the checksum of
    their tokenizer's weights; older ones only its path, checked where it still names a bundle."""
    weights = Path(tokenizer) / "image_tokenizer.safetensors"
    if not weights.is_file():
        raise WorldsimError(f"{tokenizer} has no image tokenizer weights ({weights.name} missing)")
    recorded = shards.index.get("tokenizer_sha256")
    made_by = shards.index.get("tokenizer", "?")
    if recorded is None:  # shards from before the checksum was recorded
        old = Path(made_by) / "image_tokenizer.safetensors"
        if not old.is_file() or old.resolve() == weights.resolve():
            return
        recorded = file_sha256(old)
    if recorded != file_sha256(weights):
        if Path(made_by).resolve() == Path(tokenizer).resolve():  # the same folder, fitted again since
            raise WorldsimError(f"{shards_dir} was tokenized with the weights {tokenizer} held then, not "
                                "those it holds now (it was fitted or trained again since); tokenize again")
        raise WorldsimError(f"{shards_dir} was tokenized with another image tokenizer ({made_by}) than "
                            f"{option} {tokenizer}'s; pass that one, or tokenize again with this one")


class WorldModelRun(TrainingRun):
    """Training of the world model on token shards, on one process or under torchrun."""

    kind = "world model"

    def __init__(self, shards_dir: str | Path, tokenizer: str | Path, out: str | Path,
                 objective: str = "ar", preset: str = "crafter", settings: TrainSettings | None = None,
                 device: str = "auto", progress: bool = True) -> None:
        self.s = s = settings or TrainSettings()
        require_positive(s, "steps", "batch", "val_every", "val_batches", "log_every")
        # Refused before anything is read or written (the objective refuses them only once the
        # model is built, after --out has been written to).
        augment = [f"--context-{k}" for k in ("noise", "dreams", "stalls") if getattr(s, f"context_{k}")]
        if augment and objective != "block_diffusion":
            raise WorldsimError(f"{', '.join(augment)} work with --objective block_diffusion only, "
                                f"not {objective}")
        self.ddp = Distributed()
        super().__init__(out, s.steps, s.checkpoint_seconds, s.log_every, s.max_minutes * 60,
                         progress, is_main=self.ddp.main)
        self.desc = f"train {objective}"
        self.shards_dir, self.tokenizer, self.objective, self.preset = shards_dir, tokenizer, objective, preset
        self.dev = self.ddp.device(device)
        self.tokens_seen = 0
        self.last_val: float | None = None
        self.last_ema_val: float | None = None  # the moving average's, where the run keeps one
        self.last_val_step = -1  # the step whose weights last_val (and last_ema_val) measured
        self.last_lr = 0.0  # the learning rate of the last step taken (what the log reports)
        # Under torchrun, the seconds of training every rank agreed on at the last agreement
        # (see out_of_time): the clock's share of the schedule, the same on every rank.
        self.agreed_elapsed: float | None = None

    # -- setup and resume --------------------------------------------------------------------------
    def load_data(self) -> None:
        s = self.s
        self.all_shards = TokenShards(self.shards_dir)
        train_ids, val_ids = split_ids(self.all_shards.episode_ids, s.val_fraction)  # the store's rule
        self.train_shards = TokenShards(self.shards_dir, train_ids)
        self.val_shards = TokenShards(self.shards_dir, val_ids or train_ids)
        self.s = s = replace(s, init=self.init_of_resumed())
        built = _build_config(self.preset, self.all_shards, self.objective, s.frames, s.rope, s.width, s.depth)
        if s.init:
            built = self.config_of_init(built)
        self.cfg = self.window_of_resumed(built)
        self.train_starts = self.train_shards.window_starts(self.cfg.frames)
        self.val_starts = self.val_shards.window_starts(self.cfg.frames)

    def init_of_resumed(self) -> str:
        """--init for a fresh run; a resumed run goes on from its checkpoint and keeps the
        --init it started from (recorded in its bundle)."""
        if self.saved_state() is None or not (self.out / "config.json").exists():
            return self.s.init
        return bundle.read_config(self.out).get("training", {}).get("init", "")

    def config_of_init(self, built: ModelConfig) -> ModelConfig:
        """--init's model, which must read these shards (the same codes and actions) and train
        with --objective; only its window may change (--frames)."""
        s, parent = self.s, Path(self.s.init)
        if s.width or s.depth or s.rope:
            raise WorldsimError("--init starts from a trained model of its own shape: leave out "
                                "--width, --depth and --rope")
        if self.saved_state() is not None:  # a resume: its own model, whatever --init holds now
            model = ModelConfig.from_dict(bundle.read_config(self.out)["model"])
            return replace(model, frames=s.frames) if s.frames else model
        cfg = bundle.read_config(parent)
        if "model" not in cfg or not (parent / "model.safetensors").is_file():
            raise WorldsimError(f"--init {parent} is not a trained world model bundle (no model in it)")
        try:
            model = ModelConfig.from_dict(cfg["model"])
        except ValueError as e:
            raise WorldsimError(f"--init {parent}: {e}") from e
        check_shards_tokenizer(self.all_shards, self.shards_dir, parent, "--init")
        keys = ("codebook_size", "tokens_per_frame", "action_tokens", "grid", "action_ids", "objective")
        wrong = [k for k in keys if getattr(model, k) != getattr(built, k)]
        if wrong:
            raise WorldsimError(f"--init {parent} does not fit these shards and objective "
                                f"({', '.join(f'{k} {getattr(model, k)} against {getattr(built, k)}' for k in wrong)})")
        return replace(model, frames=s.frames) if s.frames else model

    def window_of_resumed(self, cfg: ModelConfig) -> ModelConfig:
        """A bundle that is resumed keeps its window unless --frames names another. No weight
        depends on the window, so training may go on with longer windows (the shipped model's
        last leg did), and the bundle then records the new one: play attends to that many.
        A config beside no weights and no checkpoint holds nothing to go on from (see check_out):
        a new run there takes the preset's window."""
        holds_weights = (self.out / "model.safetensors").exists() or self.state_path.exists()
        old = (bundle.read_config(self.out).get("model")
               if holds_weights and (self.out / "config.json").exists() else None)
        if not old or "frames" not in old:
            return cfg
        if not self.s.frames:
            return replace(cfg, frames=int(old["frames"]))
        if self.s.frames != old["frames"] and self.is_main:
            print(f"{self.out} trained on {old['frames']}-frame windows; it goes on with {self.s.frames}")
        return cfg

    def optimizer_of_resumed(self) -> str:
        """--optimizer; where it is not given, a resumed run's own (AdamW for runs from before
        there was a choice), else the default. A resume may not switch: the state would not fit."""
        was = None
        if self.saved_state() is not None and (self.out / "config.json").exists():
            was = bundle.read_config(self.out).get("training", {}).get("optimizer", "adamw")
        if was and self.s.optimizer and self.s.optimizer != was:
            raise WorldsimError(f"{self.out} was trained with --optimizer {was}; resume it with the "
                                "same, or choose another --out")
        return self.s.optimizer or was or DEFAULT_OPTIMIZER

    def finished(self) -> dict[str, Any] | None:
        """The metrics of a bundle already trained to `steps`, or None if there is work to do."""
        state = self.saved_state()
        if state is None:
            return None
        # A run its --max-minutes ended is done too: run again, it would only validate and
        # write the same bundle over itself.
        spent = bool(self.max_seconds) and float(state.get("seconds", 0.0)) >= self.max_seconds
        if int(state.get("step", 0)) < self.steps and not spent:
            return None
        if not (self.out / "model.safetensors").is_file():
            return None  # trained, but stopped before the bundle was written: write it now
        metrics = bundle.read_config(self.out).get("model_metrics")
        if metrics is None or metrics.get("steps") != int(state["step"]):
            return None  # no bundle yet, or an earlier leg's: this leg's weights are still to write
        return {**metrics, "steps": int(state["step"]), "finished": True, "rank": self.ddp.rank,
                "budget_spent": spent and int(state["step"]) < self.steps}

    def write_bundle_config(self) -> None:
        """Check --out can take this model and record what it is trained on (rank 0 only)."""
        out, index = self.out, self.all_shards.index
        if (out / "config.json").is_file() and "idm" in bundle.read_config(out):  # before any write
            raise WorldsimError(f"{out} holds an inverse dynamics model; train the world model into another --out")
        tok_cfg = bundle.read_config(self.tokenizer)
        if "image_tokenizer" not in tok_cfg:
            raise WorldsimError(f"{self.tokenizer} has no image tokenizer")
        out.mkdir(parents=True, exist_ok=True)
        src, dst = Path(self.tokenizer) / "image_tokenizer.safetensors", out / "image_tokenizer.safetensors"
        # Copied whole or not at all; and a copy that differs from the tokenizer's (torn by a kill
        # under an older version) is made again, since the codes are checked against its hash.
        if not dst.exists() or file_sha256(dst) != file_sha256(src):
            with open(src, "rb") as f, atomic_open(dst, "wb") as g:
                shutil.copyfileobj(f, g)
        if self.saved_state() is not None:
            self.say_changed_settings(bundle.read_config(out).get("training") or {})
        bundle.update_config(
            out, image_tokenizer=tok_cfg["image_tokenizer"],
            action_tokenizer=index["action_tokenizer"], model=self.cfg.to_dict(),
            env=index["env"], action_space=index["action_space"],
            frame_size=index["frame_size"], fps=index["fps"],
            training={**asdict(self.s), "objective": self.objective, "preset": self.preset,
                      "shards": str(self.shards_dir), "world_size": self.ddp.world})
        if self.s.init and self.saved_state() is None:
            # what the run starts from, and what that was trained from, for the model card
            parent = bundle.read_config(self.s.init)
            bundle.update_config(out, init={
                "bundle": self.s.init,
                "model_sha256": file_sha256(Path(self.s.init) / "model.safetensors"),
                **{k: parent[k] for k in ("training", "model_metrics", "init") if k in parent}})
            t = bundle.recorded_temperature(self.s.init)
            if t is not None:
                # plays and is judged as its parent did until a temperature is chosen for it
                # (scripts/pick_temperature.py --write)
                bundle.update_config(out, decoding={"temperature": t, "inherited_from": self.s.init})

    # What a resume may change and the bundle then records in place of the run's first values:
    # said, since a resume that leaves an option out takes its default.
    _RESUME_SETTINGS = ("batch", "lr", "min_lr_ratio", "warmup", "weight_decay", "grad_clip", "dtype",
                        "context_noise", "context_dreams", "context_stalls", "seed", "val_fraction")

    def say_changed_settings(self, old: dict[str, Any]) -> None:
        now = asdict(self.s)
        changed = [f"--{k.replace('_', '-')} {old[k]} -> {now[k]}" for k in self._RESUME_SETTINGS
                   if k in old and old[k] != now[k]]
        if changed:
            print(f"resuming with other settings than the run had: {', '.join(changed)}")

    def check_out(self) -> None:
        check_shards_tokenizer(self.all_shards, self.shards_dir, self.tokenizer)
        self.check_saved_run()
        if (self.out / "model.safetensors").exists() and not self.state_path.exists():
            # Nothing to resume from: a run here would start from random weights and write them
            # over the trained ones at its end.
            raise WorldsimError(f"{self.out} holds a trained model but no training state to go on "
                                f"from ({STATE_FILE}); start a new --out from it with --init {self.out}")
        # A config beside no weights and no checkpoint is a run that stopped before saving
        # anything (its loss turned NaN first): nothing there to keep, so another model may start.
        holds_weights = (self.out / "model.safetensors").exists() or self.state_path.exists()
        if (self.out / "config.json").exists() and holds_weights:
            old = bundle.read_config(self.out).get("model")
            # Read through ModelConfig: a bundle written before a config key existed holds its
            # default implicitly, and resumes.
            differs = _config_differences(old, self.cfg) if old is not None else ""
            if differs:  # named: a resume that left out --preset or --width would not see why
                raise WorldsimError(f"{self.out} holds a model with another config ({differs}); resume it "
                                    "with the options it was trained with, or choose another --out")
        self.s = replace(self.s, optimizer=self.optimizer_of_resumed())

    def setup(self) -> None:
        s = self.s
        torch.manual_seed(s.seed)
        self.model = model = WorldModel(self.cfg).to(self.dev)
        self.objective_mod: torch.nn.Module = Objective(model, context_noise=s.context_noise,
                                                       context_dreams=s.context_dreams,
                                                       context_stalls=s.context_stalls)
        self.opt = make_optimizer(model, s.optimizer, s.lr, s.weight_decay, fused=self.dev.type == "cuda")
        if s.ema:
            self.keep_ema(s.ema)

    def start_from_init(self) -> None:
        """A fresh run's weights from --init (in the run's float dtype; the optimizer starts
        afresh, and a moving average from these weights)."""
        from safetensors.torch import load_file

        path = Path(self.s.init) / "model.safetensors"
        try:
            sd = load_file(str(path))
            self.model.load_state_dict(sd)  # copies, so bf16 weights become the model's float32
        except Exception as e:  # safetensors' own errors for a torn file; RuntimeError for shapes
            first = str(e).strip().splitlines()[:2]
            raise WorldsimError(f"--init {self.s.init}: cannot load its weights into the model its config "
                                f"describes ({' '.join(ln.strip() for ln in first)})") from None
        if self.is_main:
            print(f"starting from the weights of {self.s.init}")

    def wrap_data_parallel(self) -> None:
        if self.ddp.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # DDP broadcasts rank 0's weights at construction, so every rank starts identical.
            self.objective_mod = DDP(self.objective_mod,
                                     device_ids=[self.dev.index] if self.dev.type == "cuda" else None)

    # -- step and validate -------------------------------------------------------------------------
    def batch_at(self, step: int, rank: int, starts: tuple[np.ndarray, np.ndarray], shards: TokenShards,
                 n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
        """Windows drawn from (seed, step, rank): frame tokens (n, F, N), action tokens (n, F, A),
        and the generator the objective keeps drawing its noise from."""
        # modulo 2**63: a large --seed must still make a generator seed
        g = torch.Generator().manual_seed(((self.s.seed * 1_000_003 + step) * 4099 + rank) % 2**63)
        pick = torch.randint(0, len(starts[0]), (n,), generator=g).numpy()
        fr, ac = shards.gather(starts[0][pick], starts[1][pick], self.cfg.frames)
        return fr.to(self.dev, non_blocking=True), ac.to(self.dev, non_blocking=True), g

    def lr(self, step: int) -> float:
        s = self.s
        # With a time budget the schedule also runs on the clock. Ranks' clocks differ and
        # their learning rates must not: under torchrun it runs on the time they last agreed
        # on (every log_every steps), which until then is the time the checkpoint recorded.
        if self.ddp.enabled:
            if self.agreed_elapsed is None:
                self.agreed_elapsed = self.elapsed  # before any step: the same on every rank
            seconds = self.agreed_elapsed
        else:
            seconds = self.elapsed
        frac = seconds / (s.max_minutes * 60) if s.max_minutes else 0.0
        return lr_at(step, s.lr, s.warmup, s.steps, s.min_lr_ratio, frac)

    def train_step(self) -> torch.Tensor:
        s = self.s
        fr, ac, g = self.batch_at(self.step, self.ddp.rank, self.train_starts, self.train_shards, s.batch)
        # Kept for the log: with a time budget the schedule moves with the clock, so computing it
        # again at the log would report a later time's rate than the step used.
        self.last_lr = self.lr(self.step)
        self.set_lr(self.last_lr)
        with autocast_for(self.dev, s.dtype):
            loss, _ = self.objective_mod(fr, ac, g)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
        self.opt.step()
        return loss

    def forget_logs_after(self, step: int) -> None:
        path = self.out / LOG_FILE
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        keep = [ln for ln in lines if _logged_step(ln) <= step]
        if len(keep) != len(lines):
            with atomic_open(path, "w") as f:
                f.write("".join(ln + "\n" for ln in keep))

    @torch.no_grad()
    def validate(self, model: WorldModel | None = None) -> float:
        """Mean loss of `model` (the trained weights by default) over the same `val_batches`
        held-out batches every time."""
        s = self.s
        self.objective_mod.eval()
        losses = []
        for i in range(s.val_batches):
            fr, ac, g = self.batch_at(10**9 + i, 0, self.val_starts, self.val_shards, s.batch)
            with autocast_for(self.dev, s.dtype):
                loss, _ = Objective(self.model if model is None else model)(fr, ac, g)
            losses.append(loss.item())
        self.objective_mod.train()
        return float(np.mean(losses))

    def after_step(self, loss: torch.Tensor) -> None:
        self.tokens_seen += self.s.batch * self.cfg.frames * self.cfg.block_len * self.ddp.world
        if self.step % self.s.val_every == 0 or self.step == self.steps:
            self.last_val, self.last_val_step = self.validate(), self.step
            if self.ema is not None:
                self.last_ema_val = self.validate(self.ema.module)

    def tokens_per_s(self) -> float:
        return self.tokens_seen / max(time.perf_counter() - self.t_start, 1e-9)

    def log(self, loss: torch.Tensor) -> None:
        tps, last_val = self.tokens_per_s(), self.last_val
        self.bar.set_postfix(loss=f"{loss.item():.3f}", val=f"{last_val:.3f}" if last_val else "-",
                             tok_s=f"{tps:.0f}")
        if self.is_main:
            line = {"step": self.step, "loss": loss.item(), "val_loss": last_val,
                    "grad_norm": float(self.grad_norm), "lr": self.last_lr,
                    "tokens_per_s": tps, "seconds": self.elapsed}
            if self.ema is not None:
                line["ema_val_loss"] = self.last_ema_val
            with open(self.out / LOG_FILE, "a") as f:
                f.write(json.dumps(line) + "\n")

    def out_of_time(self) -> bool:
        if not self.ddp.enabled:
            return super().out_of_time()
        # Ranks' clocks differ: stopping on one rank's clock alone would leave the others
        # waiting in the next gradient all-reduce. Agree, at steps every rank reaches.
        # The longest of their times is agreed on too, and the schedule runs on it from here.
        if self.step % self.s.log_every:
            return False
        seconds = torch.tensor(self.elapsed, dtype=torch.float64, device=self.dev)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        self.agreed_elapsed = float(seconds)
        return self.agreed_elapsed > self.max_seconds

    def any_nonfinite(self, flag: torch.Tensor) -> bool:
        if self.ddp.enabled:
            flag = flag.to(torch.float32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag)

    # -- save ----------------------------------------------------------------------------------------
    def last_logged_tokens_per_s(self) -> float:
        """The throughput of the last log line (0 if none): what a session that trained
        nothing, a resume that found its time already spent, reports."""
        lines = (self.out / LOG_FILE).read_text().splitlines() if (self.out / LOG_FILE).is_file() else []
        try:
            return float(json.loads(lines[-1])["tokens_per_s"]) if lines else 0.0
        except (ValueError, KeyError, TypeError):
            return 0.0

    def finish(self) -> dict[str, Any]:
        """The run's metrics; rank 0 writes the model into the bundle (the moving average of its
        weights where the run keeps one; `val_loss` is always that of the weights written)."""
        tps = self.tokens_per_s() if self.tokens_seen else self.last_logged_tokens_per_s()
        weights = self.averaged_weights()
        fresh = self.last_val is not None and self.last_val_step == self.step  # else the clock
        val = self.last_val if fresh else self.validate()  # stopped the run between validations
        result = {"steps": self.step, "seconds": self.elapsed, "val_loss": val,
                  "tokens_per_s": tps, "params": self.model.num_params(),
                  "world_size": self.ddp.world, "rank": self.ddp.rank}
        if weights is not self.model:
            ema_val = self.last_ema_val if fresh and self.last_ema_val is not None else self.validate(weights)
            result.update(val_loss=ema_val, val_loss_last_step=val, ema=self.s.ema)
        if self.ddp.enabled:
            result.update(self.replica_checksums())
        if self.is_main:
            bundle.save_weights(self.out, "model", weights)
            bundle.update_config(self.out, model_metrics=result)
        return result

    def replica_checksums(self) -> dict[str, Any]:
        # Data parallelism must keep every replica identical; check it rather than assume it.
        params = list(self.model.parameters())
        sums = torch.stack([torch.cat([p.detach().double().flatten() for p in params]).sum(),
                            sum((p.detach().double() ** 2).sum() for p in params)]).to(self.dev)
        gathered = [torch.zeros_like(sums) for _ in range(self.ddp.world)]
        dist.all_gather(gathered, sums)
        return {"replica_checksums": [g.tolist() for g in gathered],
                "replicas_identical": all(torch.equal(g, gathered[0]) for g in gathered)}

    def run(self) -> dict[str, Any]:
        try:
            self.load_data()
            self.check_out()
            done = self.finished()
            if done is not None:
                return done
            if self.is_main:
                self.write_bundle_config()
            self.ddp.barrier()
            self.setup()
            if not self.resume() and self.s.init:
                self.start_from_init()
            self.wrap_data_parallel()
            self.objective_mod.train()
            self.loop()
            result = self.finish()
            self.ddp.barrier()
            return result
        finally:
            self.ddp.close()


def train(shards_dir: str | Path, tokenizer: str | Path, out: str | Path, objective: str = "ar",
          preset: str = "crafter", settings: TrainSettings | None = None, device: str = "auto",
          progress: bool = True) -> dict[str, Any]:
    """Train (or resume training) the world model into the bundle `out`; returns its metrics,
    with `finished: True` and nothing done if the bundle was already trained to `steps`."""
    return WorldModelRun(shards_dir, tokenizer, out, objective, preset, settings, device, progress).run()


def _logged_step(line: str) -> int:
    """The step of a log line (a torn last line, from a kill mid-write, counts as none)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62
