"""The game reference of `worldsim eval`: stored Crafter episodes rebuilt as games, and twins that
keep what the context showed and draw the rest anew."""

import json
import shutil

import numpy as np
import pytest

from worldsim.data.store import EpisodeStore
from worldsim.evaluation.episodes import Window
from worldsim.evaluation.game import VIEW, NotReplayable, check_store, game_dreams, replay, twin


def _episode(store: EpisodeStore, min_len: int = 24):
    return next(ep for ep in store.iter_episodes() if len(ep.frames) >= min_len)


def test_replay_rebuilds_the_stored_game(crafter_store):
    store = EpisodeStore(crafter_store)
    ep = _episode(store)
    env, seen = replay(store, ep.id, 12, np.asarray(ep.frames[10:13]))
    assert len(seen) == 3
    keys = np.asarray(ep.actions).reshape(len(ep.actions), -1)[:, 0]
    for t in range(12, 20):  # the rebuilt game goes on exactly as the stored episode did
        frame, _, _ = env.step(int(keys[t]))
        assert np.array_equal(frame, ep.frames[t + 1])


def test_replay_refuses_a_frame_the_game_does_not_draw(crafter_store):
    store = EpisodeStore(crafter_store)
    ep = _episode(store)
    wrong = np.asarray(ep.frames[5:6]).copy()
    wrong[0, 0, 0] ^= 1
    with pytest.raises(NotReplayable, match="does not replay"):
        replay(store, ep.id, 5, wrong)
    with pytest.raises(NotReplayable, match="collection index"):
        replay(store, "recorded-1", 5, wrong)


def test_a_store_without_its_collection_seed_is_not_replayable(crafter_store, tmp_path):
    check_store(EpisodeStore(crafter_store))  # written by `worldsim collect`: fine
    other = tmp_path / "store"
    shutil.copytree(crafter_store, other)
    meta = json.loads((other / "dataset.json").read_text())
    del meta["source"]["seed"]
    (other / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(NotReplayable, match="collection seed"):
        check_store(EpisodeStore(other))


def test_a_twin_keeps_the_view_and_draws_the_world_out_of_it_anew(crafter_store):
    store = EpisodeStore(crafter_store)
    ep = _episode(store)
    env, seen = replay(store, ep.id, 8, np.asarray(ep.frames[8:9]))
    a, b, c = twin(env, seen, seed=1), twin(env, seen, seed=1), twin(env, seen, seed=2)
    real_world = env._env._world
    px, py = seen[0]
    view = (slice(px - VIEW[0], px + VIEW[0] + 1), slice(py - VIEW[1], py + VIEW[1] + 1))
    for t in (a, c):
        world = t._env._world
        assert np.array_equal(t._env._obs(), ep.frames[8])  # the player sees what the context showed
        assert np.array_equal(world._mat_map[view], real_world._mat_map[view])
        assert (world._mat_map != real_world._mat_map).mean() > 0.1  # most of the rest is another world
    assert not np.array_equal(a._env._world._mat_map, c._env._world._mat_map)
    assert np.array_equal(env._env._obs(), ep.frames[8])  # the real game is left as it was
    keys = np.asarray(ep.actions).reshape(len(ep.actions), -1)[8:20, 0]
    play = [np.stack([t.step(int(k))[0] for k in keys]) for t in (a, b)]
    assert np.array_equal(play[0], play[1])  # one seed, one twin


def test_game_dreams_play_each_window_from_its_last_context_frame(crafter_store):
    store = EpisodeStore(crafter_store)
    ep = _episode(store)
    start, C, H = 3, 2, 6
    w = Window(ep.id, start, np.asarray(ep.frames[start:start + C + H]),
               np.asarray(ep.actions[start:start + C + H - 1]), None)
    frames = game_dreams(store, [w, w], C, H, seed=0)
    assert frames.shape == (2, H, *ep.frames.shape[1:])
    again = game_dreams(store, [w, w], C, H, seed=0)
    assert np.array_equal(frames, again)  # the same windows and seed: the same twins
    assert not frames[:, 0].std() == 0  # frames drawn, not left blank
