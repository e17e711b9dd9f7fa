"""Action tokenizers: Crafter (1 token) and MineRL in MineWorld's 11-token layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worldsim.envs.base import ActionSpace
from worldsim.envs.crafter import CRAFTER_SPACE
from worldsim.envs.minerl_space import MINERL_BUTTONS, MINERL_SPACE
from worldsim.tokenizers.action import (
    DiscreteActionTokenizer,
    MineRLActionTokenizer,
    action_tokenizer_from_config,
    make_action_tokenizer,
    mu_law_bins,
    mu_law_centres,
)

OFF = 8192

# MineWorld's vocabulary, relative to the offset.
VOCAB = {
    "use": 0, "attack": 1, "forward": 2, "back": 3, "left": 4, "right": 5, "jump": 6,
    "sneak": 7, "sprint": 8, "drop": 9, "swapHands": 10, "pickItem": 11, "inventory": 12,
    "ESC": 13, **{f"hotbar.{i}": 13 + i for i in range(1, 10)},
    **{f"pitch_{b}": 23 + b for b in range(21)}, **{f"yaw_{b}": 44 + b for b in range(21)},
    "bos": 65, "null": 66, "eos": 67,
}
BOS, NULL, EOS = 65, 66, 67
CENTRES = [0.0, 2.25, 5.15, 8.87, 13.67, 19.85, 27.80, 38.04, 51.21, 68.17, 90.0]
PAIRS = [(4, "forward", "back"), (5, "left", "right"), (6, "sprint", "sneak"),
         (7, "use", "attack"), (9, "drop", "pickItem")]
HOTBARS = [f"hotbar.{i}" for i in range(1, 10)]


@pytest.fixture(scope="module")
def mc() -> MineRLActionTokenizer:
    tok = make_action_tokenizer(MINERL_SPACE, OFF)
    assert isinstance(tok, MineRLActionTokenizer)
    return tok


@pytest.fixture(scope="module")
def cr() -> DiscreteActionTokenizer:
    tok = make_action_tokenizer(CRAFTER_SPACE, OFF)
    assert isinstance(tok, DiscreteActionTokenizer)
    return tok


def act(*pressed: str, camera=(0.0, 0.0)) -> dict:
    a = MINERL_SPACE.noop()
    for k in pressed:
        a[k] = 1
    a["camera"] = list(camera)
    return a


def rel(tokens) -> list[int]:
    return [int(t) - OFF for t in tokens]


# --------------------------------------------------------------------------- Crafter

def test_crafter_shape_and_ids(cr):
    assert cr.tokens_per_action == 1 and cr.num_ids == 17 and cr.offset == OFF
    assert cr.vocab_end == OFF + 17
    for a in range(17):
        t = cr.encode(a)
        assert t.dtype == np.int64 and t.shape == (1,)
        assert int(t[0]) == OFF + a
        assert cr.decode(t) == a
        assert cr.decode(list(t)) == a


def test_crafter_array_round_trip(cr):
    acts = CRAFTER_SPACE.to_array(list(range(17)) * 3)  # int16 [51], as on disk
    toks = cr.encode_array(acts)
    assert toks.dtype == np.int64 and toks.shape == (51, 1)
    np.testing.assert_array_equal(toks[:, 0], acts.astype(np.int64) + OFF)
    back = cr.decode_array(toks)
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back, acts)


def test_crafter_rejects_bad_input(cr):
    for bad in (-1, 17):
        with pytest.raises(ValueError):
            cr.encode(bad)
    with pytest.raises(ValueError):
        cr.encode_array(np.array([0, 17]))
    with pytest.raises(ValueError):
        cr.decode(np.array([OFF - 1]))
    with pytest.raises(ValueError):
        cr.decode(np.array([OFF + 17]))
    with pytest.raises(ValueError):
        cr.decode(np.array([OFF, OFF]))  # wrong length


def test_action_spaces_refuse_actions_that_are_not_theirs_in_one_line():
    """A float, a string or a nested list was truncated or flattened into other actions; a
    camera that is not two finite numbers crashed with a TypeError or went on as NaN."""
    from worldsim.envs.crafter import CrafterEnv

    for bad in ([3.7], ["3"], [[1, 2], [3, 4]]):
        with pytest.raises(ValueError, match="list of integers"):
            CRAFTER_SPACE.to_array(bad)
    np.testing.assert_array_equal(CRAFTER_SPACE.to_array(np.arange(3, dtype=np.uint8)), [0, 1, 2])
    assert CRAFTER_SPACE.to_array([]).shape == (0,)
    env = CrafterEnv(size=72, seed=0)
    env.reset()
    for bad in (3.7, "3", None, [1, 2]):
        with pytest.raises(ValueError, match="crafter action must be"):
            env.step(bad)
    env.step(np.int64(3))
    for cam in (5, None, [1], [1, 2, 3], [float("nan"), 0], ["a", "b"]):
        with pytest.raises(ValueError, match="camera must be two finite numbers"):
            MINERL_SPACE.to_array([{"camera": cam}])
    with pytest.raises(ValueError, match="fly"):  # unknown keys are named before the camera is read
        MINERL_SPACE.to_array([{"camera": 5, "fly": 1}])
    with pytest.raises(ValueError, match="dict of keys"):
        MINERL_SPACE.to_array([3])
    with pytest.raises(ValueError, match="'name' and a 'kind'"):
        ActionSpace.from_dict({"kind": "discrete"})


def test_crafter_offset_zero():
    tok = make_action_tokenizer(CRAFTER_SPACE, 0)
    np.testing.assert_array_equal(tok.encode_array(np.arange(17))[:, 0], np.arange(17))


# --------------------------------------------------------------------------- MineRL: layout

def test_minerl_sizes(mc):
    assert mc.tokens_per_action == 11
    assert mc.num_ids == 68
    assert mc.offset == OFF
    assert mc.vocab_end == OFF + 68
    assert mc.n_camera_bins == 21


def test_minerl_every_id_pinned(mc):
    assert len(VOCAB) == 68 and sorted(VOCAB.values()) == list(range(68))
    for name, i in VOCAB.items():
        assert mc.id_name(OFF + i) == name
    with pytest.raises(ValueError):
        mc.id_name(OFF + 68)


def test_minerl_noop_layout(mc):
    t = mc.encode(MINERL_SPACE.noop())
    assert t.dtype == np.int64 and t.shape == (11,)
    assert rel(t) == [BOS, 23 + 10, 44 + 10, NULL, NULL, NULL, NULL, NULL, NULL, NULL, EOS]


def test_minerl_full_layout(mc):
    a = act("hotbar.4", "back", "right", "sneak", "attack", "jump", "pickItem",
            camera=(-90.0, 90.0))
    assert rel(mc.encode(a)) == [BOS, 23 + 0, 44 + 20, VOCAB["hotbar.4"], VOCAB["back"],
                                 VOCAB["right"], VOCAB["sneak"], VOCAB["attack"], VOCAB["jump"],
                                 VOCAB["pickItem"], EOS]
    b = act("hotbar.9", "forward", "left", "sprint", "use", "drop", camera=(2.25, -5.15))
    assert rel(mc.encode(b)) == [BOS, 23 + 11, 44 + 8, VOCAB["hotbar.9"], VOCAB["forward"],
                                 VOCAB["left"], VOCAB["sprint"], VOCAB["use"], NULL,
                                 VOCAB["drop"], EOS]


@pytest.mark.parametrize("slot,a,b", PAIRS)
def test_pair_slots(mc, slot, a, b):
    assert rel(mc.encode(act(a)))[slot] == VOCAB[a]
    assert rel(mc.encode(act(b)))[slot] == VOCAB[b]
    assert rel(mc.encode(act()))[slot] == NULL
    both = rel(mc.encode(act(a, b)))
    assert both[slot] == NULL  # a conflict is null ...
    assert both[:slot] + both[slot + 1:] == rel(mc.encode(act()))[:slot] + \
        rel(mc.encode(act()))[slot + 1:]  # ... and touches no other slot


def test_jump_slot(mc):
    assert rel(mc.encode(act("jump")))[8] == VOCAB["jump"]
    assert rel(mc.encode(act()))[8] == NULL
    # MineWorld's tokenizer keeps jump+sneak (only its recording loader drops them).
    t = rel(mc.encode(act("jump", "sneak")))
    assert t[8] == VOCAB["jump"] and t[6] == VOCAB["sneak"]


def test_lowest_hotbar_wins(mc):
    assert rel(mc.encode(act("hotbar.7", "hotbar.2", "hotbar.9")))[3] == VOCAB["hotbar.2"]
    for i, h in enumerate(HOTBARS):
        assert rel(mc.encode(act(*HOTBARS[i:])))[3] == VOCAB[h]


def test_slotless_buttons_are_dropped(mc):
    a = act("swapHands", "inventory", "ESC", "hotbar.3", "hotbar.5")
    assert rel(mc.encode(a)) == rel(mc.encode(act("hotbar.3")))
    d = mc.decode(mc.encode(a))
    assert d["swapHands"] == d["inventory"] == d["ESC"] == 0
    assert d["hotbar.3"] == 1 and d["hotbar.5"] == 0


# --------------------------------------------------------------------------- MineRL: camera

def test_bin_centres_pinned(mc):
    c = mc.bin_centres
    assert c.shape == (21,)
    np.testing.assert_allclose(c[10:], CENTRES, atol=0.005)
    np.testing.assert_allclose(c[:11], [-x for x in CENTRES[::-1]], atol=0.005)
    np.testing.assert_allclose(mu_law_centres(np.arange(21)), c)
    # Every centre lands back in its own bin, also after the float32 on-disk round trip.
    np.testing.assert_array_equal(mu_law_bins(c), np.arange(21))
    np.testing.assert_array_equal(mu_law_bins(c.astype(np.float32)), np.arange(21))


@pytest.mark.parametrize("deg,bin_", [
    (0.0, 10), (90.0, 20), (-90.0, 0), (1000.0, 20), (-1000.0, 0), (180.0, 20),
    (1.0, 10), (-1.0, 10), (2.25, 11), (-2.25, 9), (5.15, 12), (68.17, 19), (-68.17, 1),
])
def test_mu_law_binning(deg, bin_):
    assert int(mu_law_bins(deg)) == bin_


def test_camera_slots_use_bins(mc):
    t = rel(mc.encode(act(camera=(8.87, -1000.0))))
    assert t[1] == 23 + 13 and t[2] == 44 + 0


def test_non_finite_camera_raises(mc):
    with pytest.raises(ValueError):
        mc.encode(act(camera=(float("nan"), 0.0)))
    x = MINERL_SPACE.to_array([act()])
    x[0, -1] = np.inf
    with pytest.raises(ValueError):
        mc.encode_array(x)


# --------------------------------------------------------------------------- MineRL: round trips

@st.composite
def clean_actions(draw):
    """A MineRL action the layout can represent exactly."""
    a = MINERL_SPACE.noop()
    for _slot, k1, k2 in PAIRS:
        choice = draw(st.sampled_from([None, k1, k2]))
        if choice:
            a[choice] = 1
    a["jump"] = int(draw(st.booleans()))
    h = draw(st.sampled_from([None, *HOTBARS]))
    if h:
        a[h] = 1
    centres = mu_law_centres(np.arange(21))
    a["camera"] = [float(centres[draw(st.integers(0, 20))]),
                   float(centres[draw(st.integers(0, 20))])]
    return a


@settings(max_examples=300, deadline=None)
@given(clean_actions())
def test_minerl_round_trip(a):
    mc = make_action_tokenizer(MINERL_SPACE, OFF)
    d = mc.decode(mc.encode(a))
    assert set(d) == set(MINERL_BUTTONS) | {"camera"}
    assert {k: v for k, v in d.items() if k != "camera"} == \
        {k: v for k, v in a.items() if k != "camera"}
    np.testing.assert_allclose(d["camera"], a["camera"], atol=1e-9)
    assert all(isinstance(v, float) for v in d["camera"])
    # The on-disk path agrees.
    row = MINERL_SPACE.to_array([a])
    np.testing.assert_allclose(mc.decode_array(mc.encode_array(row)), row, atol=1e-5)


def random_disk_actions(rng: np.random.Generator, T: int) -> np.ndarray:
    """Arbitrary on-disk MineRL actions: conflicts, several hotbars, wild cameras."""
    x = np.zeros((T, MINERL_SPACE.width), np.float32)
    x[:, :-2] = rng.random((T, len(MINERL_BUTTONS))) < rng.uniform(0.05, 0.6)
    x[:, -2:] = rng.choice([-1.0, 1.0], (T, 2)) * rng.exponential(15.0, (T, 2))
    x[rng.random(T) < 0.1, -2:] = 0.0
    x[: T // 20, -2:] = rng.choice(mu_law_centres(np.arange(21)), (T // 20, 2))
    return x


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_encode_array_matches_encode(mc, seed):
    rng = np.random.default_rng(seed)
    x = random_disk_actions(rng, 2000)
    toks = mc.encode_array(x)
    assert toks.dtype == np.int64 and toks.shape == (2000, 11)
    per_step = np.stack([mc.encode(MINERL_SPACE.from_array(x, t)) for t in range(len(x))])
    np.testing.assert_array_equal(toks, per_step)
    # decode_array agrees with per-step decode (buttons exactly; camera to float32).
    dec = mc.decode_array(toks)
    assert dec.dtype == np.float32 and dec.shape == x.shape
    for t in range(0, 2000, 37):
        d = mc.decode(toks[t])
        np.testing.assert_allclose(MINERL_SPACE.action_to_row(d), dec[t], atol=1e-5)
    # Decoding then re-encoding is the identity on tokens.
    np.testing.assert_array_equal(mc.encode_array(dec), toks)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(st.booleans(), min_size=23, max_size=23),
                          st.floats(-400, 400), st.floats(-400, 400)), max_size=8))
def test_encode_array_matches_encode_property(rows):
    mc = make_action_tokenizer(MINERL_SPACE, OFF)
    x = np.array([[*map(float, b), p, y] for b, p, y in rows], np.float32).reshape(-1, 25)
    per_step = [mc.encode(MINERL_SPACE.from_array(x, t)) for t in range(len(x))]
    np.testing.assert_array_equal(mc.encode_array(x),
                                  np.stack(per_step) if per_step else np.zeros((0, 11)))


def test_minerl_empty_arrays(mc, cr):
    assert mc.encode_array(np.zeros((0, 25), np.float32)).shape == (0, 11)
    assert mc.decode_array(np.zeros((0, 11), np.int64)).shape == (0, 25)
    assert cr.encode_array(np.zeros(0, np.int16)).shape == (0, 1)
    assert cr.decode_array(np.zeros((0, 1), np.int64)).shape == (0,)


def test_minerl_bad_input(mc):
    with pytest.raises(ValueError):
        mc.encode({"fly": 1})
    with pytest.raises(ValueError):
        mc.encode_array(np.zeros((3, 24), np.float32))
    good = mc.encode(act("forward"))
    with pytest.raises(ValueError):
        mc.decode(good[:10])
    for slot, bad in [(0, OFF + EOS), (10, OFF + BOS), (1, OFF + 44), (2, OFF + 43),
                      (4, OFF + VOCAB["left"]), (8, OFF + VOCAB["sneak"]),
                      (3, OFF + VOCAB["swapHands"]), (5, OFF + 68), (6, OFF - 1)]:
        t = good.copy()
        t[slot] = bad
        with pytest.raises(ValueError):
            mc.decode(t)
        with pytest.raises(ValueError):
            mc.decode_array(t[None])


def test_minerl_needs_its_buttons():
    with pytest.raises(ValueError):
        make_action_tokenizer(ActionSpace("other", "dict", buttons=("forward",), camera=True), 0)


# --------------------------------------------------------------------------- config

@pytest.mark.parametrize("space", [CRAFTER_SPACE, MINERL_SPACE])
def test_config_round_trip(space):
    tok = make_action_tokenizer(space, OFF)
    cfg = tok.to_config()
    cfg2 = json.loads(json.dumps(cfg))  # JSON-ready: it lives in the bundle's config.json
    back = action_tokenizer_from_config(cfg2)
    assert type(back) is type(tok)
    assert back.to_config() == cfg
    assert back.space == space
    assert (back.offset, back.num_ids, back.tokens_per_action) == \
        (tok.offset, tok.num_ids, tok.tokens_per_action)
    x = space.to_array([space.noop()] * 3)
    np.testing.assert_array_equal(back.encode_array(x), tok.encode_array(x))


def test_minerl_config_keeps_camera_options():
    tok = make_action_tokenizer(MINERL_SPACE, 100, camera_maxval=10, camera_binsize=2,
                                camera_mu=10)
    assert tok.n_camera_bins == 11 and tok.num_ids == 23 + 22 + 3
    back = action_tokenizer_from_config(tok.to_config())
    assert back.camera_maxval == 10 and back.camera_binsize == 2 and back.camera_mu == 10
    np.testing.assert_allclose(back.bin_centres, tok.bin_centres)
    assert tok.to_config()["camera_mu"] == 10.0
    assert make_action_tokenizer(MINERL_SPACE, 0).to_config()["camera_mu"] == 11.4887


def test_unknown_config_key_raises():
    cfg = make_action_tokenizer(MINERL_SPACE, OFF).to_config()
    with pytest.raises(ValueError):
        action_tokenizer_from_config({**cfg, "bogus": 1})
    ccfg = make_action_tokenizer(CRAFTER_SPACE, OFF).to_config()
    with pytest.raises(ValueError):
        action_tokenizer_from_config({**ccfg, "camera_mu": 3.0})  # a MineRL option on Crafter
    with pytest.raises(ValueError):
        action_tokenizer_from_config({**ccfg, "kind": "minerl"})  # kind and space disagree
    with pytest.raises(ValueError):
        action_tokenizer_from_config({**ccfg, "kind": "nope"})
    with pytest.raises(ValueError):
        action_tokenizer_from_config({"kind": "discrete", "space": ccfg["space"]})  # no offset
    with pytest.raises(ValueError):
        action_tokenizer_from_config({**ccfg, "space": {**ccfg["space"], "extra": 1}})


def test_unknown_option_raises():
    with pytest.raises(ValueError):
        make_action_tokenizer(MINERL_SPACE, OFF, camera_bins=21)
    with pytest.raises(ValueError):
        make_action_tokenizer(CRAFTER_SPACE, OFF, camera_mu=5.0)
    with pytest.raises(ValueError):
        make_action_tokenizer(CRAFTER_SPACE, -1)
    with pytest.raises(ValueError):
        make_action_tokenizer(MINERL_SPACE, OFF, camera_maxval=90, camera_binsize=7)
    for bad in ({"camera_maxval": float("inf")}, {"camera_mu": float("nan")}):  # an OverflowError or a NaN bin
        with pytest.raises(ValueError, match="positive and finite"):
            make_action_tokenizer(MINERL_SPACE, OFF, **bad)
