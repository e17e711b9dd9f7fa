import subprocess
import sys

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worldsim import protocol as P
from worldsim.envs.crafter import CRAFTER_SPACE
from worldsim.envs.minerl_space import MINERL_SPACE

seqs = st.integers(0, P.MAX_SEQ)
seeds = st.none() | st.integers(0, P.MAX_SEED)
short = st.text(max_size=16)
buttons = st.dictionaries(st.sampled_from(MINERL_SPACE.buttons), st.integers(0, 1), max_size=8)
cameras = st.lists(st.floats(-180, 180), min_size=2, max_size=2)
actions = st.integers(0, 16) | st.builds(lambda b, c: {**b, "camera": c}, buttons, cameras)
numbers = st.dictionaries(st.text(max_size=8), st.floats(-1e6, 1e6), max_size=4)

messages = st.one_of(
    st.builds(P.Hello, version=st.just(1), encoding=st.sampled_from(P.ENCODINGS), quality=st.integers(1, 100),
              token=st.none() | short, seed=seeds, ground_truth=st.booleans(), window=st.integers(1, 64)),
    st.builds(P.Action, seq=seqs, action=actions),
    st.builds(P.Reset, seed=seeds),
    st.builds(P.Config, decoder=st.none() | st.sampled_from(["ar", "diagonal", "block_diffusion"]),
              steps=st.none() | st.integers(1, 256), paused=st.none() | st.booleans()),
    st.builds(P.Ack, index=seqs),
    st.builds(P.Welcome, session=seqs, width=st.integers(1, 512), height=st.integers(1, 512),
              fps=st.floats(0, 1000), action_space=st.just(CRAFTER_SPACE.to_dict()),
              encoding=st.sampled_from(P.ENCODINGS), ground_truth=st.booleans(), decoder=short,
              steps=st.integers(1, 256), decoders=st.lists(short, max_size=3), seed=st.integers(0, P.MAX_SEED),
              limits=numbers, temperature=st.none() | st.floats(0, 100)),
    st.builds(P.Frame, index=seqs, seq=st.integers(-1, P.MAX_SEQ), encoding=st.just("jpeg"),
              width=st.integers(1, 512), height=st.integers(1, 512), image=st.binary(max_size=64),
              truth=st.none() | st.binary(max_size=64), step=seqs, decoder=st.none() | short, timings=numbers),
    st.builds(P.Error, code=short, message=st.text(max_size=100)),
)


@settings(max_examples=100, deadline=1000)
@given(messages)
def test_every_message_round_trips(msg):
    assert P.unpack(P.pack(msg)) == msg


def test_raw_frames_must_hold_their_pixels():
    ok = P.Frame(index=0, seq=-1, encoding="raw", width=2, height=1, image=bytes(6))
    assert P.unpack(P.pack(ok)) == ok
    with pytest.raises(P.ProtocolError, match="6 bytes"):
        P.unpack(P.pack(P.Frame(index=0, seq=-1, encoding="raw", width=2, height=1, image=bytes(5))))


def raw(d):
    return msgpack.packb(d, use_bin_type=True)


@pytest.mark.parametrize("data, code, words", [
    (b"\xc1", P.BAD_MESSAGE, "do not decode as msgpack"),  # 0xc1 is never used in msgpack
    (raw({"type": "ack", "index": 1}) + b"\x00", P.BAD_MESSAGE, "bytes after the msgpack message"),
    (raw([1, 2, 3]), P.BAD_MESSAGE, "is a map"),
    (raw({"index": 1}), P.UNKNOWN_TYPE, "needs a 'type' field"),
    (raw({"type": "teleport"}), P.UNKNOWN_TYPE, "teleport"),
    (raw({"type": "action", "seq": 1}), P.BAD_FIELD, "'action' is required"),
    (raw({"type": "action", "seq": "1", "action": 2}), P.BAD_FIELD, "'seq' must be an integer"),
    (raw({"type": "action", "seq": True, "action": 2}), P.BAD_FIELD, "'seq' must be an integer"),
    (raw({"type": "action", "seq": -5, "action": 2}), P.BAD_FIELD, "must lie in"),
    (raw({"type": "action", "seq": 1, "action": 2.5}), P.BAD_FIELD, "integer or a map"),
    (raw({"type": "action", "seq": 1, "action": {"camera": [1.0, float("nan")]}}), P.BAD_FIELD, "finite"),
    (raw({"type": "action", "seq": 1, "action": {"camera": [1.0, 400.0]}}), P.BAD_FIELD, "finite"),
    (raw({"type": "action", "seq": 1, "action": {"jump": 2}}), P.BAD_FIELD, "jump"),
    (raw({"type": "action", "seq": 1, "action": 2, "extra": 0}), P.BAD_FIELD, "unknown fields"),
    (raw({"type": "hello", "encoding": "png"}), P.BAD_FIELD, "one of jpeg, raw"),
    (raw({"type": "hello", "token": "x" * 300}), P.BAD_FIELD, "at most 256"),
    (raw({"type": "config", "steps": 0}), P.BAD_FIELD, "steps"),
    (raw({"type": "ack", "index": 2**64 - 1}), P.BAD_FIELD, "must lie in"),
])
def test_bad_messages_name_what_is_wrong(data, code, words):
    with pytest.raises(P.ProtocolError, match=words) as e:
        P.unpack(data, P.MAX_CLIENT_MESSAGE, P.CLIENT_TYPES)
    assert e.value.code == code


def test_size_limits_and_server_types_from_a_client():
    with pytest.raises(P.ProtocolError, match="limit is 4096") as e:
        P.unpack(raw({"type": "error", "code": "x", "message": "y" * 5000}), P.MAX_CLIENT_MESSAGE)
    assert e.value.code == P.BAD_MESSAGE
    welcome_like = raw({"type": "error", "code": "x", "message": "y"})
    with pytest.raises(P.ProtocolError) as e:
        P.unpack(welcome_like, types=P.CLIENT_TYPES)  # a server message sent by a client
    assert e.value.code == P.UNKNOWN_TYPE
    with pytest.raises(P.ProtocolError):
        P.unpack("text frame")  # text websocket frames are not the protocol


def test_a_client_skips_fields_a_newer_server_adds_but_a_server_refuses_a_clients():
    newer = {"type": "error", "code": "x", "message": "y", "hint": "a field from a later server"}
    assert P.unpack(raw(newer), types=P.SERVER_TYPES) == P.Error(code="x", message="y")
    older = {"type": "welcome", "session": 0, "width": 8, "height": 8, "fps": 0.0,
             "action_space": CRAFTER_SPACE.to_dict(), "encoding": "raw", "ground_truth": False,
             "decoder": "ar", "steps": 1, "decoders": ["ar"], "seed": 0}
    assert P.unpack(raw(older), types=P.SERVER_TYPES).temperature is None  # a server before the field
    with pytest.raises(P.ProtocolError, match="unknown fields") as e:
        P.unpack(raw({"type": "reset", "seed": 1, "hint": 0}), types=P.CLIENT_TYPES)
    assert e.value.code == P.BAD_FIELD


@settings(max_examples=100, deadline=1000)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_give_a_protocol_error_or_a_message(data):
    try:
        msg = P.unpack(data, P.MAX_CLIENT_MESSAGE, P.CLIENT_TYPES)
    except P.ProtocolError as e:
        assert e.code in (P.BAD_MESSAGE, P.UNKNOWN_TYPE, P.BAD_FIELD)
    else:
        assert msg.TYPE in P.CLIENT_TYPES


def test_check_action_against_spaces():
    crafter, minerl = CRAFTER_SPACE.to_dict(), MINERL_SPACE.to_dict()
    assert P.check_action(5, crafter) == 5
    for bad in (17, {"forward": 1}):
        with pytest.raises(P.ProtocolError) as e:
            P.check_action(bad, crafter)
        assert e.value.code == P.BAD_ACTION
    full = P.check_action({"forward": 1, "camera": [2.0, -3.0]}, minerl)
    assert full["forward"] == 1 and full["jump"] == 0 and full["camera"] == [2.0, -3.0]
    assert set(full) == set(MINERL_SPACE.buttons) | {"camera"}
    with pytest.raises(P.ProtocolError, match="fly"):
        P.check_action({"fly": 1}, minerl)
    with pytest.raises(P.ProtocolError):
        P.check_action(3, minerl)


def test_protocol_and_client_import_no_torch():
    code = ("import sys; import worldsim.protocol; import worldsim.client.game, worldsim.client.connection, "
            "worldsim.client.keymaps; bad = sorted(m for m in ('torch', 'worldsim.inference', 'worldsim.model') "
            "if m in sys.modules); print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    code = ("import sys; import worldsim.protocol; "
            "extra = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'torch', 'pygame', 'websockets')); "
            "print(extra); sys.exit(1 if extra else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("data, code, says", [
    (msgpack.packb({"seq": 1}), P.UNKNOWN_TYPE, "needs a 'type' field"),
    (msgpack.packb({"type": 5}), P.UNKNOWN_TYPE, "unknown message type 5"),
    (msgpack.packb({"type": "reset"}) + b"\x01", P.BAD_MESSAGE, "bytes after the msgpack message"),
    (b"\xc1\xc1", P.BAD_MESSAGE, "do not decode as msgpack"),
    (msgpack.packb({1: 2}), P.BAD_MESSAGE, "a map key that is not a string"),
])
def test_a_bad_message_is_said_in_the_clients_terms(data, code, says):
    """The replies named Python's types and exceptions: "unknown message type 'NoneType'" for a
    map without a type, "not a msgpack message: ExtraData"."""
    with pytest.raises(P.ProtocolError) as e:
        P.unpack(data, P.MAX_CLIENT_MESSAGE, P.CLIENT_TYPES)
    assert e.value.code == code and says in str(e.value)
