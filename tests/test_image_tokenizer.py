import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from worldsim.bundle import load_image_tokenizer, read_config
from worldsim.tokenizers.image import (PRESETS, ImageTokenizer, ImageTokenizerConfig, code_stats,
                                       psnr, ssim)
from worldsim.train_tokenizer import STATE_FILE, TokenizerTrainSettings, train_tokenizer


def test_encode_decode_shapes_and_dtypes():
    torch.manual_seed(0)
    tok = ImageTokenizer(PRESETS["tiny"]).eval()
    frames = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    codes = tok.encode(frames)
    assert codes.shape == (5, 16) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 64
    out = tok.decode(codes)
    assert out.shape == (5, 32, 32, 3) and out.dtype == torch.uint8
    # Same answer from a torch input, and batched equals one at a time.
    assert torch.equal(tok.encode(torch.from_numpy(frames)), codes)
    assert torch.equal(torch.cat([tok.encode(frames[i:i + 1]) for i in range(5)]), codes)


def test_bad_inputs_raise():
    tok = ImageTokenizer(PRESETS["tiny"]).eval()
    with pytest.raises(ValueError, match="uint8"):
        tok.encode(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="32x32"):
        tok.encode(np.zeros((1, 40, 40, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        tok.decode(torch.full((1, 16), 64))
    with pytest.raises(ValueError, match="not a multiple"):
        ImageTokenizerConfig(height=30)
    with pytest.raises(ValueError, match="unknown image tokenizer config keys"):
        ImageTokenizerConfig.from_dict({**PRESETS["tiny"].to_dict(), "bogus": 1})


def test_dead_codes_are_restarted():
    torch.manual_seed(0)
    cfg = ImageTokenizerConfig(height=16, width=16, patch=8, channels=16, enc_blocks=1,
                               dec_blocks=1, codebook_size=32, code_dim=4, ema_decay=0.5,
                               dead_threshold=0.5)
    tok = ImageTokenizer(cfg).train()
    tok.quant.embed += 100.0  # every code far away: only a few would ever be chosen
    x = torch.rand(64, 3, 16, 16)
    for _ in range(10):
        tok(x)
    used, _ = code_stats(tok(x)["codes"], 32)
    assert used > 0.5


def test_metrics():
    a = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    b = a.clone()
    b[1] += 16
    p = psnr(a, b)
    assert p[0] > 90 and p[1] == pytest.approx(10 * np.log10(255**2 / 256), abs=1e-3)
    x = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    assert (ssim(x, 255 - x) < 0.5).all()
    used, perp = code_stats(torch.tensor([0, 0, 1, 1]), 4)
    assert used == 0.5 and perp == pytest.approx(2.0)


def test_train_writes_bundle_grid_and_metrics(crafter_store, tmp_path):
    s = TokenizerTrainSettings(steps=6, batch=8, eval_frames=64, checkpoint_seconds=1e9)
    m = train_tokenizer(crafter_store, tmp_path / "tok", preset="tiny", settings=s, progress=False)
    for key in ("psnr_day", "ssim", "code_usage", "perplexity", "fps_batch1", "fps_batch64"):
        assert key in m
    assert m["steps"] == 6 and m["day_frames"] + m["night_frames"] == m["frames"]
    assert (tmp_path / "tok" / "reconstructions.png").stat().st_size > 0
    cfg = read_config(tmp_path / "tok")
    assert cfg["image_tokenizer"]["height"] == 72 and cfg["image_tokenizer_metrics"]["steps"] == 6
    tok = load_image_tokenizer(tmp_path / "tok")
    assert tok.encode(np.zeros((1, 72, 72, 3), np.uint8)).shape == (1, 81)


def test_killed_training_resumes_from_checkpoint(crafter_store, tmp_path):
    out = tmp_path / "tok"
    base = [sys.executable, "-m", "worldsim", "train-tokenizer", "--data", str(crafter_store),
            "--out", str(out), "--preset", "tiny", "--batch", "4", "--eval-frames", "32",
            "--checkpoint-seconds", "0", "--no-progress"]
    proc = subprocess.Popen(base + ["--steps", "100000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while time.time() < deadline and not (out / STATE_FILE).exists():
        time.sleep(0.1)
    time.sleep(1.0)  # let it take more steps and checkpoint again
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from safetensors import safe_open

    with safe_open(str(out / STATE_FILE), "pt") as f:
        killed_at = json.loads(f.metadata()["state"])["step"]
    assert killed_at > 0
    target = killed_at + 3
    r = subprocess.run(base + ["--steps", str(target)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"resuming from step {killed_at}" in r.stdout
    assert f"{target} steps" in r.stdout
    assert read_config(out)["image_tokenizer_metrics"]["steps"] == target


def test_the_mineworld_preset_has_mineworlds_token_shape():
    """DESIGN.md's MineRL layout: 224x384 frames as 14x24 = 336 tokens of an 8192-code book, the
    shape the mineworld-300m model preset reads."""
    from worldsim.model import preset_config

    cfg = PRESETS["mineworld"]
    model = preset_config("mineworld-300m")
    assert cfg.grid == model.grid == (14, 24) and cfg.tokens_per_frame == model.tokens_per_frame == 336
    assert cfg.codebook_size == model.codebook_size == 8192
    torch.manual_seed(0)
    tok = ImageTokenizer(cfg).eval()
    frames = np.random.default_rng(0).integers(0, 256, (1, 224, 384, 3), dtype=np.uint8)
    codes = tok.encode(frames)
    assert codes.shape == (1, 336) and int(codes.max()) < 8192
    assert tuple(tok.decode(codes).shape) == (1, 224, 384, 3)
