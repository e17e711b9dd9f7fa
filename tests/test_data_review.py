"""Review of the data formats: stores, shards, tokenize, VPT conversion and action tokens."""

import json
import shutil

import numpy as np
import pytest

from worldsim.data.shards import TokenShards, tokenize_store
from worldsim.data.store import CorruptEpisode, CorruptEpisodeWarning, EpisodeStore, StoreError
from worldsim.envs.minerl_space import MINERL_FPS, MINERL_SPACE
from worldsim.errors import WorldsimError

from _cli import one_line_error


def _save_raw(store: EpisodeStore, eid: str, **arrays) -> None:
    """Write an episode file as another program might, past write_episode's checks."""
    with open(store.episode_path(eid), "wb") as f:
        np.savez_compressed(f, **arrays)


# -- stores ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["[]", "3", "null", '"worldsim.episodes"'])
def test_a_dataset_json_that_is_not_an_object_is_refused_in_one_line(tmp_path, tiny_tokens, capsys, text):
    store = tmp_path / "store"
    (store / "episodes").mkdir(parents=True)
    (store / "dataset.json").write_text(text)
    with pytest.raises(StoreError, match="is not a worldsim episode store"):
        EpisodeStore(store)
    line = one_line_error(["tokenize", "--data", str(store), "--tokenizer", str(tiny_tokens[0]),
                           "--out", str(tmp_path / "sh"), "--no-progress"], capsys)
    assert "dataset.json is not a worldsim episode store" in line


def test_an_episode_whose_actions_its_space_cannot_hold_is_corrupt(crafter_store, tiny_tokens, tmp_path):
    """An action id past the space's last (or a NaN camera) made tokenize stop mid-run with a
    traceback from the action tokenizer; such an episode is skipped like any corrupt one."""
    data = tmp_path / "data"
    shutil.copytree(crafter_store, data)
    store = EpisodeStore(data)
    ep = store.load("000001")
    bad = ep.actions.copy()
    bad[3] = 99  # Crafter has 17 actions
    _save_raw(store, "000001", frames=ep.frames, actions=bad, daylight=ep.daylight)
    with pytest.raises(CorruptEpisode, match="actions must be integers in"):
        store.load("000001")
    with pytest.raises(ValueError, match="actions must be integers in"):
        store.write_episode("000009", ep.frames, bad)
    with pytest.warns(CorruptEpisodeWarning, match="000001"):
        s = tokenize_store(data, tiny_tokens[0], tmp_path / "sh", progress=False)
    assert s["corrupt"] == 1 and s["episodes"] == 5
    assert "000001" not in TokenShards(tmp_path / "sh").episode_ids
    # Whole-number floats are what the action tokenizer reads: they stay readable.
    _save_raw(store, "000001", frames=ep.frames, actions=ep.actions.astype(np.float32), daylight=ep.daylight)
    assert store.load("000001").num_steps == ep.num_steps


def test_a_minerl_episode_with_a_camera_that_is_not_finite_is_corrupt(tmp_path):
    store = EpisodeStore.create(tmp_path / "mc", env="minerl", action_space=MINERL_SPACE,
                                frame_size=(8, 8), fps=MINERL_FPS)
    frames = np.zeros((4, 8, 8, 3), np.uint8)
    actions = np.zeros((3, MINERL_SPACE.width), np.float32)
    store.write_episode("good", frames, actions)
    actions[1, -1] = np.nan
    _save_raw(store, "bad", frames=frames, actions=actions)
    with pytest.raises(CorruptEpisode, match="finite"):
        store.load("bad")
    with pytest.raises(ValueError, match="finite"):
        store.write_episode("bad2", frames, actions)
    with pytest.warns(CorruptEpisodeWarning, match="bad"):
        assert store.validate() == (["good"], ["bad"])


# -- several stores ----------------------------------------------------------------------------
def _vpt_store(root, names, seed: int = 0):
    """A converted-VPT store at 72x72 whose episodes are named after recordings."""
    store = EpisodeStore.create(root, env="minerl", action_space=MINERL_SPACE, frame_size=(72, 72),
                                fps=MINERL_FPS, source={"kind": "vpt", "src": str(root) + "-src",
                                                        "integer_camera": False})
    rng = np.random.default_rng(seed)
    for name in names:
        store.write_episode(name, rng.integers(0, 256, (4, 72, 72, 3), dtype=np.uint8),
                            np.zeros((3, MINERL_SPACE.width), np.float32))
    return root


def test_vpt_stores_that_hold_one_recording_are_not_tokenized_together(tiny_tokens, tmp_path):
    """Two VPT stores that share a recording (a copy of a store, a folder converted twice) put
    it on both sides of the split under two names; the seed check never saw VPT stores."""
    a = _vpt_store(tmp_path / "a" / "minerl", ["cheeky-cornflower-01", "rec-02"])
    b = _vpt_store(tmp_path / "b" / "minerl2", ["other-03", "rec-02"], seed=1)
    with pytest.raises(WorldsimError, match="both hold the VPT recording 'rec-02'"):
        tokenize_store([a, b], tiny_tokens[0], tmp_path / "sh", progress=False)
    assert not (tmp_path / "sh" / "index.json").exists()
    c = _vpt_store(tmp_path / "c" / "minerl3", ["other-04"], seed=2)  # other recordings: fine
    s = tokenize_store([a, c], tiny_tokens[0], tmp_path / "ok", progress=False)
    assert s["episodes"] == 3
    assert TokenShards(tmp_path / "ok").episode_ids == ["cheeky-cornflower-01", "rec-02", "minerl3/other-04"]


def test_what_tokenize_help_says_of_the_split_of_several_stores():
    """The help said a further store's episodes "keep their own held-out split" and the first
    store's held-out episodes stay as alone: a further store's are split under their new names,
    and a small first store's one fallback episode can go to training (doc fix; the split itself
    is unchanged, as training's windows must be)."""
    from worldsim.commands.tokenize import HELP
    from worldsim.data.store import split_ids

    ids = [f"{i:06d}" for i in range(6)]
    assert split_ids(ids)[1] == ["000000"]  # alone: the fallback, the lowest-scoring id
    mixed_val = split_ids(ids + [f"second/{i}" for i in ids])[1]
    assert mixed_val == ["second/000000"]  # together: the first store holds out none
    big = [f"{i:06d}" for i in range(400)]
    alone = set(split_ids(big)[1])
    as_second = {v.split("/", 1)[1] for v in split_ids(big + [f"b/{i}" for i in big])[1] if v.startswith("b/")}
    assert alone and as_second and alone != as_second
    text = " ".join(HELP.split())
    assert "keep their own held-out split" not in text
    assert "not as in that store alone" in text and "VPT stores that hold one recording" in text
