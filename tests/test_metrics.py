"""worldsim.metrics on inputs whose answers are known by hand."""

import math

import numpy as np
import pytest
import torch

from worldsim import metrics as m


def _tiles(rng, rows: int, cols: int, tile: int = 8) -> np.ndarray:
    """A frame (1, rows*tile, cols*tile, 3) of flat tiles, each its own strongly different colour."""
    colours = rng.choice(np.arange(0, 256, 16), size=(rows, cols, 3))
    return colours.repeat(tile, 0).repeat(tile, 1)[None].astype(np.uint8)


def test_identical_frames():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    assert torch.equal(m.mse(a, a), torch.zeros(3))
    assert bool((m.psnr(a, a) > 100).all())
    assert torch.allclose(m.ssim(a, a), torch.ones(3))
    hit, changed = m.changed_tile_counts(a, a, a, tile=8)
    assert changed.tolist() == [0, 0, 0] and hit.tolist() == [0, 0, 0]


def test_psnr_of_a_known_noise_level():
    rng = np.random.default_rng(1)
    a = np.full((2, 16, 16, 3), 128, np.uint8)
    b = (a + rng.choice([-10, 10], a.shape)).astype(np.uint8)  # squared error exactly 100 everywhere
    want = 10 * math.log10(255**2 / 100)
    assert m.psnr(a, b).tolist() == pytest.approx([want, want], abs=1e-4)
    assert m.pooled_psnr(a, b) == pytest.approx(want, abs=1e-4)


def test_pooled_psnr_per_step_pools_the_error_so_an_exact_frame_stays_finite():
    truth = torch.zeros(2, 1, 4, 4, 3, dtype=torch.uint8)
    guess = truth.clone()
    guess[1] += 16  # one episode exact, one off by 16 everywhere: mean squared error 128
    (p,) = m.pooled_psnr_per_step(guess, truth)
    assert p == pytest.approx(10 * math.log10(255**2 / 128), abs=1e-4)


def test_ssim_matches_the_formula_on_flat_images_and_falls_with_noise():
    # Flat images have no variance, so SSIM reduces to its luminance term.
    x, y = np.full((1, 24, 24, 3), 100, np.uint8), np.full((1, 24, 24, 3), 150, np.uint8)
    mx, my, c1 = 100 / 255, 150 / 255, 0.01**2
    assert float(m.ssim(x, y)) == pytest.approx((2 * mx * my + c1) / (mx**2 + my**2 + c1), abs=1e-5)
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    noisy = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
    noisier = np.clip(img + rng.normal(0, 60, img.shape), 0, 255).astype(np.uint8)
    s1, s2 = float(m.ssim(img, noisy)), float(m.ssim(img, noisier))
    assert 0 < s2 < s1 < 1


def test_changed_tile_accuracy_counts_only_tiles_that_change_visibly():
    rng = np.random.default_rng(3)
    prev = _tiles(rng, 2, 2)
    real = prev.copy()
    real[:, :8, 8:] = 255 - real[:, :8, 8:]  # one tile (row 0, col 1) changes
    good = real.copy()
    good[:, 8:, :8] = 0  # wrong on a tile that did not change: does not count
    assert [int(v) for v in m.changed_tile_counts(prev, real, good, 8)] == [1, 1]
    assert [int(v) for v in m.changed_tile_counts(prev, real, prev, 8)] == [0, 1]  # copy-last


def test_one_tile_shift_and_a_brightness_drift():
    rng = np.random.default_rng(4)
    prev = _tiles(rng, 4, 4)
    shifted = np.roll(prev, 8, axis=2)  # the map moves one tile right: the player walked left
    _, changed = m.changed_tile_counts(prev, shifted, shifted, 8)
    hit, _ = m.changed_tile_counts(prev, shifted, shifted, 8)
    assert int(changed) > 0 and int(hit) == int(changed)  # the right shift matches every changed tile
    assert int(m.changed_tile_counts(prev, shifted, prev, 8)[0]) == 0
    # A drift of 3/255 changes no tile visibly: nothing to score, and any token change is flicker.
    drift = (prev.astype(int) + 3).clip(0, 255).astype(np.uint8)
    assert int(m.changed_tile_counts(prev, drift, prev, 8)[1]) == 0
    codes = torch.arange(16)[None]
    flips, still = m.flicker_counts(codes, codes + 1, prev, drift, 8)
    assert (int(flips), int(still)) == (16, 16)
    flips, still = m.flicker_counts(codes, codes, prev, drift, 8)
    assert (int(flips), int(still)) == (0, 16)


def test_changed_token_accuracy():
    prev = torch.tensor([[1, 2, 3, 4]])
    real = torch.tensor([[1, 5, 3, 6]])  # tokens 1 and 3 change
    gen = torch.tensor([[1, 5, 0, 0]])  # right on token 1, wrong on 3; token 2 is wrong but did not change
    assert [int(v) for v in m.changed_token_counts(prev, real, gen)] == [1, 2]
    assert [int(v) for v in m.changed_token_counts(prev, real, prev)] == [0, 2]


def test_code_flicker_of_a_clip():
    rng = np.random.default_rng(5)
    base = _tiles(rng, 2, 2)[0]
    frames = np.stack([(base.astype(int) + 2 * t).clip(0, 255) for t in range(4)]).astype(np.uint8)  # drift only
    frames[3, :8, :8] = 255 - frames[3, :8, :8]  # one tile changes on the last step
    codes = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 9], [0, 1, 2, 9], [7, 1, 2, 9]])
    f = m.code_flicker(codes, frames, 8)
    # Still tiles: 4 + 4 + 3 = 11; codes change on still tiles once (step 0 -> 1, token 3); the
    # change of token 0 on the last step is on a visibly changed tile.
    assert f["pairs"] == 3 and f["flicker"] == pytest.approx(1 / 11)
    assert f["token_change"] == pytest.approx(2 / 12) and f["tile_change"] == pytest.approx(1 / 12)
    only_last = m.code_flicker(codes, frames, 8, pairs_T=[False, False, True])
    assert only_last["pairs"] == 1 and only_last["flicker"] == 0.0


def test_scroll_direction_and_agreement_on_hand_shifted_frames():
    rng = np.random.default_rng(6)
    prev = _tiles(rng, 5, 5)
    moves = {"left": np.roll(prev, 8, 2), "right": np.roll(prev, -8, 2),
             "up": np.roll(prev, 8, 1), "down": np.roll(prev, -8, 1), "none": prev}
    for name, nxt in moves.items():
        assert m.SCROLLS[int(m.scroll_direction(prev, nxt, 8))] == name
    # Only the map rows count: an inventory row that changes does not make a scroll.
    inv = prev.copy()
    inv[:, 32:] = 255 - inv[:, 32:]
    assert int(m.scroll_direction(prev, inv, 8, map_rows=4)) == 0
    both = np.concatenate([prev, prev, prev])
    real_next = np.concatenate([moves["left"], moves["left"], prev])
    gen_next = np.concatenate([moves["left"], moves["right"], moves["up"]])
    c = m.scroll_counts(both, real_next, both, gen_next, 8)
    assert c["real_scroll"].tolist() == [1, 1, 0] and c["agree"].tolist() == [1, 0, 0]
    assert c["real_still"].tolist() == [0, 0, 1] and c["false_scroll"].tolist() == [0, 0, 1]


def test_tiles_from_nowhere_on_hand_made_frames():
    rng = np.random.default_rng(7)
    prev = _tiles(rng, 6, 6)  # 4 x 4 inner tiles

    def paint(frame, r, c, colour):
        out = frame.copy()
        out[:, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = colour
        return out

    def new(nxt, **kw):
        n, inner = m.new_tile_counts(prev, nxt, 8, **kw)
        return int(n[0]), int(inner[0])

    assert new(prev) == (0, 16)
    for shift in ((8, 2), (-8, 2), (8, 1), (-8, 1)):  # a one-tile scroll brings nothing new inside
        assert new(np.roll(prev, *shift)) == (0, 16)
    odd = (8, 8, 8)  # off the 16-step palette: within 4 of no tile
    assert new(paint(prev, 2, 3, odd)) == (1, 16)
    assert new(paint(prev, 0, 0, odd)) == (0, 16)  # the border ring is where terrain enters
    assert new(paint(prev, 5, 2, odd), map_rows=5) == (0, 12)  # below the map: inventory
    # A copy of a tile two tiles away is from nowhere: things must not jump or multiply.
    far = prev[:, 8:16, 8:16]
    jumped = paint(prev, 3, 4, far[0])
    near = [prev[0, r * 8, c * 8] for r in (2, 3, 4) for c in (3, 4, 5)]
    assert all(np.abs(far[0, 0, 0].astype(int) - t.astype(int)).mean() > 4 for t in near)
    assert new(jumped) == (1, 16)
    # Per frame of a batch.
    n, _ = m.new_tile_counts(np.concatenate([prev, prev]),
                             np.concatenate([prev, paint(paint(prev, 1, 1, odd), 4, 4, odd)]), 8)
    assert n.tolist() == [0, 2]


def test_precision_recall_f1():
    r = m.precision_recall_f1(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), [0, 1, 2, 3])
    assert r[0]["precision"] == 0.5 and r[0]["recall"] == 0.5 and r[0]["f1"] == 0.5
    assert r[1]["precision"] == 1.0 and r[1]["recall"] == pytest.approx(2 / 3)
    assert r[2]["precision"] == 0.0 and r[2]["support"] == 0
    assert math.isnan(r[3]["f1"])


def test_code_flicker_without_a_still_tile_is_undefined_not_zero():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)  # every tile changes visibly
    f = m.code_flicker(torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]), frames, 8)
    assert math.isnan(f["flicker"]) and f["tile_change"] == 1.0


def test_one_window_shuffles_its_conditioning_actions_out_of_place(monkeypatch):
    """With one window the actions are shuffled in time: every action that conditions a frame
    leaves its place (a plain permutation could leave the true order, and a gap of 0); with
    two frames there is nothing to shuffle, and no gap is claimed."""
    from worldsim.evaluation import sensitivity as sens

    seen = []

    def losses(model, frames, acts, seed=0):  # a model whose loss is the action before each frame
        seen.append(acts.clone())
        b, f, _ = frames.shape
        loss = torch.zeros(b, f, dtype=torch.float64)
        loss[:, 1:] = acts[:, :-1, 0].double()
        return loss, torch.tensor([[0] + [1] * (f - 1)] * b)

    monkeypatch.setattr(sens, "frame_losses", losses)
    for seed in range(20):
        seen.clear()
        acts = torch.arange(1, 7)[None, :, None]  # six frames, distinct actions
        out = sens.action_sensitivity(None, torch.zeros(1, 6, 4, dtype=torch.long), acts,
                                      torch.ones(1, 6, dtype=torch.bool), seed=seed)
        true, shuffled = seen[0][0, :, 0], seen[1][0, :, 0]
        assert (true[:-1] != shuffled[:-1]).all() and sorted(shuffled[:-1].tolist()) == true[:-1].tolist()
        assert out["all"]["gap"] is not None
    out = sens.action_sensitivity(None, torch.zeros(1, 2, 4, dtype=torch.long), torch.tensor([[[3], [7]]]),
                                  torch.ones(1, 2, dtype=torch.bool))
    assert out["all"]["gap"] is None and out["changed"]["gap"] is None
