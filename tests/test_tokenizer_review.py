"""Edges of the tokenizers and their training: daylight the tile tokenizer cannot use, empty
batches, a codebook fitted on nothing, train-tokenizer flags given to the kind that ignores
them, frame sizes the VQ tokenizer cannot tile, and training windows without a loss token."""

import json

import numpy as np
import pytest
import torch

from _cli import one_line_error
from worldsim.cli import main
from worldsim.tokenizers.image import PRESETS as IMAGE_PRESETS, ImageTokenizer
from worldsim.tokenizers.tile import PRESETS as TILE_PRESETS, TileTokenizer, fit_codebook


def _store(root, size=(32, 32), episodes=3, daylight=True):
    """A small store of random frames (Crafter's action space), written in a blink."""
    from worldsim.data.store import EpisodeStore
    from worldsim.envs.crafter import CRAFTER_SPACE

    st = EpisodeStore.create(root, env="crafter", action_space=CRAFTER_SPACE, frame_size=size, fps=10)
    rng = np.random.default_rng(0)
    for i in range(episodes):
        st.write_episode(f"{i:06d}", rng.integers(0, 256, (6, *size, 3), dtype=np.uint8),
                         rng.integers(0, 17, 5).astype(np.int16),
                         np.linspace(1, 0.2, 6).astype(np.float32) if daylight else None)
    st.refresh()
    return root


def _tile_tok() -> TileTokenizer:
    tok = TileTokenizer(TILE_PRESETS["tiny"])
    g = torch.Generator().manual_seed(0)
    tok.codebook.copy_(torch.randint(0, 256, tok.codebook.shape, generator=g).float())
    return tok


@pytest.mark.parametrize("bad", [np.nan, 1.5, -0.25, np.inf])
def test_tile_tokenizer_refuses_daylight_it_cannot_use(bad):
    tok = _tile_tok()
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    light = np.array([bad, 1.0], np.float32)
    # A NaN daylight used to turn the frame's every code into 0, and 1.5 was clamped to noon.
    with pytest.raises(ValueError, match=r"daylight must lie in \[0, 1\]"):
        tok.encode(frames, light)
    with pytest.raises(ValueError, match=r"daylight must lie in \[0, 1\]"):
        tok.decode(torch.zeros(2, 16, dtype=torch.long), light)
    # The ends of the range are daylight like any other.
    assert tok.encode(frames, np.array([0.0, 1.0], np.float32)).shape == (2, 16)


def test_tokenizers_take_an_empty_batch():
    frames = np.zeros((0, 32, 32, 3), np.uint8)
    tile = _tile_tok()
    assert tuple(tile.encode(frames).shape) == (0, 16)
    assert tuple(tile.encode(frames, np.zeros(0, np.float32)).shape) == (0, 16)
    assert tuple(tile.decode(torch.zeros(0, 16, dtype=torch.long)).shape) == (0, 32, 32, 3)
    vq = ImageTokenizer(IMAGE_PRESETS["tiny"]).eval()
    codes = vq.encode(frames)
    assert tuple(codes.shape) == (0, 16) and codes.dtype == torch.long
    assert tuple(vq.decode(codes).shape) == (0, 32, 32, 3)


def test_a_codebook_fitted_on_no_tiles_says_so():
    with pytest.raises(ValueError, match="no tiles"):
        fit_codebook(torch.zeros(0, 192), 4)


def test_vq_training_on_frames_the_patch_does_not_tile_is_one_line(tmp_path, capsys):
    data = _store(tmp_path / "odd", size=(36, 36))
    line = one_line_error(["train-tokenizer", "--data", str(data), "--out", str(tmp_path / "tok"),
                           "--preset", "tiny", "--steps", "1", "--no-progress"], capsys)
    assert "36x36 is not a multiple of patch 8" in line, line
    assert not (tmp_path / "tok" / "config.json").exists()


def test_codebook_with_the_vq_kind_is_refused_not_ignored(tmp_path, capsys):
    data = _store(tmp_path / "s")
    line = one_line_error(["train-tokenizer", "--data", str(data), "--out", str(tmp_path / "tok"),
                           "--preset", "tiny", "--steps", "1", "--batch", "2", "--codebook", "7",
                           "--no-progress"], capsys)
    assert "--codebook" in line and "--kind tile" in line, line
    assert not (tmp_path / "tok" / "config.json").exists()


@pytest.mark.parametrize("flag", [["--steps", "5"], ["--lr", "0.1"], ["--max-frames", "10"],
                                  ["--device", "cpu"]])
def test_vq_flags_with_the_tile_kind_are_refused_not_ignored(tmp_path, capsys, flag):
    data = _store(tmp_path / "s")
    line = one_line_error(["train-tokenizer", "--kind", "tile", "--data", str(data),
                           "--out", str(tmp_path / "tok"), "--preset", "tiny", "--no-progress", *flag],
                          capsys)
    assert flag[0] in line and "VQ" in line, line
    assert not (tmp_path / "tok" / "config.json").exists()


def test_vq_flags_still_reach_the_vq_run_and_the_rest_keep_their_defaults(tmp_path):
    from worldsim.train_settings import TokenizerTrainSettings

    data = _store(tmp_path / "s")
    assert main(["train-tokenizer", "--data", str(data), "--out", str(tmp_path / "tok"), "--preset",
                 "tiny", "--steps", "2", "--batch", "3", "--eval-frames", "4", "--no-progress"]) == 0
    cfg = json.loads((tmp_path / "tok" / "config.json").read_text())
    run = cfg["tokenizer_training"]
    assert (run["steps"], run["batch"], run["eval_frames"]) == (2, 3, 4)
    assert run["lr"] == TokenizerTrainSettings.lr
    assert cfg["image_tokenizer_metrics"]["steps"] == 2


def test_tile_fit_skips_an_episode_with_broken_daylight_and_names_it(tmp_path, capsys):
    """A NaN daylight was counted as neither day nor night, without a word; such an episode is
    corrupt (the store refuses to write one), and the fit skips it with a warning."""
    from worldsim.cli import main
    from worldsim.data.store import EpisodeStore
    from worldsim.fileio import atomic_save_npz

    data = _store(tmp_path / "s")
    store = EpisodeStore(data)
    ep = store.load("000001")
    bad = ep.daylight.copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match="daylight"):
        store.write_episode("000001", ep.frames, ep.actions, bad)
    atomic_save_npz(store.episode_path("000001"), frames=ep.frames, actions=ep.actions, daylight=bad)
    assert main(["train-tokenizer", "--kind", "tile", "--data", str(data), "--out", str(tmp_path / "tok"),
                 "--preset", "tiny", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "000001" in err and "daylight" in err and "Traceback" not in err, err


@pytest.mark.parametrize("objective", ["ar", "block_diffusion"])
def test_a_one_frame_window_is_refused_instead_of_a_nan_loss(objective):
    from worldsim.model import WorldModel, preset_config
    from worldsim.objectives import Objective

    torch.manual_seed(0)
    cfg = preset_config("tiny", objective=objective)
    obj = Objective(WorldModel(cfg))
    g = torch.Generator().manual_seed(0)
    actions = torch.full((2, 1, 1), cfg.codebook_size)
    with pytest.raises(ValueError, match="at least 2 frames"):
        obj(torch.randint(0, cfg.codebook_size, (2, 1, cfg.tokens_per_frame)), actions, g)
    with pytest.raises(ValueError, match="expected frames"):
        obj(torch.randint(0, cfg.codebook_size, (2, 3, cfg.tokens_per_frame)),
            torch.full((2, 3, 2), cfg.codebook_size), g)
    # Two frames: a finite loss over frame 1's tokens.
    loss, count = obj(torch.randint(0, cfg.codebook_size, (2, 2, cfg.tokens_per_frame)),
                      torch.full((2, 2, 1), cfg.codebook_size), g)
    assert torch.isfinite(loss) and int(count) > 0


def test_resize_refuses_frames_it_would_garble():
    from worldsim.frames import resize_frames

    frames = np.random.default_rng(0).integers(0, 256, (2, 37, 41, 3), dtype=np.uint8)
    assert resize_frames(frames, (20, 21)).shape == (2, 20, 21, 3)
    # Float frames in [0, 1] used to come back as a picture of 0s and 1s; one frame without its
    # batch axis as a torch error about permute.
    with pytest.raises(ValueError, match=r"uint8 \(N, H, W, 3\)"):
        resize_frames(frames.astype(np.float32) / 255, (20, 21))
    with pytest.raises(ValueError, match=r"uint8 \(N, H, W, 3\)"):
        resize_frames(frames[0], (20, 21))
