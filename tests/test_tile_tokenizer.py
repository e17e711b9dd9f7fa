"""The tile tokenizer: Crafter's light model inverts, codes depend on their own tile only, the
codebook never splits a texture, and the engine renders the game clock's daylight."""

import numpy as np
import pytest
import torch

from worldsim.tokenizers.tile import (PRESETS, TileTokenizer, TileTokenizerConfig, crafter_daylight,
                                      fit_codebook)


def _crafter_frames(daylights: list[float], seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """One Crafter state rendered under each daylight (noise included below 0.5): (D, 72, 72, 3),
    and the same state at full day."""
    crafter = pytest.importorskip("crafter")
    env = crafter.Env(area=(64, 64), view=(9, 9), size=(72, 72), seed=seed)
    env.reset()
    for a in (3, 3, 1, 4):  # walk a little so the view holds more than grass
        env.step(a)
    out = []
    for d in daylights + [1.0]:
        env._world.daylight = d
        out.append(env.render())
    return np.stack(out[:-1]), out[-1]


def _fitted(frames: np.ndarray, light: np.ndarray, k: int = 64) -> TileTokenizer:
    tok = TileTokenizer(TileTokenizerConfig(codebook_size=k))
    tiles = tok.tiles(tok.delight(torch.from_numpy(frames), torch.from_numpy(light)))
    cb, _ = fit_codebook(tiles.reshape(-1, tok.cfg.tile_dim), k)
    tok.codebook.copy_(cb)
    return tok


def test_clock_matches_crafter():
    crafter = pytest.importorskip("crafter")
    env = crafter.Env(seed=0, length=400)
    env.reset()
    seen = [env._world.daylight]
    for _ in range(350):
        env.step(0)
        seen.append(env._world.daylight)
    np.testing.assert_allclose(crafter_daylight(np.arange(351)), seen, atol=1e-6)


def test_delight_recovers_the_day_canvas():
    days = [1.0, 0.9, 0.7, 0.55]
    frames, noon = _crafter_frames(days)
    tok = TileTokenizer(PRESETS["crafter"])
    canvas = tok.delight(torch.from_numpy(frames), torch.tensor(days))
    err = (canvas - torch.from_numpy(noon).float()).abs()
    # The game truncates the blended frame to integers; inverting its blend is exact up to that.
    assert float(err.max()) <= 2.6, float(err.max())
    # The inventory rows are not lit: copied as they are.
    assert torch.equal(canvas[:, 56:].round().to(torch.uint8), torch.from_numpy(frames[:, 56:]))


def test_codes_ignore_daylight_and_decode_under_it():
    days = np.array([1.0, 0.95, 0.8, 0.65, 0.5], np.float32)
    frames, _ = _crafter_frames(list(days))
    tok = _fitted(frames, days)
    codes = tok.encode(frames, days)
    assert (codes == codes[0]).all(), "the same state under other daylight must keep every code"
    recon = tok.decode(codes, days).float()
    mse = (recon - torch.from_numpy(frames).float()).pow(2).mean()
    assert 10 * torch.log10(255**2 / mse) > 45
    # Decoded under the wrong light it is visibly off: the light really comes from `light`.
    wrong = tok.decode(codes, np.full(len(days), 0.5, np.float32)).float()
    assert (wrong[0] - torch.from_numpy(frames[0]).float()).abs().mean() > 10


def test_night_frames_decode_to_the_expected_noise():
    days = [0.3, 0.1]
    frames, noon = _crafter_frames(days)
    tok = _fitted(np.stack([noon]), np.ones(1, np.float32))
    codes = tok.encode(frames, np.array(days, np.float32))
    noon_codes = tok.encode(noon[None], np.ones(1, np.float32))
    # The noise grows toward the edges; the centre tiles still read as the noon tiles.
    centre = torch.tensor([r * 9 + c for r in (2, 3, 4) for c in (3, 4, 5)])
    assert (codes[:, centre] == noon_codes[:, centre]).all()
    recon = tok.decode(codes, np.array(days, np.float32)).float()
    # Drawing the noise's mean is closer to the noisy frame than drawing the daylit tiles.
    assert (recon - torch.from_numpy(frames).float()).abs().mean() < \
        (torch.from_numpy(noon).float() - torch.from_numpy(frames).float()).abs().mean()


def test_a_tile_code_depends_on_that_tile_alone():
    g = torch.Generator().manual_seed(0)
    cfg = PRESETS["tiny"]
    tok = TileTokenizer(cfg)
    textures = torch.randint(0, 256, (5, cfg.tile_dim), generator=g).float()
    tok.codebook.copy_(torch.cat([textures, textures[:1].expand(cfg.codebook_size - 5, -1)]))
    grid = torch.randint(0, 5, (1, cfg.tokens_per_frame), generator=g)
    frame = tok.decode(grid)
    assert torch.equal(tok.encode(frame), grid)
    # Change one tile: only its code changes.
    grid2 = grid.clone()
    grid2[0, 5] = (grid[0, 5] + 1) % 5
    codes2 = tok.encode(tok.decode(grid2))
    assert torch.equal(codes2 != grid, torch.arange(cfg.tokens_per_frame)[None] == 5)


def test_fit_never_splits_a_texture_by_rounding_noise():
    g = torch.Generator().manual_seed(1)
    textures = torch.randint(0, 256, (6, 192), generator=g).float()
    noisy = textures.repeat(500, 1) + torch.randint(-2, 3, (3000, 192), generator=g).float()
    codes, summary = fit_codebook(noisy.clamp(0, 255), 32)
    assert summary["groups"] == 6
    # Every noisy copy of a texture maps to that texture's one code, and textures do not share.
    lab = torch.cdist(noisy, codes).argmin(1).reshape(500, 6)
    assert (lab == lab[0]).all() and len(set(lab[0].tolist())) == 6
    # More textures than codes: the rarest merge into their nearest codes.
    codes, summary = fit_codebook(textures.repeat(2, 1), 4)
    assert summary["groups"] == 6 and summary["codes_used"] == 4


def test_bad_inputs_say_what_is_wrong():
    tok = TileTokenizer(PRESETS["tiny"])
    with pytest.raises(ValueError, match="uint8"):
        tok.encode(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="32x32"):
        tok.encode(np.zeros((1, 40, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="one daylight per frame"):
        tok.decode(torch.zeros(2, 16, dtype=torch.long), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="light model"):
        TileTokenizerConfig(light="sunset")


def test_engine_draws_the_clock_daylight(tmp_path):
    """A session opened at a game step decodes each dreamed frame under that step's daylight."""
    from worldsim import bundle
    from worldsim.envs.crafter import CRAFTER_SPACE
    from worldsim.inference.engine import Engine
    from worldsim.model import WorldModel, preset_config
    from worldsim.tokenizers.action import make_action_tokenizer

    cfg = PRESETS["crafter"]
    tok = TileTokenizer(cfg)
    tok.codebook.copy_(torch.linspace(40, 220, cfg.codebook_size)[:, None].expand(-1, cfg.tile_dim))
    action_tok = make_action_tokenizer(CRAFTER_SPACE, offset=cfg.codebook_size)
    torch.manual_seed(0)
    model = WorldModel(preset_config("tiny", codebook_size=cfg.codebook_size, tokens_per_frame=81,
                                     grid=(9, 9), action_ids=action_tok.num_ids, vocab_size=0,
                                     objective="block_diffusion"))
    engine = Engine(model, tok, action_tok)
    context = tok.decode(torch.full((1, 81), 100), np.ones(1, np.float32)).numpy()
    for start in (60, 200):  # noon and deep night
        s = engine.open(context, [], start_step=start)
        frame, _ = s.step(0)
        codes = engine.step({s: 0})  # one more, to see the clock advance
        s.close()
        assert s.game_step == start + 2
        # Re-encoding under the clock's daylight gives back codes that decode to the same frame.
        d = crafter_daylight(np.array([start + 1]))
        again = tok.decode(tok.encode(frame[None], d), d).numpy()[0]
        assert np.abs(again.astype(int) - frame.astype(int)).max() <= 2
    noon, night = crafter_daylight(np.array([61, 201]))
    assert noon > 0.99 and night < 0.1


def test_a_crafter_store_of_another_size_gets_one_token_per_game_tile(tmp_path):
    """Crafter draws 9 tiles across at any size: at 36x36 a tile is 4 pixels, and the fit reads
    one token per game tile (the preset's 8-pixel patch would span four, and 36 is no multiple
    of 8)."""
    pytest.importorskip("crafter")
    from worldsim import bundle
    from worldsim.data.collect import collect_crafter
    from worldsim.fit_tiles import fit_tile_tokenizer

    collect_crafter(tmp_path / "s", episodes=3, steps=30, seed=0, size=36, workers=1, progress=False)
    m = fit_tile_tokenizer(tmp_path / "s", tmp_path / "tok", progress=False)
    cfg = bundle.read_config(tmp_path / "tok")["image_tokenizer"]
    assert cfg["patch"] == 4 and [cfg["height"], cfg["width"]] == [36, 36]
    assert m["day_psnr_pooled"] > 40 and m["day_flicker"] < 0.01


def test_a_tile_tokenizer_is_fitted_once_per_out(tmp_path, capsys):
    """Run again, the fit overwrote the tokenizer that shards and models were made with (they
    check its weights' hash): with the same store it is now done, with another refused."""
    pytest.importorskip("crafter")
    from worldsim.cli import main
    from worldsim.data.collect import collect_crafter
    from worldsim.fileio import file_sha256

    collect_crafter(tmp_path / "a", episodes=3, steps=20, seed=0, size=36, workers=1, progress=False)
    collect_crafter(tmp_path / "b", episodes=3, steps=20, seed=1, size=36, workers=1, progress=False)
    argv = ["train-tokenizer", "--kind", "tile", "--data", str(tmp_path / "a"), "--out", str(tmp_path / "tok"),
            "--no-progress"]
    assert main(argv) == 0
    weights = tmp_path / "tok" / "image_tokenizer.safetensors"
    sha, first = file_sha256(weights), capsys.readouterr().out
    assert main(argv) == 0
    assert file_sha256(weights) == sha and capsys.readouterr().out.splitlines()[-1] == first.splitlines()[-1]
    argv[4] = str(tmp_path / "b")
    assert main(argv) == 2
    assert "fit into another --out" in capsys.readouterr().err and file_sha256(weights) == sha


def test_a_tile_fit_on_another_game_says_the_vq_tokenizer_fits_it(tmp_path):
    from worldsim.data.store import EpisodeStore
    from worldsim.envs.minerl_space import MINERL_SPACE
    from worldsim.fit_tiles import fit_tile_tokenizer

    store = EpisodeStore.create(tmp_path / "s", env="minerl", action_space=MINERL_SPACE, frame_size=(32, 32), fps=20)
    rng = np.random.default_rng(0)
    for i in range(3):
        store.write_episode(f"{i:06d}", rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8),
                            np.zeros((4, MINERL_SPACE.width), np.float32))
    store.refresh()
    with pytest.warns(UserWarning, match=r"for minerl frames the VQ tokenizer \(--kind vq\) is the one"):
        fit_tile_tokenizer(store.root, tmp_path / "tok", preset="tiny", progress=False)
