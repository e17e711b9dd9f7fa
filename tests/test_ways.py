"""The keys in a dream's own world (worldsim/evaluation/ways.py), on hand-made Crafter-shaped
frames: 9 x 9 tiles of 8 pixels, a 7-row map over 2 inventory rows, the player at row 3,
column 4."""

import numpy as np
import pytest

from worldsim.evaluation import ways

T, ROWS, COLS = 8, 7, 9
GRASS, STONE = (0, 160, 0), (128, 128, 128)
RIGHT, DO = 2, 5  # Crafter's move_right and do


def _frame(rng, ahead=GRASS):
    """Flat tiles of varied colours (not a plain view), `ahead` on the tile right of the player."""
    colours = rng.choice(np.arange(16, 240, 16), size=(9, 9, 3)).astype(np.uint8)
    colours[3, 5] = ahead
    return colours.repeat(T, 0).repeat(T, 1)


def _walked_right(rng, prev):
    """The view after the player walks right: the map moves one tile left, new terrain enters."""
    nxt = prev.copy()
    nxt[:ROWS * T] = np.roll(prev[:ROWS * T], -T, 1)
    nxt[:ROWS * T, -T:] = rng.choice(np.arange(16, 240, 16), size=(ROWS, 1, 3)).repeat(T, 0).repeat(T, 1)
    return nxt


def _library(first_grass_blocked=True):
    """Grass walked three times (once blocked, first: a creature stepped in), stone blocked."""
    tile = lambda c: np.full((T, T, 3), c, np.float32)  # noqa: E731
    tiles = [tile(GRASS)] * 4 + [tile(STONE)] * 2
    walked = [not first_grass_blocked, True, True, True, False, False]
    return np.stack(tiles), np.array(walked)


def _counts(prev, nxt, key, day=True, vote=True):
    m = ways.WayMatcher(*_library(), vote=vote)
    c = ways.way_counts(prev[None, None], nxt[None, None], np.array([[key]]), np.array([[day]]), m, T, ROWS)
    return {k: int(v[0, 0]) for k, v in c.items()}


def test_a_move_on_an_open_way_and_into_a_wall_are_told_apart():
    rng = np.random.default_rng(0)
    grass, stone = _frame(rng), _frame(rng, ahead=STONE)
    assert ways.target_tile(RIGHT, ROWS, COLS) == (3, 5) and ways.player_tile(ROWS, COLS) == (3, 4)
    walked = _walked_right(rng, grass)
    assert _counts(grass, walked, RIGHT) == {"open_moves": 1, "open_walks": 1, "wall_moves": 0, "wall_walks": 0}
    assert _counts(grass, grass, RIGHT) == {"open_moves": 1, "open_walks": 0, "wall_moves": 0, "wall_walks": 0}
    assert _counts(stone, stone, RIGHT) == {"open_moves": 0, "open_walks": 0, "wall_moves": 1, "wall_walks": 0}
    assert _counts(stone, _walked_right(rng, stone), RIGHT)["wall_walks"] == 1  # through a wall


def test_steps_that_cannot_be_judged_are_not_counted():
    rng = np.random.default_rng(1)
    grass = _frame(rng)
    walked = _walked_right(rng, grass)
    nothing = {"open_moves": 0, "open_walks": 0, "wall_moves": 0, "wall_walks": 0}
    assert _counts(grass, walked, DO) == nothing  # not a move key
    assert _counts(grass, walked, RIGHT, day=False) == nothing  # a night frame
    field = np.zeros_like(grass)
    field[:ROWS * T] = GRASS  # a plain view: a scroll over it would not show
    assert _counts(field, field, RIGHT) == nothing


def test_the_majority_of_equally_near_copies_decides():
    rng = np.random.default_rng(2)
    grass = _frame(rng)
    assert _counts(grass, grass, RIGHT)["open_moves"] == 1
    assert _counts(grass, grass, RIGHT, vote=False)["wall_moves"] == 1  # the first copy was blocked
    # A tile matches its nearest library tile: a shade off grass is still grass.
    near = _frame(rng, ahead=(0, 150, 10))
    m = ways.WayMatcher(*_library())
    assert m.open(near[None], np.array([RIGHT]), ROWS).tolist() == [True]
    assert m.open(near[None], np.array([RIGHT]), ROWS, where=[(3, 5)]).tolist() == [True]
    with pytest.raises(ValueError, match="at least one real move"):
        ways.WayMatcher(np.zeros((0, T, T, 3), np.float32), np.zeros(0, bool))


def test_the_library_of_real_moves_and_which_episodes_teach_it(crafter_store):
    from worldsim.data.store import EpisodeStore

    store = EpisodeStore(crafter_store)
    ids = store.episode_ids()
    assert ways.library_ids(store, ids[:2]) == ids[2:]
    assert ways.library_ids(store, ids) == ids  # every episode judged: the game's rule from all of them
    tiles, walked = ways.move_library(store, ids, T, ROWS)
    assert tiles.shape[1:] == (T, T, 3) and len(tiles) == len(walked) > 0
    assert 0 < walked.mean() < 1  # the explorer both walks and bumps into things
    # The game obeys its own rule: on its own frames, a move whose way is open walks.
    m = ways.WayMatcher(tiles, walked)
    opened = walks = 0
    for ep in store.iter_episodes(ids):
        frames, light = np.asarray(ep.frames), np.asarray(ep.daylight)
        keys = np.asarray(ep.actions).reshape(len(ep.actions), -1)[:, 0]
        n = min(len(frames) - 1, len(keys))
        day = (light[:n] > ways.DAY) & (light[1:n + 1] > ways.DAY)
        c = ways.way_counts(frames[:n], frames[1:n + 1], keys[:n], day, m, T, ROWS)
        opened, walks = opened + c["open_moves"].sum(), walks + c["open_walks"].sum()
    assert opened > 0 and walks / opened > 0.9


def test_the_player_faces_the_way_of_the_last_move_key():
    # noop, do, left, do, up, place, right: unknown until the first move key, then the last one.
    keys = np.array([[0, 5, 1, 5, 3, 8, 2], [4, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(ways.facing_before(keys),
                                  [[0, 0, 0, 1, 1, 3, 3], [0, 4, 4, 4, 4, 4, 4]])


def test_the_library_counts_a_move_as_walked_only_the_way_it_was_asked(tmp_path):
    from worldsim.data.store import EpisodeStore
    from worldsim.envs.crafter import CRAFTER_SPACE

    rng = np.random.default_rng(0)
    f0 = rng.choice(np.arange(0, 256, 16), size=(9, 9, 3)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
    right = np.roll(f0, -8, axis=1)  # the view scrolls as if the player walked right
    store = EpisodeStore.create(tmp_path / "s", "crafter", CRAFTER_SPACE, (72, 72), 10)
    store.write_episode("e0", np.stack([f0, right]), np.array([1], np.int16), np.ones(2, np.float32))  # left
    store.write_episode("e1", np.stack([f0, right]), np.array([2], np.int16), np.ones(2, np.float32))  # right
    _, walked = ways.move_library(store, ["e0", "e1"], 8, 7)
    assert walked.tolist() == [False, True]
