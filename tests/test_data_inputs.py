"""Bad data inputs end in one line that says what to do, and leave nothing behind that blocks the
next try: damaged token shards, Crafter sizes the game cannot draw, --val-fraction out of range,
VPT folders with nothing to convert, and options that do not apply."""

import json
import shutil
import warnings

import numpy as np
import pytest

from worldsim.cli import main
from worldsim.data.shards import TokenShards
from worldsim.data.store import EpisodeStore, StoreError
from worldsim.errors import WorldsimError

from _cli import one_line_error


# -- token shards ------------------------------------------------------------------------------
def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.mark.parametrize("damage, message", [
    (lambda d: _truncate(d / "frames.npy"), "frames.npy cannot be read"),
    (lambda d: _truncate(d / "actions.npy"), "actions.npy cannot be read"),
    (lambda d: (d / "frames.npy").unlink(), "frames.npy cannot be read"),
    (lambda d: _truncate(d / "index.json"), "index.json is damaged"),
    (lambda d: (d / "index.json").write_bytes(b"\xff\xfe{"), "index.json is damaged"),
    (lambda d: (d / "index.json").write_text("[]"), "is not a worldsim token index"),
    (lambda d: (d / "index.json").write_text('{"format": "worldsim.tokens"}'), "lacks what a token index holds"),
], ids=["frames-cut", "actions-cut", "frames-missing", "index-cut", "index-not-utf8", "index-list",
        "index-empty"])
def test_damaged_shards_are_refused_in_one_line(tiny_tokens, tmp_path, damage, message):
    out = tmp_path / "sh"
    shutil.copytree(tiny_tokens[1], out)
    damage(out)
    with pytest.raises(WorldsimError, match=message) as e:
        TokenShards(out)
    assert "\n" not in str(e.value)


def test_shards_whose_arrays_do_not_match_the_index_are_still_refused(tiny_tokens, tmp_path):
    out = tmp_path / "sh"
    shutil.copytree(tiny_tokens[1], out)
    np.save(out / "actions.npy", np.load(out / "actions.npy")[:-2])
    with pytest.raises(WorldsimError, match="do not hold what index.json says"):
        TokenShards(out)


@pytest.mark.parametrize("damage", ["index-cut", "index-list", "index-and-frames-cut"])
def test_tokenize_repairs_shards_with_a_damaged_index(crafter_store, tiny_tokens, tmp_path, capsys, damage):
    """The refusal above says to tokenize again: that works on such a folder, from its parts."""
    out = tmp_path / "sh"
    shutil.copytree(tiny_tokens[1], out)
    if damage == "index-list":
        (out / "index.json").write_text("[]")
    else:
        _truncate(out / "index.json")
    if damage == "index-and-frames-cut":
        _truncate(out / "frames.npy")
    assert main(["tokenize", "--data", str(crafter_store), "--tokenizer", str(tiny_tokens[0]),
                 "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("tokenized 0 episodes (6 already there)")
    whole, fresh = TokenShards(out), TokenShards(tiny_tokens[1])
    assert whole.episode_ids == fresh.episode_ids
    for eid in fresh.episode_ids:
        for a, b in zip(whole.episode(eid), fresh.episode(eid)):
            np.testing.assert_array_equal(a, b)


def test_tokenize_still_refuses_shards_of_another_tokenizer(crafter_store, tiny_tokens, tmp_path):
    out = tmp_path / "sh"
    shutil.copytree(tiny_tokens[1], out)
    index = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps({**index, "tokenizer_sha256": "0" * 64}))
    from worldsim.data.shards import tokenize_store

    with pytest.raises(WorldsimError, match="another tokenizer"):
        tokenize_store(crafter_store, tiny_tokens[0], out, progress=False)


# -- crafter collect -----------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["9", "9x9", "0", "8"])
def test_crafter_sizes_below_18_are_refused_before_anything_is_written(tmp_path, capsys, size):
    """At 9 Crafter draws 1 pixel a tile, and its inventory icons (0.8 of a tile) round to 0 pixels."""
    out = tmp_path / "s0"
    try:
        code = main(["collect", "--episodes", "1", "--steps", "5", "--size", size, "--out", str(out),
                     "--workers", "1", "--no-progress"])
    except SystemExit as e:  # sizes under 8 stop at parse time
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "Traceback" not in err and ("from 18 up" in err or "at least 8x8" in err)
    assert not out.exists()


def test_crafter_env_names_its_smallest_size():
    from worldsim.envs.crafter import CrafterEnv

    with pytest.raises(ValueError, match="of at least 18, got 9"):
        CrafterEnv(size=9)


def test_collect_at_18_works(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["collect", "--episodes", "1", "--steps", "3", "--size", "18", "--out", str(out),
                 "--workers", "1", "--no-progress"]) == 0
    assert EpisodeStore(out).load("000000").frames.shape[1:] == (18, 18, 3)


def test_a_store_is_not_made_at_a_size_the_game_cannot_draw(tmp_path, monkeypatch, capsys):
    """dataset.json fixes a store's frame size: it is written only once a frame was drawn, so a
    failing first collect leaves the folder free for another size."""
    import worldsim.data.collect as collect_mod
    from worldsim.data.collect import collect_crafter
    from worldsim.envs.crafter import CrafterEnv

    class CannotDraw(CrafterEnv):
        def reset(self):
            raise ValueError("height and width must be > 0")

    out = tmp_path / "s0"
    monkeypatch.setattr(collect_mod, "CrafterEnv", CannotDraw)
    with pytest.raises(StoreError, match="cannot collect 36x36 frames: height and width"):
        collect_crafter(out, episodes=1, steps=5, size=36, workers=1, progress=False)
    assert not (out / "dataset.json").exists()
    monkeypatch.undo()
    assert main(["collect", "--episodes", "1", "--steps", "3", "--out", str(out), "--workers", "1",
                 "--no-progress"]) == 0
    assert EpisodeStore(out).info.frame_size == (72, 72)


def test_nothing_to_do_counts_the_whole_store(crafter_store, tmp_path, capsys):
    out = tmp_path / "c"
    shutil.copytree(crafter_store, out)
    info = EpisodeStore(out).info
    assert main(["collect", "--episodes", "1", "--steps", "40", "--seed", "3", "--out", str(out),
                 "--workers", "1", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"nothing to do: 1 episode already in {out} (it holds 6 episodes, {info.frames} frames in all)")


def test_integer_camera_without_vpt_is_refused(tmp_path, capsys):
    out = tmp_path / "x"
    line = one_line_error(["collect", "--integer-camera", "--episodes", "1", "--steps", "1", "--out",
                            str(out), "--workers", "1", "--no-progress"], capsys)
    assert "--integer-camera applies to VPT recordings" in line
    assert not out.exists()


# -- VPT collect -----------------------------------------------------------------------------------
def test_vpt_folder_without_recordings_is_an_error(tmp_path, capsys):
    src, out = tmp_path / "empty", tmp_path / "s"
    src.mkdir()
    (src / "lonely.mp4").write_bytes(b"no jsonl beside it")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        line = one_line_error(["collect", "--from-vpt", str(src), "--out", str(out), "--no-progress"], capsys)
    assert line == f"worldsim collect: error: no VPT recording (NAME.mp4 with its NAME.jsonl) in {src}"
    assert not out.exists()


def test_vpt_folder_where_every_recording_fails_is_an_error_and_frees_the_folder(tmp_path, capsys):
    src, out = tmp_path / "bad", tmp_path / "s"
    src.mkdir()
    for name in ("a", "b"):
        (src / f"{name}.mp4").write_bytes(b"\x00not an mp4" * 64)
        (src / f"{name}.jsonl").write_text("{}\n")
    keep = tmp_path / "kept"
    keep.mkdir()
    (keep / "mine.txt").write_text("the user's")
    from worldsim.data.vpt import VPTWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VPTWarning)
        line = one_line_error(["collect", "--from-vpt", str(src), "--out", str(out), "--no-progress"], capsys)
        assert line.startswith(f"worldsim collect: error: none of the 2 VPT recordings in {src} could be converted")
        assert not out.exists()  # made by this run, and empty: nothing holds the folder at a size
        one_line_error(["collect", "--from-vpt", str(src), "--out", str(keep), "--no-progress"], capsys)
    assert sorted(p.name for p in keep.iterdir()) == ["mine.txt"]


# -- train-idm --val-fraction ----------------------------------------------------------------------
@pytest.mark.parametrize("value, message", [
    ("0", "must be above 0, got 0: the model is scored on held-out episodes"),
    ("1", "must be below 1, got 1: the model is trained on the episodes not held out"),
    ("1.5", "must be between 0 and 1"),
])
def test_val_fraction_out_of_range_stops_at_parse_time(crafter_store, tmp_path, capsys, value, message):
    line = one_line_error(["train-idm", "--data", str(crafter_store), "--out", str(tmp_path / "idm"),
                            "--val-fraction", value, "--device", "cpu", "--no-progress"], capsys)
    assert "argument --val-fraction: " + message in line
    assert not (tmp_path / "idm").exists()


@pytest.mark.parametrize("value, message", [
    (0.0, "val_fraction must be above 0 and below 1, got 0.0"),
    (1.0, "val_fraction must be above 0 and below 1, got 1.0"),
    (0.9, "--val-fraction 0.9 holds out all 6 episodes of .*, leaving none to train on"),
])
def test_train_idm_says_what_is_wrong_with_the_split(crafter_store, tmp_path, value, message):
    from worldsim.idm import IDMTrainSettings, train_idm

    s = IDMTrainSettings(steps=1, batch=2, val_fraction=value, checkpoint_seconds=1e9)
    with pytest.raises(WorldsimError, match=message):
        train_idm(crafter_store, tmp_path / "idm", s, channels=4, device="cpu", progress=False)
    assert not (tmp_path / "idm").exists()


def test_train_idm_on_a_single_episode_says_it_needs_two(crafter_store, tmp_path):
    from worldsim.idm import IDMTrainSettings, train_idm

    data = tmp_path / "one"
    shutil.copytree(crafter_store, data)
    for eid in EpisodeStore(data).episode_ids()[1:]:
        EpisodeStore(data).episode_path(eid).unlink()
    with pytest.raises(WorldsimError, match="holds 1 episode.*needs at least 2"):
        train_idm(data, tmp_path / "idm", IDMTrainSettings(steps=1), channels=4, device="cpu", progress=False)
