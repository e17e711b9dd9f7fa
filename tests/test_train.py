import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from worldsim.bundle import read_config
from worldsim.bundle import load_world_model
from worldsim.train import STATE_FILE, TrainSettings, train
from worldsim.inference.decode_block_diffusion import masked_after
from worldsim.inference.plain import rollout
from worldsim.inference.sampling import GREEDY


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
    assert [e["step"] for e in log] == [4] or log[-1]["step"] == 4
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
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29517", "-m", "worldsim",
           *_args(tiny_tokens, out, "--steps", "3", "--batch", "2", "--val-every", "1000")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    m = read_config(out)["model_metrics"]
    assert m["world_size"] == 2 and m["steps"] == 3
    assert m["replicas_identical"] is True
    assert len(m["replica_checksums"]) == 2
    assert r.stdout.count("trained ar") == 1  # only rank 0 reports


def test_rollout_psnr_against_ground_truth(crafter_store, tiny_tokens, tmp_path):
    from worldsim.evaluate import rollout_psnr

    tok, shards = tiny_tokens
    train(shards, tok, tmp_path / "wm", objective="block_diffusion", preset="tiny",
          settings=TrainSettings(steps=2, batch=2, val_every=1000, val_batches=1, warmup=1), progress=False)
    r = rollout_psnr(tmp_path / "wm", crafter_store, episodes=2, steps=3, val_fraction=0.5)
    assert r["frames"].shape == r["truth"].shape and r["frames"].shape[1] == 3
    assert len(r["per_step"]) == 3 and len(r["copy_last_per_step"]) == 3
    assert 0 < r["psnr"] < 100 and 0 < r["copy_last_psnr"] < 100 and r["tokenizer_psnr"] > 0


def test_pooled_psnr_is_finite_for_exact_frames():
    from worldsim.evaluate import pooled_psnr_per_step

    truth = torch.zeros(2, 1, 4, 4, 3, dtype=torch.uint8)
    guess = truth.clone()
    guess[1] += 16  # one episode exact, one off by 16 everywhere
    (p,) = pooled_psnr_per_step(guess, truth)
    assert p == pytest.approx(10 * torch.log10(torch.tensor(255.0**2 / 128)).item(), abs=1e-4)


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
