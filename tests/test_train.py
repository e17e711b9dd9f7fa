import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from worldsim.bundle import load_world_model, read_config, recorded_temperature, update_config
from worldsim.train import STATE_FILE, TrainSettings, train
from worldsim.inference.decode_block_diffusion import masked_after
from worldsim.inference.plain import rollout
from worldsim.inference.sampling import GREEDY

from _scripts import load_script


def _args(tiny_tokens, out, *extra):
    tok, shards = tiny_tokens
    return ["train", "--shards", str(shards), "--tokenizer", str(tok), "--out", str(out),
            "--preset", "tiny", "--no-progress", *extra]


@pytest.mark.parametrize("objective", ["ar", "block_diffusion"])
def test_train_writes_a_loadable_bundle(tiny_tokens, tmp_path, objective):
    tok, shards = tiny_tokens
    s = TrainSettings(steps=4, batch=2, val_every=2, val_batches=1, warmup=2)
    r = train(shards, tok, tmp_path / "wm", objective=objective, preset="tiny", settings=s,
              progress=False)
    assert r["steps"] == 4 and r["val_loss"] > 0
    cfg = read_config(tmp_path / "wm")
    for key in ("image_tokenizer", "action_tokenizer", "model", "env", "action_space"):
        assert key in cfg
    assert cfg["model"]["objective"] == objective and cfg["model"]["tokens_per_frame"] == 81
    model = load_world_model(tmp_path / "wm")
    log = [json.loads(line) for line in (tmp_path / "wm" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [4]  # log_every 10: only the last step is logged
    # the last step (index 3) is halfway down the cosine after 2 warmup steps: 0.1 + 0.9 * 0.5
    assert log[0]["val_loss"] == r["val_loss"] and log[0]["lr"] == pytest.approx(s.lr * 0.55)
    # A dreamed rollout from the bundle has the right shape and only image codes.
    ctx = torch.zeros(1, 1, 81, dtype=torch.long)
    acts = torch.full((1, 1, 1), 64 + 3)
    out = rollout(model, ctx, acts, torch.full((1, 2, 1), 64 + 1), GREEDY, steps=4)
    assert out.shape == (1, 3, 81) and int(out.max()) < 64


def test_masked_after():
    assert masked_after(81, 81) == list(range(80, -1, -1))  # K = N: one token per step
    sch = masked_after(81, 8)
    assert sch[-1] == 0 and all(a > b for a, b in zip([81] + sch, sch))


def test_killed_training_resumes_at_its_step(tiny_tokens, tmp_path):
    out = tmp_path / "wm"
    base = [sys.executable, "-m", "worldsim", *_args(tiny_tokens, out, "--batch", "2",
                                                      "--checkpoint-seconds", "0", "--val-every", "1000")]
    proc = subprocess.Popen(base + ["--steps", "100000"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while time.time() < deadline and not (out / STATE_FILE).exists():
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from safetensors import safe_open

    with safe_open(str(out / STATE_FILE), "pt") as f:
        killed_at = json.loads(f.metadata()["state"])["step"]
    assert killed_at > 0
    r = subprocess.run(base + ["--steps", str(killed_at + 2)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"resuming from step {killed_at}" in r.stdout
    assert read_config(out)["model_metrics"]["steps"] == killed_at + 2
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps[-1] == killed_at + 2


def test_torchrun_two_processes_keep_replicas_identical(tiny_tokens, tmp_path):
    """Two data-parallel processes on a time budget (--max-minutes): the replicas stay identical,
    the ranks agree on the step to stop at (stopping on each rank's own clock would leave
    one waiting in an all-reduce the other never joins), and the learning rate anneals on the
    clock they agree on, as one process's does (it stayed at its peak)."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29517", "-m", "worldsim",
           *_args(tiny_tokens, out, "--steps", "100000", "--batch", "2", "--val-every", "1000",
                  "--max-minutes", "0.05", "--warmup", "1", "--lr", "1e-3", "--log-every", "2")]
    # one thread a rank, as torchrun sets where the caller does not: two ranks of two threads on
    # a 2-core machine step 20 times slower
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    m = read_config(out)["model_metrics"]
    assert m["world_size"] == 2 and 0 < m["steps"] < 100000
    assert m["replicas_identical"] is True
    assert len(m["replica_checksums"]) == 2
    assert r.stdout.count("trained ar") == 1  # only rank 0 reports
    lrs = [json.loads(line)["lr"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    # down the cosine with the clock (a log line shows the time agreed 2 steps before it; on
    # the step count alone, 100,000 steps, the lr stays within a millionth of its peak)
    assert len(lrs) >= 2 and lrs[0] > 0.99e-3 and lrs[-1] < 0.99e-3


def test_checkpoint_whose_optimizer_does_not_fit_gives_a_clear_error(tmp_path):
    """A checkpoint from a model whose parameters were laid out differently (say, projections
    not yet fused) names the file and says what to do, instead of a bare optimizer error."""
    from worldsim.checkpoint import load_checkpoint, save_checkpoint
    from worldsim.errors import WorldsimError
    from worldsim.model import WorldModel, preset_config

    model = WorldModel(preset_config("tiny"))
    extra = torch.nn.Parameter(torch.zeros(3))
    old = torch.optim.AdamW([*model.parameters(), extra])
    model(torch.zeros(1, 4, dtype=torch.long), torch.arange(4)[None], causal=True).sum().backward()
    extra.grad = torch.ones(3)
    old.step()
    save_checkpoint(tmp_path / "ckpt.safetensors", model, old, {"step": 1})
    with pytest.raises(WorldsimError, match="ckpt.safetensors: its optimizer state does not fit"):
        load_checkpoint(tmp_path / "ckpt.safetensors", model, torch.optim.AdamW(model.parameters()))
    assert load_checkpoint(tmp_path / "ckpt.safetensors", model)["step"] == 1  # weights alone load


def test_lr_schedule_warms_up_then_decays_to_its_floor():
    from worldsim.trainer import lr_at

    assert [lr_at(i, 1.0, 4, 100) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 1.0, 4, 100) == 1.0  # the cosine starts at the peak
    assert lr_at(52, 1.0, 4, 100, min_ratio=0.1) == pytest.approx(0.55)  # halfway down
    assert lr_at(100, 1.0, 4, 100, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_at(10**6, 1.0, 4, 100, min_ratio=0.1) == pytest.approx(0.1)  # stays at the floor


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tiny_tokens, tmp_path, monkeypatch, optimizer):
    """Ctrl-C keeps a checkpoint; resuming from it gives the weights of a run never stopped
    (batches drawn from (seed, step), optimizer state restored: Muon's momentum too)."""
    from safetensors.torch import load_file

    from worldsim.train import WorldModelRun

    tok, shards = tiny_tokens
    s = TrainSettings(steps=4, batch=2, val_every=1000, val_batches=1, warmup=2, checkpoint_seconds=1e9,
                      optimizer=optimizer)
    train(shards, tok, tmp_path / "straight", preset="tiny", settings=s, progress=False)

    real_step = WorldModelRun.train_step

    def interrupted(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(WorldModelRun, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(shards, tok, tmp_path / "resumed", preset="tiny", settings=s, progress=False)
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    monkeypatch.setattr(WorldModelRun, "train_step", real_step)
    r = train(shards, tok, tmp_path / "resumed", preset="tiny", settings=s, progress=False)
    assert r["steps"] == 4
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_with_nothing_left_to_train_keeps_the_runs_throughput(tiny_tokens, tmp_path, monkeypatch):
    """Stopped after its last step but before the bundle was written, a run started again trains
    nothing and writes the bundle; its tokens/s is the run's last logged one, not 0."""
    import json

    from worldsim.train import WorldModelRun

    tok, shards = tiny_tokens
    s = TrainSettings(steps=3, batch=2, val_every=1000, val_batches=1, warmup=1, log_every=1,
                      checkpoint_seconds=1e9)
    real_finish = WorldModelRun.finish

    def stopped(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(WorldModelRun, "finish", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(shards, tok, tmp_path / "wm", preset="tiny", settings=s, progress=False)
    monkeypatch.setattr(WorldModelRun, "finish", real_finish)
    r = train(shards, tok, tmp_path / "wm", preset="tiny", settings=s, progress=False)
    logged = json.loads((tmp_path / "wm" / "train_log.jsonl").read_text().splitlines()[-1])
    assert r["steps"] == 3 and logged["step"] == 3
    assert r["tokens_per_s"] == pytest.approx(logged["tokens_per_s"]) and r["tokens_per_s"] > 0


def test_nonfinite_loss_stops_the_run_without_a_bundle(tiny_tokens, tmp_path, monkeypatch, capsys):
    from safetensors import safe_open

    from worldsim.cli import main
    from worldsim.train import WorldModelRun

    real_step = WorldModelRun.train_step

    def diverging(self):
        loss = real_step(self)
        return loss * float("nan") if self.step >= 2 else loss  # the third step's loss is NaN

    monkeypatch.setattr(WorldModelRun, "train_step", diverging)
    out = tmp_path / "wm"
    assert main(_args(tiny_tokens, out, "--steps", "20", "--batch", "2", "--checkpoint-seconds", "0")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "error: the loss became nan by step 3" in err and "the checkpoint at step 2 is kept" in err
    assert not (out / "model.safetensors").exists()
    with safe_open(str(out / STATE_FILE), "pt") as f:
        assert json.loads(f.metadata()["state"])["step"] == 2  # the last finite state


def test_a_run_that_diverged_before_saving_leaves_its_folder_free_for_another_model(tiny_tokens, tmp_path,
                                                                                    monkeypatch, capsys):
    """Its config stayed with no weights and no checkpoint, and a next run with other sizes was
    refused ("holds a model with another config") although there was nothing to keep."""
    from worldsim.cli import main
    from worldsim.train import WorldModelRun

    real_step = WorldModelRun.train_step
    monkeypatch.setattr(WorldModelRun, "train_step", lambda self: real_step(self) * float("nan"))
    out = tmp_path / "wm"
    assert main(_args(tiny_tokens, out, "--steps", "4", "--batch", "2")) == 2
    assert "no checkpoint was written" in capsys.readouterr().err
    assert (out / "config.json").exists() and not (out / STATE_FILE).exists()
    monkeypatch.setattr(WorldModelRun, "train_step", real_step)
    assert main(_args(tiny_tokens, out, "--steps", "2", "--batch", "2", "--objective", "ar", "--width", "32")) == 0
    assert read_config(out)["model"]["objective"] == "ar" and (out / "model.safetensors").exists()


def test_rerun_of_a_finished_bundle_says_it_is_finished(tiny_tokens, tmp_path, capsys):
    from worldsim.cli import main

    args = _args(tiny_tokens, tmp_path / "wm", "--steps", "2", "--batch", "2", "--val-every", "1000")
    assert main(args) == 0
    assert "trained ar" in capsys.readouterr().out
    weights = tmp_path / "wm" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"nothing to do: {tmp_path / 'wm'} is already trained to 2 steps")
    assert weights.stat().st_mtime_ns == before
    assert main(args[:-4] + ["--steps", "3", "--batch", "2"]) == 0  # more steps: trains on
    assert "trained ar" in capsys.readouterr().out and read_config(tmp_path / "wm")["model_metrics"]["steps"] == 3


def test_rope_3d_and_context_dreams_are_recorded_in_the_bundle_and_a_resume_must_keep_the_rope(tiny_tokens, tmp_path, capsys):
    from worldsim.cli import main
    from worldsim.inference.engine import Engine

    args = _args(tiny_tokens, tmp_path / "wm", "--steps", "2", "--batch", "2", "--val-every", "1000",
                 "--objective", "block_diffusion")
    assert main(args + ["--rope", "3d", "--context-dreams", "0.5", "--context-stalls", "0.25"]) == 0
    cfg = read_config(tmp_path / "wm")
    assert cfg["model"]["rope"] == "3d" and cfg["training"]["rope"] == "3d"
    assert cfg["training"]["context_dreams"] == 0.5 and cfg["training"]["context_stalls"] == 0.25
    assert Engine.from_bundle(tmp_path / "wm").model.cfg.rope == "3d"
    capsys.readouterr()
    # Another positional scheme would not fit the weights.
    assert main(args[:-4] + ["--steps", "3", "--batch", "2", "--rope", "1d"]) != 0
    assert "another config" in capsys.readouterr().err


def test_muon_splits_the_parameters_and_its_chain_restores_every_state():
    """Muon takes the blocks' matrices and AdamW the rest; the chain's state, saved as one
    optimizer's and loaded into a fresh chain, steps on exactly like the original."""
    import copy

    from worldsim.model import WorldModel, preset_config
    from worldsim.optim import make_optimizer

    torch.manual_seed(0)
    model = WorldModel(preset_config("tiny"))
    opt = make_optimizer(model, "muon", 1e-2, 0.1)
    muon, adamw = opt.optimizers
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in in_muon}
    assert names == {n for n, p in model.named_parameters() if n.startswith("layers.") and p.ndim == 2}
    assert "lm_head.weight" not in names and "tok_emb.weight" not in names
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))

    def step(m, o):
        x = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
        o.zero_grad()
        m(x, torch.arange(8)[None], causal=True).logsumexp(-1).mean().backward()
        o.step()

    step(model, opt)
    twin = copy.deepcopy(model)
    twin_opt = make_optimizer(twin, "muon", 1e-2, 0.1)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # as from a file: no shared buffers
    step(model, opt)
    step(twin, twin_opt)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    with pytest.raises(ValueError, match="another --optimizer"):
        make_optimizer(copy.deepcopy(model), "muon", 1e-2, 0.1).load_state_dict(
            make_optimizer(model, "adamw", 1e-2, 0.1).state_dict())


def test_optimizer_width_and_depth_are_recorded_and_a_resume_must_keep_them(tiny_tokens, tmp_path, capsys):
    from worldsim.cli import main
    from worldsim.inference.engine import Engine

    args = _args(tiny_tokens, tmp_path / "wm", "--batch", "2", "--val-every", "1000",
                 "--objective", "block_diffusion")
    assert main(args + ["--steps", "2", "--optimizer", "muon", "--width", "32", "--depth", "3"]) == 0
    cfg = read_config(tmp_path / "wm")
    assert (cfg["model"]["dim"], cfg["model"]["ffn_dim"], cfg["model"]["n_layers"]) == (32, 64, 3)
    assert cfg["training"]["optimizer"] == "muon"
    assert Engine.from_bundle(tmp_path / "wm").model.cfg.dim == 32
    capsys.readouterr()
    assert main(args + ["--steps", "3", "--optimizer", "adamw", "--width", "32", "--depth", "3"]) != 0
    assert "trained with --optimizer muon" in capsys.readouterr().err
    assert main(args + ["--steps", "3", "--depth", "3"]) != 0  # the preset's width
    assert "another config" in capsys.readouterr().err
    assert main(_args(tiny_tokens, tmp_path / "odd", "--width", "60")) != 0  # heads of 15
    assert "head dimension" in capsys.readouterr().err
    assert not (tmp_path / "odd" / "model.safetensors").exists()
    assert main(args + ["--steps", "3", "--width", "32", "--depth", "3"]) == 0  # keeps its optimizer
    cfg = read_config(tmp_path / "wm")
    assert cfg["model_metrics"]["steps"] == 3 and cfg["training"]["optimizer"] == "muon"


def test_new_runs_take_muon_and_a_run_from_before_the_choice_resumes_with_adamw(tiny_tokens, tmp_path, capsys):
    from worldsim.bundle import update_config
    from worldsim.cli import main

    args = _args(tiny_tokens, tmp_path / "wm", "--batch", "2", "--val-every", "1000")
    assert main(args + ["--steps", "2", "--optimizer", "adamw"]) == 0
    cfg = read_config(tmp_path / "wm")
    del cfg["training"]["optimizer"]  # as written before the choice existed
    update_config(tmp_path / "wm", training=cfg["training"])
    assert main(args + ["--steps", "3"]) == 0
    assert read_config(tmp_path / "wm")["training"]["optimizer"] == "adamw"
    assert main(_args(tiny_tokens, tmp_path / "new", "--batch", "2", "--steps", "1")) == 0
    assert read_config(tmp_path / "new")["training"]["optimizer"] == "muon"


def test_a_resume_may_lengthen_the_window_and_otherwise_keeps_it(tiny_tokens, tmp_path, capsys):
    """No weight depends on the window: a bundle trained on 3-frame windows goes on with 5
    (the bundle then says 5, and play attends to 5), and a resume that names no --frames keeps
    the bundle's window rather than the preset's."""
    from worldsim.cli import main
    from worldsim.inference.engine import Engine

    args = _args(tiny_tokens, tmp_path / "wm", "--batch", "2", "--val-every", "1000",
                 "--objective", "block_diffusion")
    assert main(args + ["--steps", "2", "--frames", "3"]) == 0
    assert read_config(tmp_path / "wm")["model"]["frames"] == 3
    capsys.readouterr()
    assert main(args + ["--steps", "3", "--frames", "5"]) == 0
    out = capsys.readouterr().out
    assert "trained on 3-frame windows; it goes on with 5" in out and "resuming from step 2" in out
    cfg = read_config(tmp_path / "wm")
    assert cfg["model"]["frames"] == 5 and cfg["model_metrics"]["steps"] == 3
    assert Engine.from_bundle(tmp_path / "wm").model.cfg.frames == 5
    assert main(args + ["--steps", "4"]) == 0  # the preset's window is 4: the bundle's 5 is kept
    assert read_config(tmp_path / "wm")["model"]["frames"] == 5
    assert read_config(tmp_path / "wm")["model_metrics"]["steps"] == 4


def test_a_bundle_from_before_a_config_key_existed_resumes(tiny_tokens, tmp_path, capsys):
    """A key added to ModelConfig later (here `rope`) is absent from older bundles: their
    default is meant, and the run resumes."""
    import json

    from worldsim.cli import main

    args = _args(tiny_tokens, tmp_path / "wm", "--batch", "2", "--val-every", "1000")
    assert main(args + ["--steps", "2"]) == 0
    path = tmp_path / "wm" / "config.json"
    cfg = json.loads(path.read_text())
    del cfg["model"]["rope"]
    path.write_text(json.dumps(cfg))
    capsys.readouterr()
    assert main(args + ["--steps", "3"]) == 0
    assert "trained ar" in capsys.readouterr().out and read_config(tmp_path / "wm")["model_metrics"]["steps"] == 3


def test_shards_from_another_tokenizer_are_refused(tiny_tokens, tmp_path, capsys):
    """The shards' index names their tokenizer's weights; a --tokenizer with other weights would
    pair the model with codes it was not trained on."""
    import shutil

    from safetensors.torch import load_file, save_file

    from worldsim.cli import main

    tok, shards = tiny_tokens
    other, copy = tmp_path / "other", tmp_path / "copy"
    shutil.copytree(tok, other)
    shutil.copytree(tok, copy)  # the same weights in another folder are fine
    sd = load_file(str(other / "image_tokenizer.safetensors"))
    name = next(k for k, v in sd.items() if v.is_floating_point())
    sd[name] = sd[name] + 1
    save_file(sd, str(other / "image_tokenizer.safetensors"))
    base = ["train", "--shards", str(shards), "--out", str(tmp_path / "wm"), "--preset", "tiny",
            "--no-progress", "--steps", "1", "--batch", "2", "--val-every", "1000"]
    assert main(base + ["--tokenizer", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was tokenized with another image tokenizer" in err
    assert not (tmp_path / "wm").exists()
    assert main(base + ["--tokenizer", str(copy)]) == 0
    # an --init bundle whose tokenizer made other codes is named as --init (it was called --tokenizer)
    parent = tmp_path / "wm"
    shutil.copy(other / "image_tokenizer.safetensors", parent / "image_tokenizer.safetensors")
    capsys.readouterr()
    assert main(["train", "--shards", str(shards), "--tokenizer", str(copy), "--out", str(tmp_path / "ft"),
                 "--init", str(parent), "--no-progress", "--steps", "1", "--batch", "2"]) == 2
    err = capsys.readouterr().err
    assert f"another image tokenizer ({tok}) than --init {parent}'s" in err


_SLOW_CHECKPOINT = """
import os, sys, time
real_fsync = os.fsync
def slow_fsync(fd):  # the checkpoint write takes a while: time for a second Ctrl-C to land in it
    if "train_state" in os.readlink(f"/proc/self/fd/{fd}"):
        print("writing checkpoint", flush=True)
        time.sleep(1.5)
    real_fsync(fd)
os.fsync = slow_fsync
from worldsim.train_tokenizer import TokenizerRun
real_step = TokenizerRun.train_step
def announced_step(self):
    if self.step == 2:
        print("training", flush=True)
    return real_step(self)
TokenizerRun.train_step = announced_step
from worldsim.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_second_ctrl_c_cannot_tear_the_checkpoint(crafter_store, tmp_path):
    """Ctrl-C stops training and writes the checkpoint on the way out; a second Ctrl-C during
    that write waits until the file is in place, and the rerun resumes from it."""
    out = tmp_path / "tok"
    cmd = [sys.executable, "-c", _SLOW_CHECKPOINT, "train-tokenizer", "--data", str(crafter_store),
           "--out", str(out), "--preset", "tiny", "--batch", "4", "--eval-frames", "8",
           "--checkpoint-seconds", "1e9", "--no-progress"]
    proc = subprocess.Popen(cmd + ["--steps", "100000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "training"
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline().strip() == "writing checkpoint"
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
    assert "interrupted; finished work is kept" in proc.stderr.read()
    assert not list(out.glob(".*.tmp"))
    from safetensors import safe_open

    with safe_open(str(out / STATE_FILE), "pt") as f:
        step = json.loads(f.metadata()["state"])["step"]
    assert step >= 2
    r = subprocess.run(cmd + ["--steps", str(step + 1)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"resuming from step {step}" in r.stdout


def test_a_damaged_checkpoint_is_one_line(tiny_tokens, tmp_path, capsys):
    from worldsim.cli import main

    out = tmp_path / "wm"
    out.mkdir()
    (out / STATE_FILE).write_bytes(b"\x10\x00not a safetensors file")
    assert main(_args(tiny_tokens, out, "--steps", "2", "--batch", "2")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot read the checkpoint {out / STATE_FILE}" in err
    assert err.rstrip().endswith("delete it to start the run over")


def test_out_holding_another_kind_of_run_is_refused(crafter_store, tiny_tokens, tmp_path, capsys):
    """The world model and the image tokenizer keep their state in the same file name: sending
    one into the other's folder is refused before anything there is touched."""
    import shutil

    from worldsim.cli import main

    tok = tmp_path / "tok"
    shutil.copytree(tiny_tokens[0], tok)
    config = (tok / "config.json").read_text()
    assert main(_args(tiny_tokens, tok, "--steps", "2", "--batch", "2")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "holds the training state of another kind of model (image tokenizer, not world model)" in err
    assert (tok / "config.json").read_text() == config
    assert main(_args(tiny_tokens, tmp_path / "wm", "--steps", "2", "--batch", "2")) == 0
    capsys.readouterr()
    assert main(["train-tokenizer", "--data", str(crafter_store), "--out", str(tmp_path / "wm"),
                 "--preset", "tiny", "--steps", "2", "--no-progress"]) == 2
    assert "(world model, not image tokenizer)" in capsys.readouterr().err


def test_ema_bundle_holds_the_moving_average_and_a_resume_keeps_it(tiny_tokens, tmp_path, monkeypatch):
    """With --ema d the bundle gets the average e_1 = w_1, e_t = d * e_(t-1) + (1 - d) * w_t of
    the weights after each step, the checkpoint keeps the last step's weights and the average,
    and a run stopped and resumed ends with the average of one never stopped."""
    from safetensors.torch import load_file

    from worldsim.train import WorldModelRun

    tok, shards = tiny_tokens
    plain = TrainSettings(steps=2, batch=2, val_every=1, val_batches=1, warmup=1, log_every=1,
                          checkpoint_seconds=1e9)
    ema = TrainSettings(**{**plain.__dict__, "ema": 0.75})
    def stop_after(name, settings, n):
        _interrupted_at(monkeypatch, WorldModelRun, n, lambda: train(
            shards, tok, tmp_path / name, preset="tiny", settings=settings, progress=False))

    def run(name, settings):
        return train(shards, tok, tmp_path / name, preset="tiny", settings=settings, progress=False)

    def weights(name, file="model.safetensors", prefix=""):
        t = load_file(str(tmp_path / name / file))
        return {k[len(prefix):]: v for k, v in t.items() if k.startswith(prefix)}

    run("plain", plain)
    stop_after("plain1", plain, 1)
    w1, w2 = weights("plain1", STATE_FILE, "model."), weights("plain")
    r = run("ema", ema)
    e2 = weights("ema")
    assert e2.keys() == w2.keys()
    for k in w2:
        torch.testing.assert_close(e2[k], 0.75 * w1[k] + 0.25 * w2[k])
    assert any(not torch.equal(e2[k], w2[k]) for k in w2)
    last = weights("ema", STATE_FILE, "model.")
    assert all(torch.equal(last[k], w2[k]) for k in w2)  # training goes on from the last weights
    assert r["ema"] == 0.75 and r["val_loss"] != r["val_loss_last_step"]
    log = [json.loads(line) for line in (tmp_path / "ema" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["ema_val_loss"] == r["val_loss"] and log[-1]["val_loss"] == r["val_loss_last_step"]

    stop_after("resumed", ema, 1)
    run("resumed", ema)
    resumed = weights("resumed")
    assert all(torch.equal(resumed[k], e2[k]) for k in e2)


def test_ema_must_be_below_one(tiny_tokens, tmp_path, capsys):
    from worldsim.cli import main

    with pytest.raises(SystemExit):
        main(_args(tiny_tokens, tmp_path / "wm", "--ema", "1"))
    assert "must be below 1" in capsys.readouterr().err


def test_init_starts_a_run_from_a_trained_bundle_and_records_it(tiny_tokens, tmp_path, capsys):
    """--init: the new run's model is the parent's (shape and weights, bf16 weights read into
    float32), its bundle records the parent, a resume keeps it, and a parent that cannot read
    the shards, or a shape given beside it, is refused in one line."""
    from safetensors.torch import load_file, save_file

    from worldsim.cli import main
    from worldsim.fileio import file_sha256

    base = ["--objective", "block_diffusion", "--batch", "2", "--val-every", "1000", "--warmup", "0"]
    assert main(_args(tiny_tokens, tmp_path / "parent", *base, "--steps", "3", "--width", "48")) == 0
    parent = tmp_path / "parent"
    sd = load_file(str(parent / "model.safetensors"))  # shipped bundles hold bf16 weights
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()},
              str(parent / "model.safetensors"))
    want = load_world_model(parent).float().state_dict()
    capsys.readouterr()
    # --lr so small that one step leaves the weights where they started
    assert main(_args(tiny_tokens, tmp_path / "child", *base, "--steps", "1", "--lr", "1e-12",
                      "--init", str(parent))) == 0
    assert "starting from the weights of" in capsys.readouterr().out
    child = read_config(tmp_path / "child")
    assert child["model"] == read_config(parent)["model"] and child["model"]["dim"] == 48
    got = load_world_model(tmp_path / "child").state_dict()
    assert all(got[k].dtype == torch.float32 for k in got if got[k].is_floating_point())
    for k in want:
        torch.testing.assert_close(got[k].float(), want[k], atol=1e-6, rtol=0)
    assert child["training"]["init"] == str(parent)
    assert child["init"]["bundle"] == str(parent)
    assert child["init"]["model_sha256"] == file_sha256(parent / "model.safetensors")
    assert child["init"]["training"]["steps"] == 3 and child["init"]["model_metrics"]["steps"] == 3
    assert "decoding" not in child  # the parent records no temperature
    # a parent's temperature is the child's until one is chosen for it
    update_config(parent, decoding={"temperature": 0.9, "chosen_on": {"episodes": 64}})
    assert main(_args(tiny_tokens, tmp_path / "warm", *base, "--steps", "1", "--lr", "1e-12",
                      "--init", str(parent))) == 0
    assert read_config(tmp_path / "warm")["decoding"] == {"temperature": 0.9, "inherited_from": str(parent)}
    assert recorded_temperature(tmp_path / "warm") == 0.9
    # without --init the same run starts from random weights
    assert main(_args(tiny_tokens, tmp_path / "fresh", *base, "--steps", "1", "--lr", "1e-12",
                      "--width", "48")) == 0
    fresh = load_world_model(tmp_path / "fresh").state_dict()
    assert any((fresh[k] - want[k]).abs().max() > 1e-3 for k in want if want[k].is_floating_point())
    # a resume goes on from its checkpoint, and keeps the --init it started from, even when
    # that folder no longer holds a model
    (parent / "model.safetensors").rename(parent / "moved.safetensors")
    assert main(_args(tiny_tokens, tmp_path / "child", *base, "--steps", "2", "--lr", "1e-12")) == 0
    assert read_config(tmp_path / "child")["training"]["init"] == str(parent)
    (parent / "moved.safetensors").rename(parent / "model.safetensors")
    capsys.readouterr()
    assert main(_args(tiny_tokens, tmp_path / "x", *base, "--steps", "1", "--init", str(parent),
                      "--depth", "3")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "leave out --width, --depth and --rope" in err
    assert main(_args(tiny_tokens, tmp_path / "y", "--objective", "ar", "--batch", "2", "--steps", "1",
                      "--init", str(parent))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "objective block_diffusion against ar" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_ship_model_ships_the_last_weights_of_an_averaged_run(tiny_tokens, tmp_path, capsys):
    """scripts/ship_model.py --weights last: the shipped weights are the run's last step's (from
    its training state, in bf16), not the moving average its bundle holds, and the shipped
    config says so; a run without an average is refused in one line."""
    from safetensors.torch import load_file

    from worldsim.cli import main

    ship = load_script("ship_model")

    base = ["--objective", "block_diffusion", "--batch", "2", "--val-every", "1000", "--warmup", "0"]
    run = tmp_path / "run"
    assert main(_args(tiny_tokens, run, *base, "--steps", "4", "--ema", "0.5")) == 0
    assert ship.main([str(run), "--out", str(tmp_path / "avg")]) == 0
    assert ship.main([str(run), "--out", str(tmp_path / "last"), "--weights", "last"]) == 0
    state = {k[len("model."):]: v for k, v in load_file(str(run / "train_state.safetensors")).items()
             if k.startswith("model.")}
    avg, last = load_file(str(tmp_path / "avg" / "model.safetensors")), \
        load_file(str(tmp_path / "last" / "model.safetensors"))
    assert set(last) == set(avg) == set(state)
    assert all(torch.equal(last[k], state[k].to(torch.bfloat16)) for k in state if state[k].is_floating_point())
    assert any(not torch.equal(last[k], avg[k]) for k in state if state[k].is_floating_point())
    metrics, run_metrics = read_config(tmp_path / "last")["model_metrics"], read_config(run)["model_metrics"]
    assert metrics["weights"] == "last" and metrics["val_loss"] == run_metrics["val_loss_last_step"]
    assert metrics["ema_val_loss"] == run_metrics["val_loss"]
    assert "weights" not in read_config(tmp_path / "avg")["model_metrics"]
    assert load_world_model(tmp_path / "last") is not None
    # a run without a moving average has no other weights to ship
    plain = tmp_path / "plain"
    assert main(_args(tiny_tokens, plain, *base, "--steps", "1")) == 0
    capsys.readouterr()
    assert ship.main([str(plain), "--out", str(tmp_path / "x"), "--weights", "last"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kept no moving average" in err and not (tmp_path / "x").exists()


def test_ship_model_interpolates_a_fine_tune_with_its_parent(tiny_tokens, tmp_path, capsys):
    """scripts/ship_model.py --interpolate ALPHA: the shipped weights are (1 - ALPHA) * the
    parent the run started from + ALPHA * the run's (in bf16), the config records it, and a run
    with no parent, or a parent that no longer holds the weights the run started from, is
    refused in one line with nothing written."""
    from safetensors.torch import load_file, save_file

    from worldsim.cli import main

    ship = load_script("ship_model")

    base = ["--objective", "block_diffusion", "--batch", "2", "--val-every", "1000", "--warmup", "0"]
    parent, child = tmp_path / "parent", tmp_path / "child"
    assert main(_args(tiny_tokens, parent, *base, "--steps", "2")) == 0
    assert main(_args(tiny_tokens, child, *base, "--steps", "3", "--lr", "1e-2", "--init", str(parent))) == 0
    assert ship.main([str(child), "--out", str(tmp_path / "mid"), "--interpolate", "0.25"]) == 0
    a, b = load_file(str(parent / "model.safetensors")), load_file(str(child / "model.safetensors"))
    got = load_file(str(tmp_path / "mid" / "model.safetensors"))
    floats = [k for k in a if a[k].is_floating_point()]
    assert any(not torch.equal(a[k], b[k]) for k in floats)  # the fine-tune moved the weights
    for k in floats:
        assert got[k].dtype == torch.bfloat16
        want = 0.75 * a[k].float() + 0.25 * b[k].float()
        torch.testing.assert_close(got[k].float(), want, atol=1e-6, rtol=2 ** -7)  # bf16's rounding
    # and that tolerance tells the line's ends apart: the same share of the other end fails it
    swapped = {k: 0.25 * a[k].float() + 0.75 * b[k].float() for k in floats}
    assert any(((got[k].float() - swapped[k]).abs() > 1e-6 + 2 ** -7 * swapped[k].abs()).any() for k in floats)
    # the ends of the line are the two models
    assert ship.main([str(child), "--out", str(tmp_path / "end0"), "--interpolate", "0"]) == 0
    end0 = load_file(str(tmp_path / "end0" / "model.safetensors"))
    assert all(torch.equal(end0[k], a[k].to(torch.bfloat16)) for k in floats)
    metrics = read_config(tmp_path / "mid")["model_metrics"]
    assert metrics["interpolated"] == {"parent": str(parent), "alpha": 0.25,
                                       "parent_sha256": read_config(child)["init"]["model_sha256"]}
    assert metrics["val_loss"] is None and metrics["run_val_loss"] == read_config(child)["model_metrics"]["val_loss"]
    assert load_world_model(tmp_path / "mid") is not None
    capsys.readouterr()
    # a run that started from random weights has no parent
    assert ship.main([str(parent), "--out", str(tmp_path / "x"), "--interpolate", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no parent" in err and not (tmp_path / "x").exists()
    # a parent overwritten since (a newer model shipped in its place) is not the run's parent
    save_file(b, str(parent / "model.safetensors"))
    assert ship.main([str(child), "--out", str(tmp_path / "y"), "--interpolate", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no longer holds" in err and not (tmp_path / "y").exists()
    assert ship.main([str(child), "--out", str(tmp_path / "z"), "--interpolate", "1.5"]) == 2
    assert "from 0 to 1" in capsys.readouterr().err and not (tmp_path / "z").exists()
    # the parent's weights kept elsewhere (its folder now holds a newer model): --parent names
    # them, checked against the same hash, and the mix is the one from the parent's own folder
    moved = tmp_path / "moved"
    moved.mkdir()
    save_file(a, str(moved / "model.safetensors"))
    assert ship.main([str(child), "--out", str(tmp_path / "mid2"), "--interpolate", "0.25", "--parent", str(moved)]) == 0
    again = load_file(str(tmp_path / "mid2" / "model.safetensors"))
    assert all(torch.equal(again[k], got[k]) for k in got)
    assert read_config(tmp_path / "mid2")["model_metrics"]["interpolated"]["parent"] == str(moved)
    capsys.readouterr()
    assert ship.main([str(child), "--out", str(tmp_path / "w"), "--interpolate", "0.25", "--parent", str(parent)]) == 2
    assert "no longer holds" in capsys.readouterr().err and not (tmp_path / "w").exists()
    assert ship.main([str(child), "--out", str(tmp_path / "v"), "--parent", str(moved)]) == 2
    assert "goes with --interpolate" in capsys.readouterr().err and not (tmp_path / "v").exists()
    # Shipped over an earlier model, the earlier model's report goes with it; a mistyped bundle
    # is one line.
    (tmp_path / "mid2" / "report.json").write_text("{}")
    assert ship.main([str(child), "--out", str(tmp_path / "mid2")]) == 0
    assert not (tmp_path / "mid2" / "report.json").exists()
    capsys.readouterr()
    assert ship.main([str(tmp_path / "chlid"), "--out", str(tmp_path / "u")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a trained bundle" in err and not (tmp_path / "u").exists()


def _interrupted_at(monkeypatch, run_cls, n, go) -> None:
    """`go()` with Ctrl-C arriving during step n of a `run_cls` run (n >= 1): as a real one, it
    lands once the step is whole, so the checkpoint holds n steps. (Raised inside a step, it
    would be an error there, whose half-done step is not saved.)"""
    import os
    import signal

    assert n >= 1
    step = run_cls.train_step

    def interrupted(self):
        if self.step == n - 1:
            os.kill(os.getpid(), signal.SIGINT)  # held until the step is whole
        return step(self)

    monkeypatch.setattr(run_cls, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        go()
    monkeypatch.setattr(run_cls, "train_step", step)


def test_an_error_inside_a_step_keeps_the_last_whole_step(tiny_tokens, tmp_path, monkeypatch):
    """An error raised inside a step (out of memory in the optimizer, say) after the weights
    moved saved them under the old step number, and the resume took that step again on top:
    the resumed run's weights differed from a run never stopped. The whole steps before it are
    what is kept, and the resume equals the straight run."""
    from safetensors.torch import load_file

    from worldsim.train import WorldModelRun

    kw = dict(checkpoint_seconds=1e9)  # the error comes before the next timed checkpoint
    _tiny_run(tiny_tokens, tmp_path / "straight", 5, **kw)
    real_step = WorldModelRun.train_step

    def fails_after_the_update(self):
        loss = real_step(self)
        if self.step == 3:
            raise RuntimeError("out of memory (simulated)")
        return loss

    monkeypatch.setattr(WorldModelRun, "train_step", fails_after_the_update)
    with pytest.raises(RuntimeError, match="simulated"):
        _tiny_run(tiny_tokens, tmp_path / "resumed", 5, **kw)
    monkeypatch.setattr(WorldModelRun, "train_step", real_step)
    assert _tiny_run(tiny_tokens, tmp_path / "resumed", 5, **kw)["steps"] == 5
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_signal_during_a_checkpoint_write_does_not_write_it_again(tiny_tokens, tmp_path, monkeypatch):
    """Ctrl-C held through a checkpoint write landed before the run noted the step as saved, so
    the way out wrote the same checkpoint a second time (twice the time to stop)."""
    import os
    import signal

    from worldsim import trainer

    writes = []
    real = trainer.save_checkpoint

    def interrupted_at_3(path, model, opt, state, *a, **k):
        writes.append(state["step"])
        if state["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the write holds signals
        return real(path, model, opt, state, *a, **k)

    monkeypatch.setattr(trainer, "save_checkpoint", interrupted_at_3)
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(tiny_tokens, tmp_path / "wm", 6, checkpoint_seconds=0)
    assert writes == [1, 2, 3]


def _tiny_run(tiny_tokens, out, steps, **kw):
    base = dict(batch=2, val_every=1000, val_batches=1, warmup=1, checkpoint_seconds=1e9)
    return train(tiny_tokens[1], tiny_tokens[0], out, objective="block_diffusion", preset="tiny",
                 settings=TrainSettings(steps=steps, **{**base, **kw}), progress=False)


def test_a_leg_stopped_after_its_last_checkpoint_still_writes_its_own_bundle(tiny_tokens, tmp_path, monkeypatch):
    """A second leg interrupted between its last checkpoint and the bundle write (here in its
    last validation) must not leave the first leg's bundle to be taken as this leg's."""
    from safetensors.torch import load_file

    from worldsim.checkpoint import checkpoint_weights
    from worldsim.train import WorldModelRun

    out = tmp_path / "legs"
    _tiny_run(tiny_tokens, out, 4)
    validate = WorldModelRun.validate

    def interrupted(self, model=None):
        if self.step == 8:
            raise KeyboardInterrupt
        return validate(self, model)

    monkeypatch.setattr(WorldModelRun, "validate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(tiny_tokens, out, 8)
    monkeypatch.setattr(WorldModelRun, "validate", validate)
    r = _tiny_run(tiny_tokens, out, 8)
    assert not r.get("finished") and read_config(out)["model_metrics"]["steps"] == 8
    written, state = load_file(str(out / "model.safetensors")), checkpoint_weights(out / STATE_FILE)
    assert all(torch.equal(written[k], state[k]) for k in written)


def test_a_signal_inside_a_step_lands_after_it(tiny_tokens, tmp_path, monkeypatch):
    """Ctrl-C while the optimizers step (Muon done, AdamW not yet) is held until the step ends,
    so the checkpoint holds whole steps and the resumed run equals an uninterrupted one."""
    import os

    from safetensors.torch import load_file

    from worldsim.optim import OptimizerChain

    kw = dict(warmup=2, optimizer="muon")
    _tiny_run(tiny_tokens, tmp_path / "straight", 4, **kw)
    step, calls = OptimizerChain.step, {"n": 0}

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] != 3:
            return step(self)
        self.optimizers[0].step()
        os.kill(os.getpid(), signal.SIGINT)  # delivered here, between the two optimizers
        for opt in self.optimizers[1:]:
            opt.step()

    monkeypatch.setattr(OptimizerChain, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(tiny_tokens, tmp_path / "resumed", 4, **kw)
    monkeypatch.setattr(OptimizerChain, "step", step)
    _tiny_run(tiny_tokens, tmp_path / "resumed", 4, **kw)
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_the_clock_stops_reports_the_loss_of_the_weights_it_writes(tiny_tokens, tmp_path, monkeypatch):
    from worldsim.train import WorldModelRun

    monkeypatch.setattr(WorldModelRun, "out_of_time", lambda self: self.step >= 6)  # the budget, spent
    r = _tiny_run(tiny_tokens, tmp_path / "clock", 100, val_every=4, max_minutes=60, lr=3e-3)
    assert r["steps"] == 6
    run = WorldModelRun(tiny_tokens[1], tiny_tokens[0], tmp_path / "clock", objective="block_diffusion",
                        preset="tiny", settings=TrainSettings(steps=100, batch=2, val_batches=1, optimizer="muon"),
                        progress=False)
    run.load_data()
    run.setup()
    run.model.load_state_dict(load_world_model(tmp_path / "clock").state_dict())
    assert r["val_loss"] == pytest.approx(run.validate(), rel=1e-6)


def test_a_world_model_and_an_inverse_dynamics_model_never_share_a_folder(tiny_tokens, crafter_store, tmp_path, capsys):
    """Each refuses the other's folder in one line, before writing anything into it (the IDM's
    action ids start at 0, the world model's after the image codes)."""
    from worldsim.cli import main
    from worldsim.idm import IDMTrainSettings, train_idm

    wm, idm = tmp_path / "wm", tmp_path / "idm"
    _tiny_run(tiny_tokens, wm, 2)
    train_idm(crafter_store, idm, IDMTrainSettings(steps=2, batch=4, checkpoint_seconds=1e9), channels=8, progress=False)
    before = {d: (d / "config.json").read_text() for d in (wm, idm)}
    capsys.readouterr()
    assert main(["train-idm", "--data", str(crafter_store), "--out", str(wm), "--steps", "3", "--no-progress"]) == 2
    assert "holds a world model" in capsys.readouterr().err
    assert main(_args(tiny_tokens, idm, "--objective", "block_diffusion", "--steps", "3")) == 2
    assert "holds an inverse dynamics model" in capsys.readouterr().err
    assert {d: (d / "config.json").read_text() for d in (wm, idm)} == before


def test_a_resumed_vq_tokenizer_run_equals_an_uninterrupted_one(crafter_store, tmp_path, monkeypatch):
    """The codebook restarts dead codes with random draws; a run interrupted and resumed after
    restarts began must draw what the uninterrupted run drew."""
    from safetensors.torch import load_file

    from worldsim.tokenizers.image import EMAQuantizer
    from worldsim.train_tokenizer import TokenizerRun, TokenizerTrainSettings, train_tokenizer

    s = TokenizerTrainSettings(steps=150, batch=4, eval_frames=8, checkpoint_seconds=1e9, warmup=10)
    update, restarts = EMAQuantizer._ema_update, []

    def counting(self, z, idx):
        before = self.cluster_size.clone()
        update(self, z, idx)
        restarts.append(int(((self.cluster_size == 1.0) & (before * self.decay < self.dead_threshold)).sum()))

    monkeypatch.setattr(EMAQuantizer, "_ema_update", counting)
    train_tokenizer(crafter_store, tmp_path / "straight", preset="tiny", settings=s, progress=False)
    stop = 140  # (on this data, codes are first restarted at step 137)
    assert sum(restarts[:stop]) > 0 and sum(restarts[stop:]) > 0  # codes restarted on both sides of it
    _interrupted_at(monkeypatch, TokenizerRun, stop, lambda: train_tokenizer(
        crafter_store, tmp_path / "resumed", preset="tiny", settings=s, progress=False))
    train_tokenizer(crafter_store, tmp_path / "resumed", preset="tiny", settings=s, progress=False)
    a = load_file(str(tmp_path / "straight" / "image_tokenizer.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "image_tokenizer.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_forgets_what_a_kill_left_behind(tiny_tokens, tmp_path):
    """Log lines of steps after the checkpoint (trained again on resume; a torn last line too)
    and a checkpoint's temporary from a kill mid-write are gone once the run goes on."""
    out = tmp_path / "killed"
    _tiny_run(tiny_tokens, out, 4, log_every=1)
    with open(out / "train_log.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 1.0}\n{"step": 6, "loss": 1.0}\n{"step": 7, "lo')
    stale = out / ".train_state.safetensors.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    _tiny_run(tiny_tokens, out, 6, log_every=1)
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6] and not stale.exists()


def test_a_large_seed_trains_and_a_short_run_still_reaches_its_learning_rate(tiny_tokens, tmp_path):
    from worldsim.trainer import lr_at

    assert _tiny_run(tiny_tokens, tmp_path / "seed", 2, seed=2**40)["steps"] == 2
    # the warmup cut to half the run: the peak is reached, then the rate decays
    assert lr_at(24, 1e-3, warmup=100, steps=50) == pytest.approx(1e-3)


def test_ship_model_finds_a_parent_recorded_relative_to_another_working_folder(tiny_tokens, tmp_path, monkeypatch):
    """`--init runs/parent` is recorded as given; shipped from another working folder, the
    parent was looked for there and the interpolation refused. It is also looked for above the
    run's folder."""
    from safetensors.torch import load_file

    from worldsim.cli import main

    ship = load_script("ship_model")
    base = ["--objective", "block_diffusion", "--batch", "2", "--val-every", "1000", "--warmup", "0"]
    root = tmp_path / "checkout"
    (root / "runs").mkdir(parents=True)
    monkeypatch.chdir(root)
    assert main(_args(tiny_tokens, "runs/parent", *base, "--steps", "2")) == 0
    assert main(_args(tiny_tokens, "runs/child", *base, "--steps", "3", "--init", "runs/parent")) == 0
    assert read_config(root / "runs" / "child")["init"]["bundle"] == "runs/parent"
    monkeypatch.chdir(tmp_path)
    assert ship.main([str(root / "runs" / "child"), "--out", str(tmp_path / "end0"), "--interpolate", "0"]) == 0
    got, want = load_file(str(tmp_path / "end0" / "model.safetensors")), load_file(str(root / "runs" / "parent" / "model.safetensors"))
    assert all(torch.equal(got[k], want[k].to(torch.bfloat16)) for k in want if want[k].is_floating_point())


def test_a_torn_tokenizer_copy_in_the_run_is_made_again_on_resume(tiny_tokens, tmp_path):
    """The run's copy of the image tokenizer was written in place and kept if it existed: a kill
    during the copy left a bundle whose tokenizer was torn for good."""
    from worldsim.fileio import file_sha256

    tok, shards = tiny_tokens
    s = TrainSettings(steps=1, batch=2, val_every=1000, val_batches=1, warmup=1)
    train(shards, tok, tmp_path / "wm", objective="block_diffusion", preset="tiny", settings=s, progress=False)
    copy = tmp_path / "wm" / "image_tokenizer.safetensors"
    data = copy.read_bytes()
    copy.write_bytes(data[: len(data) // 2])  # as a kill mid-copy left it
    train(shards, tok, tmp_path / "wm", objective="block_diffusion", preset="tiny",
          settings=TrainSettings(steps=2, batch=2, val_every=1000, val_batches=1, warmup=1), progress=False)
    assert file_sha256(copy) == file_sha256(tok / "image_tokenizer.safetensors")
    assert not list((tmp_path / "wm").glob(".*.tmp"))
