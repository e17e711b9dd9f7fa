"""The inverse dynamics model reads movement from real Crafter frame pairs well above chance."""

import json

import numpy as np
import pytest

from worldsim.bundle import read_config
from worldsim.cli import main
from worldsim.envs.crafter import CRAFTER_SPACE
from worldsim.idm import IDMTrainSettings, crafter_movement, load_idm, score_actions, train_idm


@pytest.fixture(scope="module")
def idm_store(tmp_path_factory):
    """5 Crafter episodes of 120 steps: 3 to train on, 2 held out by the store's split rule."""
    from worldsim.data.collect import collect_crafter

    out = tmp_path_factory.mktemp("idm") / "store"
    collect_crafter(out, episodes=5, steps=120, seed=11, size=72, workers=1, progress=False)
    return out


def test_idm_predicts_movement_on_held_out_pairs_well_above_chance(idm_store, tmp_path):
    s = IDMTrainSettings(steps=300, batch=32, lr=2e-3, val_fraction=0.25, checkpoint_seconds=1e9)
    r = train_idm(idm_store, tmp_path / "idm", s, channels=16, progress=False)
    move = r["heldout"]["movement"]
    support = np.array([c["support"] for c in move["classes"].values()])
    majority = support.max() / support.sum()  # always guessing the commonest group
    assert r["heldout_pairs"] >= 200
    assert move["accuracy"] > majority + 0.15, move
    assert move["macro_f1"] > 0.45, move  # guessing uniformly among 5 groups gives about 0.2

    # The saved model gives the same held-out predictions, and resumes where it stopped.
    idm = load_idm(tmp_path / "idm")
    assert idm.info["idm_metrics"]["heldout"]["movement"]["accuracy"] == move["accuracy"]
    assert main(["train-idm", "--data", str(idm_store), "--out", str(tmp_path / "idm"), "--steps", "305",
                 "--batch", "32", "--lr", "2e-3", "--val-fraction", "0.25", "--channels", "16",
                 "--no-progress"]) == 0
    assert read_config(tmp_path / "idm")["idm_metrics"]["steps"] == 305


def test_score_actions_groups_crafter_movement():
    names = CRAFTER_SPACE.names
    a = {n: names.index(n) for n in ("noop", "move_left", "move_right", "do", "sleep")}
    truth = np.array([[a["move_left"]], [a["move_right"]], [a["do"]], [a["sleep"]]])
    pred = np.array([[a["move_left"]], [a["move_left"]], [a["sleep"]], [a["sleep"]]])
    assert crafter_movement(truth[:, 0], CRAFTER_SPACE).tolist() == [1, 2, 0, 0]
    s = score_actions(pred, truth, CRAFTER_SPACE)
    # Movement: left right, right called left, do and sleep both "none": 3 of 4.
    assert s["movement"]["accuracy"] == 0.75
    assert s["movement"]["classes"]["none"]["f1"] == 1.0 and s["movement"]["classes"]["right"]["recall"] == 0.0
    # The other actions are scored among steps whose true action is not a move.
    assert s["other"]["pairs"] == 2 and s["other"]["classes"]["sleep"]["precision"] == 0.5
    json.dumps(s)  # JSON-ready


def test_score_actions_groups_minerl_keys_as_mineworld():
    from worldsim.envs.minerl_space import MINERL_SPACE

    null = 66
    truth = np.full((4, 11), null)
    pred = truth.copy()
    truth[:, 4] = [2, 2, 3, null]  # forward, forward, back, neither
    pred[:, 4] = [2, 3, 3, null]
    truth[:, 1:3], pred[:, 1:3] = (33, 54), (34, 55)  # camera: bin 10 of pitch and of yaw, one off
    s = score_actions(pred, truth, MINERL_SPACE)
    fb = s["forward|back"]
    assert fb["classes"]["forward"]["recall"] == 0.5 and fb["classes"]["back"]["precision"] == 0.5
    assert fb["macro_f1"] == pytest.approx(2 / 3) and fb["accuracy"] == 0.75
    assert s["camera_bin_error"] == 1.0
    # a head that picks an id outside its axis's bins (null, the other axis's) counts as the
    # nearest bin: the error stays within the 20 bins (a null pitch read as 33 ids off before)
    pred[0, 1], pred[1, 2] = null, 33
    s = score_actions(pred, truth, MINERL_SPACE)
    assert s["camera_bin_error"] == pytest.approx((10 + 10 + 6 * 1) / 8)
    assert np.isnan(s["jump"]["macro_f1"])  # never pressed: no key to score


def test_idm_writes_each_checkpoint_once_and_clears_a_killed_write(crafter_store, tmp_path, monkeypatch):
    """Its last checkpoint was written twice (again on the way out, and again by a rerun of a
    finished run), and a checkpoint write a kill cut short stayed in the folder for good."""
    from worldsim import idm as idm_mod

    out = tmp_path / "idm"
    out.mkdir()
    stale = out / ".train_state.safetensors.abc123.tmp"  # what a kill inside a write leaves
    stale.write_bytes(b"x" * 100)
    writes = []
    real = idm_mod.save_checkpoint

    def counted(path, model, opt, state, *a, **k):
        writes.append(state["step"])
        return real(path, model, opt, state, *a, **k)

    monkeypatch.setattr(idm_mod, "save_checkpoint", counted)
    s = IDMTrainSettings(steps=4, batch=4, checkpoint_seconds=0)
    train_idm(crafter_store, out, s, channels=8, progress=False)
    assert writes == [1, 2, 3, 4] and not stale.exists()
    train_idm(crafter_store, out, s, channels=8, progress=False)  # finished: nothing to write
    assert writes == [1, 2, 3, 4]


def test_idm_error_inside_a_step_is_not_saved(crafter_store, tmp_path, monkeypatch):
    """An error raised inside a step after the update (out of memory, say) saved it under the
    old step number; the resume then took the step again on top of it."""
    import torch

    from worldsim import idm as idm_mod

    s = IDMTrainSettings(steps=3, batch=4, checkpoint_seconds=1e9)
    train_idm(crafter_store, tmp_path / "straight", s, channels=8, progress=False)
    real_step = torch.optim.AdamW.step
    calls = []

    def fails_third(self, *a, **k):
        out = real_step(self, *a, **k)
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory (simulated)")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", fails_third)
    with pytest.raises(RuntimeError, match="simulated"):
        train_idm(crafter_store, tmp_path / "resumed", s, channels=8, progress=False)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    train_idm(crafter_store, tmp_path / "resumed", s, channels=8, progress=False)
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / d / "idm.safetensors")) for d in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_idm_says_the_camera_error_of_a_minerl_idm(monkeypatch, tmp_path, capsys):
    """The help promised MineRL's camera bin error; the summary line left it out."""
    import worldsim.idm
    from worldsim.cli import main

    held = {"forward|back": {"macro_f1": 0.5}, "camera_bin_error": 0.267, "headline": 0.5}
    monkeypatch.setattr(worldsim.idm, "train_idm", lambda *a, **k: {
        "steps": 3, "seconds": 6.0, "heldout_pairs": 10, "heldout": held})
    (tmp_path / "d").mkdir()
    assert main(["train-idm", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")]) == 0
    assert "forward|back F1 0.500, camera 0.267 bins off" in capsys.readouterr().out
