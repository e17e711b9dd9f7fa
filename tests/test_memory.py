"""World memory (inference/memory.py): the tracker follows the view, a place comes back as it was
left, and the engine shows and caches the remembered frame."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim.envs.crafter import CRAFTER_SPACE
from worldsim.inference import decode_block_diffusion
from worldsim.inference.engine import DecoderSettings, Engine
from worldsim.inference.memory import MOVES, STILL, Geometry, TileMemory, geometry_for
from worldsim.model import WorldModel, preset_config
from worldsim.tokenizers.action import make_action_tokenizer

GEO = Geometry(rows=9, cols=9, map_rows=7)  # Crafter's 9 x 7 map over 2 inventory rows
PLAYER, INVENTORY = 100, 101  # codes the world never holds


class World:
    """A map of random codes (no two neighbours alike) and a player walking on it; `view()` is
    the frame's 81 codes as the game would draw them."""

    def __init__(self, seed=0, size=64, codes=50):
        g = np.random.default_rng(seed)
        self.map = g.integers(0, codes, (size, size))
        self.pos = (size // 2, size // 2)

    def view(self, pos=None):
        (y, x), (cr, cc) = pos or self.pos, GEO.centre
        v = self.map[y - cr:y - cr + GEO.map_rows, x - cc:x - cc + GEO.cols].copy()
        v[cr, cc] = PLAYER
        return torch.as_tensor(np.concatenate([v, np.full((GEO.rows - GEO.map_rows, GEO.cols), INVENTORY)]).reshape(-1))

    def move(self, shift):
        self.pos = (self.pos[0] + shift[0], self.pos[1] + shift[1])


def forgetful(frame, shift, seed):
    """The frame with the strip a move brings into view drawn anew (a dream that forgot it)."""
    f = frame.clone().reshape(GEO.rows, GEO.cols)
    g = torch.Generator().manual_seed(seed)
    new = torch.randint(0, 50, (GEO.rows, GEO.cols), generator=g)
    dy, dx = shift
    if dy:
        r = GEO.map_rows - 1 if dy > 0 else 0
        f[r] = new[r]
    if dx:
        c = GEO.cols - 1 if dx > 0 else 0
        f[:GEO.map_rows, c] = new[:GEO.map_rows, c]
    return f.reshape(-1)


@pytest.mark.parametrize("seed", [0, 1])
def test_tracker_follows_the_view(seed):
    w, mem = World(seed), TileMemory(GEO)
    mem.reset(w.view())
    g = np.random.default_rng(seed)
    for _ in range(40):
        shift = [STILL, *MOVES.values()][g.integers(5)]
        w.move(shift)
        assert mem.find_shift(w.view()[:63].reshape(7, 9), None) == shift
        mem.step(w.view())
    assert mem.pos == (w.pos[0] - 32, w.pos[1] - 32)
    assert mem.lost == 0


def test_a_place_comes_back_as_it_was_left():
    w, mem, plain = World(), TileMemory(GEO), TileMemory(GEO, recall=False)
    start = w.view()
    mem.reset(start)
    plain.reset(start)
    shown = shown_plain = None
    for t, key in enumerate(["move_right"] * 12 + ["move_left"] * 12):
        shift = MOVES[key]
        w.move(shift)
        dreamed = forgetful(w.view(), shift, seed=t)  # every new strip drawn anew
        shown = mem.step(dreamed, shift)
        shown_plain = plain.step(dreamed, shift)
        assert torch.equal(shown_plain, dreamed)  # without recall nothing is changed
    # Walking out, nothing was known ahead; walking back, every tile coming into view was.
    assert mem.known == plain.known == 12 * 7
    assert mem.redrawn == plain.redrawn > 0.9 * 12 * 7
    # Back at the start: the map as it was first seen, except the forgotten strips right of it.
    assert torch.equal(shown, start)
    assert not torch.equal(shown_plain, start)


def test_a_field_that_shows_no_move_takes_the_key():
    field = torch.full((81,), 7)
    field[31] = PLAYER  # the map's centre, row 3, column 4
    field[63:] = INVENTORY
    mem = TileMemory(GEO)
    mem.reset(field)
    mem.step(field, MOVES["move_up"])
    assert mem.pos == (-1, 0)
    mem.step(field, None)  # no move key: standing still
    assert mem.pos == (-1, 0)
    mem.step(field, MOVES["move_down"])
    assert mem.pos == (0, 0)


def test_the_players_own_tile_is_not_remembered():
    """Walking off and back must not bring back a second player where the first one stood."""
    w, mem = World(3), TileMemory(GEO)
    mem.reset(w.view())
    for key in ["move_right"] * 5 + ["move_left"] * 5:
        w.move(MOVES[key])
        frame = mem.step(forgetful(w.view(), MOVES[key], 0), MOVES[key])
        assert int((frame[:63] == PLAYER).sum()) == 1


def test_a_frame_that_matches_no_move_starts_the_map_anew():
    w, mem = World(), TileMemory(GEO)
    mem.reset(w.view())
    other = World(seed=9).view()
    assert torch.equal(mem.step(other), other)
    assert mem.lost == 1 and mem.pos == (0, 0)
    # The new map is the new frame's: a step right from it is tracked from there.
    w2 = World(seed=9)
    w2.move(MOVES["move_right"])
    mem.step(w2.view())
    assert mem.pos == (0, 1) and mem.lost == 1


def test_inventory_rows_are_left_alone():
    w, mem = World(), TileMemory(GEO)
    mem.reset(w.view())
    for key in ["move_down"] * 4 + ["move_up"] * 4:
        w.move(MOVES[key])
        frame = w.view()
        frame[63:] = torch.arange(18)  # the inventory changes as it likes
        out = mem.step(frame, MOVES[key])
        assert torch.equal(out[63:], torch.arange(18))


def test_geometry_bounds_and_settings():
    with pytest.raises(ValueError, match="cannot be remembered"):
        Geometry(rows=9, cols=9, map_rows=0)
    with pytest.raises(ValueError, match="min_agree"):
        TileMemory(GEO, min_agree=1.5)
    with pytest.raises(RuntimeError, match="reset"):
        TileMemory(GEO).step(torch.zeros(81, dtype=torch.long))


def test_geometry_only_for_crafter_tiles():
    from worldsim.tokenizers.tile import TileTokenizer, TileTokenizerConfig

    act = make_action_tokenizer(CRAFTER_SPACE, offset=256)
    tile = TileTokenizer(TileTokenizerConfig())
    assert geometry_for(tile, act) == GEO
    assert geometry_for(None, act) is None  # an engine fed tokens: no tokenizer to read the map from

    class VQ:  # any tokenizer that is not the tile tokenizer
        cfg = type("C", (), {"kind": "vq", "grid": (9, 9)})()

    assert geometry_for(VQ(), act) is None


# -- the engine ----------------------------------------------------------------------------------
def tiny_engine(memory):
    torch.manual_seed(0)
    model = WorldModel(preset_config("tiny", objective="block_diffusion")).eval()
    act = make_action_tokenizer(CRAFTER_SPACE, offset=model.cfg.codebook_size)
    return Engine(model, None, act, DecoderSettings("block_diffusion", steps=2), memory=memory)


def test_engine_refuses_memory_it_cannot_keep():
    with pytest.raises(ValueError, match="tokens a frame"):
        tiny_engine(Geometry(rows=9, cols=9, map_rows=7))  # the tiny preset draws a 4x4 grid
    torch.manual_seed(0)
    model = WorldModel(preset_config("tiny", objective="block_diffusion")).eval()
    from worldsim.envs.base import ActionSpace

    space = ActionSpace(name="other", kind="discrete", names=("noop", "jump"))
    with pytest.raises(ValueError, match="move the player"):
        Engine(model, None, make_action_tokenizer(space, offset=model.cfg.codebook_size), memory=GEO)


def test_engine_shows_and_caches_the_remembered_frame(monkeypatch):
    """A scripted decoder that forgets every new strip: the engine hands back the remembered
    frame, and the next pass is given that frame as the one it continues from."""
    geo = Geometry(rows=4, cols=4, map_rows=3)  # the tiny preset's grid: 3 rows of map, 1 inventory
    big = np.random.default_rng(0).integers(0, 60, (32, 32))
    state = {"pos": (16, 16), "t": 0}
    given = []

    def view(pos):
        (y, x), (cr, cc) = pos, geo.centre
        v = big[y - cr:y - cr + 3, x - cc:x - cc + 4].copy()
        v[cr, cc] = 62
        return torch.as_tensor(np.concatenate([v, np.full((1, 4), 63)]).reshape(-1))

    names = CRAFTER_SPACE.names
    plan = ["move_right"] * 3 + ["move_left"] * 3

    def scripted(model, cache, rows, last_frame_BN, action_BA, *args, **kwargs):
        given.append(last_frame_BN[0].clone())
        shift = MOVES[plan[state["t"]]]
        state["pos"] = (state["pos"][0] + shift[0], state["pos"][1] + shift[1])
        f = view(state["pos"]).reshape(4, 4)
        c = 3 if shift[1] > 0 else 0
        f[:3, c] = 61  # the new column drawn as a code the map never held
        state["t"] += 1
        from worldsim.inference.common import FrameStats

        return f.reshape(1, -1), FrameStats()

    eng = tiny_engine(geo)
    start = view((16, 16))
    s = eng.open(start[None], [])
    monkeypatch.setattr(decode_block_diffusion, "decode", scripted)
    frames = [s.step(names.index(k))[1] and s.last_frame[0].clone() for k in plan]
    # Out: the new column is the scripted one. Back: the remembered column, not the forgotten one.
    assert all(int(f.reshape(4, 4)[0, 3]) == 61 for f in frames[:3])
    assert torch.equal(frames[-1], start)
    assert not (frames[-1] == 61).any()
    # Each pass continued from the frame the engine showed, remembered tiles and all.
    for shown, next_given in zip(frames[:-1], given[1:]):
        assert torch.equal(shown, next_given)
    assert s.memory.known == 3 * 3 and s.memory.redrawn == 3 * 3


# -- where it is turned on -------------------------------------------------------------------------
SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "models" / "crafter"


def test_the_shipped_model_serves_with_world_memory_unless_told_not_to():
    from worldsim.client.connection import Connection
    from worldsim.inference.sampling import GREEDY
    from worldsim.inference.server import ServerSettings, ServerThread, make_server

    def server(**kw):
        return make_server(SHIPPED, ServerSettings(host="127.0.0.1", port=0, max_sessions=1), fps=0,
                           decoder=DecoderSettings(steps=2, sampling=GREEDY), **kw)

    off = server(memory=False)
    off.scheduler.stop()
    assert off.scheduler.engine.memory is None
    on = server()
    assert on.scheduler.engine.memory == GEO
    thread = ServerThread(on).start()
    try:
        conn = Connection(thread.url, encoding="raw").open()
        conn.reset(seed=1)
        names = CRAFTER_SPACE.names
        frames = [conn.step(names.index(k)) for k in ["move_right"] * 9 + ["move_left"] * 9]
        assert [f.seq for f in frames] == sorted(f.seq for f in frames) and len(frames) == 18
        conn.close()
    finally:
        thread.stop()


def test_eval_memory_on_a_model_without_tile_tokens_is_refused_in_one_line(tiny_tokens, crafter_store, tmp_path):
    from worldsim.errors import WorldsimError
    from worldsim.evaluation import EvalSettings, evaluate
    from worldsim.train import TrainSettings, train

    tok, shards = tiny_tokens
    out = tmp_path / "wm"
    train(shards, tok, out, objective="block_diffusion", preset="tiny",
          settings=TrainSettings(steps=1, batch=2, val_every=1000, val_batches=1, warmup=1), progress=False)
    with pytest.raises(WorldsimError, match="tile tokenizer"):
        evaluate(out, crafter_store,
                 EvalSettings(episodes=1, horizon=1, videos=0, teacher_forced=False, game=False, memory=True,
                              device="cpu"), out=tmp_path / "report", progress=False)
    assert not (tmp_path / "report").exists()


def test_benchmark_scores_a_walk_home():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from world_memory import keys_for, track

    names = CRAFTER_SPACE.names
    keys = keys_for(0, 5, names)  # right 5, left 5
    assert [names[k] for k in keys] == ["move_right"] * 5 + ["move_left"] * 5
    w = World(4)
    real = [w.view()]
    for k in keys:
        w.move(MOVES[names[k]])
        real.append(w.view())
    r = track(torch.stack(real), keys, names, GEO)
    assert r["home"] and r["same_at_home"] == 1.0 and r["walks"] == r["moves"] == 10
    assert r["known"] == 5 * 7 and r["redrawn"] == 0
    forgot = [real[0]] + [forgetful(f, MOVES[names[k]], t) for t, (f, k) in enumerate(zip(real[1:], keys))]
    r = track(torch.stack(forgot), keys, names, GEO)
    assert r["home"] and r["same_at_home"] < 1.0 and r["redrawn"] > 0


def test_an_endless_walk_keeps_a_bounded_map_and_forgets_the_oldest_places():
    w, mem = World(5, size=400), TileMemory(GEO, max_places=200)
    w.pos = (200, 20)
    mem.reset(w.view())
    for _ in range(100):
        w.move(MOVES["move_right"])
        mem.step(w.view(), MOVES["move_right"])
    assert len(mem.tiles) == 200
    # What is left is the newest: every place in view now, none from the start.
    cols = {x for _, x in mem.tiles}
    assert max(cols) == 100 + 4 and min(cols) > 4
    with pytest.raises(ValueError, match="max_places"):
        TileMemory(GEO, max_places=10)


def test_creatures_walking_in_a_field_do_not_hide_the_keys_move():
    """A field of grass with a cow: the player walks up one tile while the cow steps down, so
    that in the view the cow stays put and standing still agrees best (by two tiles of 52). The
    key's move, nearly as good, is taken; without a key, or with no margin, the tracker says the
    player stood still."""
    w = World()
    w.map = np.full((64, 64), 7)
    before = w.view().reshape(9, 9)
    w.move(MOVES["move_up"])
    after = w.view().reshape(9, 9)
    after[1, 1] = before[1, 1] = 9  # the cow
    view = after[:7]
    mem = TileMemory(GEO)
    mem.reset(before.reshape(-1))
    (a_still, n_still), (a_up, n_up) = (mem.agreement(view, s) for s in (STILL, MOVES["move_up"]))
    assert a_up / n_up < a_still / n_still <= a_up / n_up + 0.04  # the setting the test claims
    assert mem.find_shift(view, MOVES["move_up"]) == MOVES["move_up"]
    assert mem.find_shift(view, None) == STILL
    strict = TileMemory(GEO, margin=0.0)
    strict.reset(before.reshape(-1))
    assert strict.find_shift(view, MOVES["move_up"]) == STILL
    with pytest.raises(ValueError, match="margin"):
        TileMemory(GEO, margin=-0.1)


def test_info_says_which_bundles_play_with_world_memory():
    from worldsim import bundle
    from worldsim.commands.info import describe_bundle

    assert describe_bundle(str(SHIPPED)).endswith("with world memory")
    # what info says from the config alone is what the engine decides from the loaded bundle
    assert geometry_for(bundle.load_image_tokenizer(SHIPPED), bundle.load_action_tokenizer(SHIPPED),
                        bundle.read_config(SHIPPED)["model"]["objective"]) == GEO
