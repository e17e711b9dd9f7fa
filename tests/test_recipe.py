"""Training recipe pieces: context noise and dreams, the time-budget schedule, and the GPU script's smoke run."""

import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from worldsim.model import WorldModel, preset_config
from worldsim.objectives import (Objective, block_diffusion_inputs, corrupt_context, dream_context,
                                 dream_frames)
from worldsim.trainer import lr_at

ROOT = Path(__file__).resolve().parent.parent


def test_context_noise_corrupts_context_not_targets():
    cfg = preset_config("tiny", objective="block_diffusion")
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, cfg.codebook_size, (8, cfg.frames, cfg.tokens_per_frame), generator=g)
    actions = torch.randint(cfg.codebook_size, cfg.codebook_size + cfg.action_ids,
                            (8, cfg.frames, cfg.action_tokens), generator=g)
    plain = block_diffusion_inputs(cfg, frames, actions, torch.Generator().manual_seed(1))
    noisy = block_diffusion_inputs(cfg, frames, actions, torch.Generator().manual_seed(1), 0.3)
    n_noisy = (cfg.frames - 1) * cfg.tokens_per_frame
    # Targets of the noisy frames are the real frames either way.
    assert torch.equal(plain["targets"][:, :n_noisy], noisy["targets"][:, :n_noisy])
    # The clean context differs on image tokens, at about the asked rate, never on actions.
    clean_p, clean_n = plain["tokens"][:, n_noisy:], noisy["tokens"][:, n_noisy:]
    is_action = clean_p >= cfg.codebook_size
    assert torch.equal(clean_p[is_action], clean_n[is_action])
    changed = (clean_p != clean_n)[~is_action].float().mean()
    assert 0.2 < float(changed) < 0.35  # 0.3, less the random codes that equal the real one
    assert not torch.equal(plain["prev"], noisy["prev"])  # the previous-frame hints read the context too
    assert torch.equal(corrupt_context(frames, 0.0, cfg.codebook_size), frames)


@pytest.mark.parametrize("augmentation", ["context_noise", "context_stalls"])
def test_context_augmentations_only_in_training_and_only_for_block_diffusion(augmentation):
    cfg = preset_config("tiny", objective="block_diffusion")
    torch.manual_seed(0)
    obj = Objective(WorldModel(cfg), **{augmentation: 0.5})
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, cfg.codebook_size, (4, cfg.frames, cfg.tokens_per_frame), generator=g)
    actions = torch.full((4, cfg.frames, cfg.action_tokens), cfg.codebook_size)
    obj.eval()
    a, _ = obj(frames, actions, torch.Generator().manual_seed(3))
    b, _ = Objective(obj.model)(frames, actions, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)  # evaluation never augments
    c, _ = obj.train()(frames, actions, torch.Generator().manual_seed(3))
    d, _ = Objective(obj.model).train()(frames, actions, torch.Generator().manual_seed(3))
    assert not torch.equal(c, d)  # training does
    with pytest.raises(ValueError, match="block_diffusion"):
        Objective(WorldModel(preset_config("tiny", objective="ar")), **{augmentation: 0.1})


def _tiny_windows(b: int, seed: int = 0):
    cfg = preset_config("tiny", objective="block_diffusion")
    torch.manual_seed(seed)
    model = WorldModel(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, cfg.codebook_size, (b, cfg.frames, cfg.tokens_per_frame), generator=g)
    actions = torch.randint(cfg.codebook_size, cfg.codebook_size + cfg.action_ids,
                            (b, cfg.frames, cfg.action_tokens), generator=g)
    return cfg, model, frames, actions


def test_a_dream_sees_only_the_real_frames_before_it():
    cfg, model, frames, actions = _tiny_windows(4)
    dream = dream_frames(model, frames, actions, torch.Generator().manual_seed(1))
    assert dream.shape == (4, cfg.frames - 1, cfg.tokens_per_frame)
    assert int(dream.min()) >= 0 and int(dream.max()) < cfg.codebook_size  # every token revealed
    # Real frame 2 is the target of dream 2: changing it changes dreams 1 and 2 not at all, and
    # the dream of frame 3, which reads it as context, does change.
    other = frames.clone()
    other[:, 2] = (other[:, 2] + 1) % cfg.codebook_size
    again = dream_frames(model, other, actions, torch.Generator().manual_seed(1))
    assert torch.equal(again[:, :2], dream[:, :2])
    assert not torch.equal(again[:, 2], dream[:, 2])
    # Sampled, not greedy: another seed dreams otherwise.
    assert not torch.equal(dream_frames(model, frames, actions, torch.Generator().manual_seed(2)), dream)


def test_context_dreams_replace_the_middle_frames_of_the_chosen_windows():
    cfg, model, frames, actions = _tiny_windows(64)
    context = dream_context(model, frames, actions, 1.0, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    torch.rand(64, generator=g)  # the draw that picks the windows
    dream = dream_frames(model, frames[:, :-1], actions[:, :-1], g)
    assert torch.equal(context[:, 1:-1], dream)
    assert torch.equal(context[:, 0], frames[:, 0]) and torch.equal(context[:, -1], frames[:, -1])
    assert torch.equal(dream_context(model, frames, actions, 0.0, g), frames)
    half = dream_context(model, frames, actions, 0.5, torch.Generator().manual_seed(6))
    dreamed = (half != frames).flatten(1).any(1)
    assert 16 <= int(dreamed.sum()) <= 48
    assert torch.equal(half[~dreamed], frames[~dreamed])


def test_context_dreams_only_in_training_and_only_for_block_diffusion():
    cfg, model, frames, actions = _tiny_windows(4)
    obj = Objective(model, context_dreams=1.0)
    plain = Objective(model)
    obj.eval()
    a, _ = obj(frames, actions, torch.Generator().manual_seed(3))
    assert torch.equal(a, plain(frames, actions, torch.Generator().manual_seed(3))[0])
    obj.train()
    plain.train()
    b, n = obj(frames, actions, torch.Generator().manual_seed(3))
    c, m = plain(frames, actions, torch.Generator().manual_seed(3))
    assert not torch.equal(b, c)  # the context the loss is taken on differs
    b.backward()  # the dream passes hold no graph, the loss still does
    assert model.lm_head.weight.grad is not None
    with pytest.raises(ValueError, match="block_diffusion"):
        Objective(WorldModel(preset_config("tiny", objective="ar")), context_dreams=0.5)


def test_schedule_follows_the_time_budget():
    # Step-based: halfway through the decay at the middle step.
    mid = lr_at(550, 1.0, 100, 1000, 0.1)
    assert math.isclose(mid, 0.1 + 0.9 * 0.5, rel_tol=1e-6)
    # A time budget half spent at step 200 puts the schedule at its middle too...
    assert math.isclose(lr_at(200, 1.0, 100, 100000, 0.1, time_fraction=0.5), mid, rel_tol=1e-6)
    # ...and spent, at its floor, however few steps ran.
    assert math.isclose(lr_at(300, 1.0, 100, 100000, 0.1, time_fraction=1.0), 0.1, rel_tol=1e-6)
    # Warmup stays step-based.
    assert lr_at(9, 1.0, 100, 1000, 0.1, time_fraction=0.9) == pytest.approx(0.1)


def test_gpu_script_smoke_runs_end_to_end(tmp_path):
    """scripts/train_gpu.py smoke: collect, fit tiles, tokenize, pack, train, bring back, load."""
    if not (ROOT / ".git").exists():
        pytest.skip("the GPU script snapshots the code with git")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_gpu.py"), "smoke",
                        "--work", str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "bundle loads" in r.stdout
    parts = list((tmp_path / "results").glob("model.safetensors.part*"))
    assert parts and all(p.stat().st_size <= 16 * 2**20 for p in parts)
    assert (tmp_path / "bundle" / "model.safetensors").exists()
    # What travels: the code's packages alone (the checkout's results and weights travel beside
    # it anyway), and the tokenizer's two files; the size is reported with the checkout's.
    with tarfile.open(tmp_path / "carry" / "src.tar") as t:
        tops = {n.split("/")[0] for n in t.getnames()}
    assert {"worldsim", "tokenizers", "inference", "client"} <= tops
    assert not tops & {"assets", "benchmarks", "docs", "tests"}
    assert sorted(p.name for p in (tmp_path / "carry" / "tokenizer").iterdir()) == [
        "config.json", "image_tokenizer.safetensors"]
    assert "beside a checkout of" in r.stdout
    # The bundle names the shards here, not the device's copy: eval keeps to its held-out episodes.
    cfg = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert cfg["training"]["shards"] == str((tmp_path / "shards").resolve())
    # What comes back fits the device's 8 files (the tokenizer went from here and is not sent
    # back), and its config says how the weights were split, which the bundle no longer carries.
    back = [p.name for p in (tmp_path / "results").iterdir()]
    assert len(back) <= 8 and "image_tokenizer.safetensors" not in back
    assert json.loads((tmp_path / "results" / "config.json").read_text())["transfer"]["parts"] == len(parts)
    assert "transfer" not in cfg and (tmp_path / "bundle" / "image_tokenizer.safetensors").exists()

    def script(*args):
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "train_gpu.py"), *args],
                              capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)

    # A weight part that did not come back: refused in one line, nothing unpacked.
    parts[0].rename(tmp_path / "away")
    r = script("unpack", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "b2"),
               "--inputs", str(tmp_path / "carry"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "weight parts" in r.stderr
    assert not (tmp_path / "b2").exists()
    # A mistyped folder: one line, and the carry already prepared is kept.
    r = script("prepare", "--shards", str(tmp_path / "shardz"), "--tokenizer", str(tmp_path / "tok"),
               "--dest", str(tmp_path / "carry"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "shardz" in r.stderr
    assert (tmp_path / "carry" / "src.tar").exists()


def test_cpu_recipe_runs_end_to_end_and_a_second_run_picks_up(tmp_path):
    """scripts/train_default.sh at toy sizes: every step runs, and running it again redoes none
    of the finished work (collect, tokenize and the IDM find theirs; training is out of time)."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "worldsim").exists():
        pytest.skip("the worldsim command is not installed beside this Python")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "EPISODES": "6",
           "STEPS_PER_EPISODE": "40", "TRAIN_MINUTES": "0.05", "IDM_STEPS": "4", "EVAL_EPISODES": "2",
           "THREADS": "1", "SDL_VIDEODRIVER": "dummy"}
    work = tmp_path / "w"

    def recipe() -> str:
        r = subprocess.run(["bash", str(ROOT / "scripts" / "train_default.sh"), str(work)], capture_output=True,
                           text=True, env=env, timeout=600, cwd=tmp_path)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout + r.stderr

    first = recipe()
    assert "== done" in first
    report = work / "model-eval" / "report.json"
    assert report.exists() and (work / "model" / "model.safetensors").exists()
    book = work / "temperature" / "judgements.json"
    assert len(json.loads(book.read_text())) == 3 * 2  # three temperatures on two draws
    book_written, report_written = book.stat().st_mtime_ns, report.stat().st_mtime_ns
    tokenizer_written = (work / "tok" / "image_tokenizer.safetensors").stat().st_mtime_ns
    second = recipe()
    assert "== done" in second
    assert "6 episodes already in" in second  # nothing collected twice
    assert "tokenized 0 episodes (6 already there)" in second  # nor tokenized twice
    assert "resuming from step 4" in second  # the IDM finds its checkpoint
    assert book.stat().st_mtime_ns == book_written  # no temperature judged again
    assert report.stat().st_mtime_ns == report_written  # nor the model evaluated again
    assert (work / "tok" / "image_tokenizer.safetensors").stat().st_mtime_ns == tokenizer_written  # nor fitted


def test_context_stalls_play_one_step_twice_and_take_no_loss_on_the_repeat():
    from worldsim.objectives import stall_windows

    cfg = preset_config("tiny", objective="block_diffusion")
    b, f, n = 64, cfg.frames, cfg.tokens_per_frame
    frames = torch.arange(f)[None, :, None].expand(b, f, n) + 100 * torch.arange(b)[:, None, None]
    actions = torch.arange(f)[None, :, None].expand(b, f, 1) + 10
    g = torch.Generator().manual_seed(0)
    sf, sa, repeated = stall_windows(frames, actions, 0.5, g)
    stalled = repeated.any(1)
    assert 16 < int(stalled.sum()) < 48 and int(repeated.sum(1).max()) == 1
    assert torch.equal(sf[~stalled], frames[~stalled]) and torch.equal(sa[~stalled], actions[~stalled])
    ks = set()
    for i in stalled.nonzero()[:, 0].tolist():
        k = int(repeated[i].nonzero()[0, 0]) - 1
        ks.add(k)
        want = list(range(k + 1)) + list(range(k, f - 1))  # step k played twice, the last frame dropped
        assert sf[i, :, 0].sub(100 * i).tolist() == want and sa[i, :, 0].sub(10).tolist() == want
    assert ks == set(range(f - 2))  # every step but the last two: a move follows every stall
    # No loss on the repeated frame; the same loss positions elsewhere.
    x = block_diffusion_inputs(cfg, sf, sa, torch.Generator().manual_seed(1), no_loss_BF=repeated)
    y = block_diffusion_inputs(cfg, sf, sa, torch.Generator().manual_seed(1))
    lx = x["loss_mask"][:, :(f - 1) * n].view(b, f - 1, n)
    ly = y["loss_mask"][:, :(f - 1) * n].view(b, f - 1, n)
    assert not lx[repeated[:, 1:]].any() and ly[repeated[:, 1:]].any()
    assert torch.equal(lx[~repeated[:, 1:]], ly[~repeated[:, 1:]])
    assert stall_windows(frames, actions, 0.0, g)[2] is None
