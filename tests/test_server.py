"""The frame server against real websockets clients on a loopback port (no mocks)."""

import io
import os
import time

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from worldsim import protocol as P
from worldsim.envs.crafter import CRAFTER_SPACE
from worldsim.envs.minerl_space import MINERL_SPACE
from worldsim.inference.scheduler import held_action, merge_actions
from worldsim.cli import main
from worldsim.data.store import EpisodeStore
from worldsim.inference.server import Game, ServeError, ServerSettings

from _serving import SIZE, running_server, scene_store, tiny_bundle, wait_until


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("serve") / "bundle")


@pytest.fixture(scope="module")
def server(bundle):
    """A frame per input (fps 0), room for 4 sessions."""
    with running_server(bundle, fps=0, max_sessions=4, max_rate=100) as s:
        yield s


def recv(ws, timeout=10.0):
    return P.unpack(ws.recv(timeout))


def open_ws(url):
    # Entered as a context manager, which websockets >= 17.1 asks of a connection kept open.
    return connect(url, compression=None, max_size=P.MAX_SERVER_MESSAGE, open_timeout=10).__enter__()


def join(url, **hello):
    """Connect and say hello: (socket, welcome, first frame, errors before the first frame)."""
    ws = open_ws(url)
    ws.send(P.pack(P.Hello(seed=hello.pop("seed", 1), **hello)))
    welcome, errors = None, []
    while True:
        msg = recv(ws)
        if isinstance(msg, P.Welcome):
            welcome = msg
        elif isinstance(msg, P.Error):
            errors.append(msg)
        elif isinstance(msg, P.Frame):
            assert welcome is not None, "a frame before welcome"
            ws.send(P.pack(P.Ack(index=msg.index)))
            return ws, welcome, msg, errors


def play(ws, seq, action, errors=None):
    """Send an action; the first frame that includes it (acknowledging every frame)."""
    ws.send(P.pack(P.Action(seq=seq, action=action)))
    while True:
        msg = recv(ws)
        if isinstance(msg, P.Frame):
            ws.send(P.pack(P.Ack(index=msg.index)))
            if msg.seq >= seq:
                return msg
        elif errors is not None:
            errors.append(msg)
        else:
            raise AssertionError(f"unexpected {msg}")


def jpeg_pixels(data):
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_a_session_plays_50_frames_with_ground_truth(server):
    ws, welcome, first, errors = join(server.url, ground_truth=True, encoding="raw")
    assert not errors and welcome.ground_truth and welcome.action_space == CRAFTER_SPACE.to_dict()
    assert (welcome.width, welcome.height) == (SIZE, SIZE) and welcome.fps == 0
    assert welcome.temperature == 0.0  # the fixture's server decodes greedy
    assert first.seq == -1 and first.decoder is None and first.image == first.truth  # the real start
    frames = [play(ws, seq, [2, 2, 3, 5, 4][seq % 5]) for seq in range(50)]
    assert [f.seq for f in frames] == list(range(50))
    assert [f.step for f in frames] == list(range(1, 51))  # the game clock from a fresh reset
    assert len({f.index for f in frames}) == 50
    for f in frames:
        assert f.decoder == "block_diffusion" and f.timings["passes"] == 2
        assert len(f.image) == len(f.truth) == SIZE * SIZE * 3
    truths = {f.truth for f in frames}
    assert len(truths) > 5  # the real game moved under the actions
    ws.close()


def test_jpeg_frames_decode_to_the_frame_size(server):
    ws, welcome, first, _ = join(server.url, encoding="jpeg", quality=90)
    assert jpeg_pixels(first.image).shape == (SIZE, SIZE, 3) and first.truth is None
    assert jpeg_pixels(play(ws, 0, 1).image).shape == (SIZE, SIZE, 3)
    ws.close()


def test_two_sessions_get_frames_at_once(server):
    a, _, _, _ = join(server.url, seed=1)
    b, _, _, _ = join(server.url, seed=2)
    order = []
    for seq in range(15):
        a.send(P.pack(P.Action(seq=seq, action=2)))
        b.send(P.pack(P.Action(seq=seq, action=1)))
        for name, ws in (("a", a), ("b", b)):
            while True:
                msg = recv(ws)
                assert isinstance(msg, P.Frame)
                ws.send(P.pack(P.Ack(index=msg.index)))
                if msg.seq == seq:
                    order.append(name)
                    break
    assert order == ["a", "b"] * 15  # neither waited for the other to finish
    a.close()
    b.close()


def test_decoder_config_and_reset(server):
    ws, welcome, first, _ = join(server.url, seed=4)
    assert welcome.decoders == ["block_diffusion"] and welcome.steps == 2
    ws.send(P.pack(P.Config(steps=3)))
    assert play(ws, 0, 2).timings["passes"] == 3
    ws.send(P.pack(P.Config(decoder="ar")))  # an AR decoder on a block-diffusion model
    errors = []
    play(ws, 1, 2, errors)
    assert errors and errors[0].code == P.BAD_FIELD and "does not fit" in errors[0].message
    ws.send(P.pack(P.Reset()))
    while True:
        msg = recv(ws)
        if isinstance(msg, P.Frame):
            ws.send(P.pack(P.Ack(index=msg.index)))
            if msg.decoder is None:  # the real frame a reset starts from
                break
    assert msg.step == 0 and msg.image == first.image  # the same seed: the same world
    ws.close()


def test_a_slow_client_sees_only_recent_frames_and_memory_stays_flat(bundle):
    with running_server(bundle, fps=50, max_sessions=2) as s:
        ws, _, _, _ = join(s.url)
        ws.send(P.pack(P.Action(seq=0, action=2)))
        indexes, pending, rss = [], [], []
        for i in range(10):
            time.sleep(0.2)
            rss.append(resident_mb())
            msg = recv(ws)
            assert isinstance(msg, P.Frame)
            indexes.append(msg.index)
            ws.send(P.pack(P.Ack(index=msg.index)))
            for c in s.server.stats()["connections"]:
                pending.append((c["outbox"], c["unacked"], c["write_buffer"]))
        ws.close()
    gaps = np.diff(indexes)
    # Without the one-slot outbox and the send window, buffers would hand this client every
    # frame in order (gaps of 1), each older than the last.
    assert gaps[2:].min() >= 3, indexes
    for outbox, unacked, buffered in pending:
        assert outbox <= 1 and unacked <= 2 and buffered < 64 * 1024
    if rss[0] is not None:  # ~50 frames were dropped per read: none of them piled up anywhere
        assert rss[-1] - rss[2] < 32, rss


def resident_mb():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux
        return None


def test_scheduler_merges_inputs_between_frames():
    assert merge_actions(5, 0, CRAFTER_SPACE) == 5  # a tap survives a release before the frame
    assert merge_actions(5, 2, CRAFTER_SPACE) == 2  # the newest input wins
    assert merge_actions(5, 3, CRAFTER_SPACE, before=3) == 5  # and a return to the key held under it
    assert merge_actions(5, 0, CRAFTER_SPACE, before=3) == 5
    assert merge_actions(3, 3, CRAFTER_SPACE, before=3) == 3
    a = {**MINERL_SPACE.noop(), "forward": 1, "camera": [1.0, 2.0]}
    b = {**MINERL_SPACE.noop(), "jump": 1, "camera": [0.5, -4.0]}
    m = merge_actions(a, b, MINERL_SPACE)
    assert m["forward"] == 1 and m["jump"] == 1 and m["camera"] == [1.5, -2.0]  # held stay held, motion sums
    assert held_action(m, MINERL_SPACE)["camera"] == [0.0, 0.0]


# -- bad input: each gets an error or a close with a reason; the bystander plays on ----------
def bad_messages():
    wrong = st.one_of(st.text(max_size=5), st.floats(allow_nan=True), st.binary(max_size=5),
                      st.lists(st.integers(-9, 9), max_size=2), st.booleans())
    return st.one_of(
        st.binary(min_size=1, max_size=200),  # mostly malformed msgpack
        st.builds(lambda v: {"type": "action", "seq": v, "action": 1}, wrong),
        st.builds(lambda v: {"type": "action", "seq": 1, "action": v}, wrong),
        st.builds(lambda v: {"type": "action", "seq": v, "action": 1},
                  st.integers(-2**63, -1) | st.integers(min_value=2**53, max_value=2**63 - 1)),
        st.builds(lambda v: {"type": "action", "seq": 1, "action": v}, st.integers(17, 65535)),
        st.builds(lambda v: {"type": "config", "steps": v}, st.integers(-2**63, 0) | st.integers(257, 2**64 - 1)),
        st.builds(lambda t: {"type": t}, st.text(max_size=12).filter(lambda t: t not in P.SCHEMA)),
    ).map(lambda m: m if isinstance(m, bytes) else msgpack.packb(m, use_bin_type=True))


@settings(max_examples=25, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=bad_messages())
def test_bad_messages_get_an_error_and_the_session_goes_on(server, data):
    ws, _, _, _ = join(server.url)
    try:
        ws.send(data)
        errors = []
        frame = play(ws, 0, 3, errors)  # the same session still plays
        assert frame.seq == 0
        assert len(errors) == 1 and errors[0].code in (P.BAD_MESSAGE, P.UNKNOWN_TYPE, P.BAD_FIELD, P.BAD_ACTION)
    finally:
        ws.close()


def test_oversized_messages_and_floods_close_with_a_reason_while_others_play(server):
    bystander, _, _, _ = join(server.url, seed=3)
    big, _, _, _ = join(server.url)
    big.send(msgpack.packb({"type": "reset", "pad": "x" * 10_000}))
    with pytest.raises(ConnectionClosed) as e:
        while True:
            recv(big)
    assert e.value.rcvd.code == 1009  # message too big
    flood, _, _, _ = join(server.url)
    errors = []
    try:
        for i in range(2000):
            flood.send(P.pack(P.Ack(index=0)))
    except ConnectionClosed:  # closed while still flooding
        pass
    with pytest.raises(ConnectionClosed) as e:
        while True:
            errors.append(recv(flood))
    assert e.value.rcvd.code == 1008 and "flooding" in e.value.rcvd.reason
    assert any(isinstance(m, P.Error) and m.code == P.RATE_LIMITED for m in errors)
    assert play(bystander, 0, 2).seq == 0  # the other session never noticed
    bystander.close()


def test_messages_before_hello_get_not_ready_then_a_close(server):
    ws = open_ws(server.url)
    ws.send(P.pack(P.Action(seq=0, action=1)))
    msg = recv(ws)
    assert isinstance(msg, P.Error) and msg.code == P.NOT_READY
    with pytest.raises(ConnectionClosed) as e:
        # The server may close while the last of these are still being sent: either the send or
        # the receive then sees the close.
        for _ in range(10):
            ws.send(b"\xc1")
        while True:
            recv(ws)
    assert e.value.rcvd.code == 1008 and "no hello" in e.value.rcvd.reason


def test_session_limit_refuses_politely_and_a_wrong_token_is_refused(bundle):
    with running_server(bundle, fps=0, max_sessions=2, token="s3cret") as s:
        with pytest.raises(ConnectionClosed) as e:
            join(s.url, token="guess")
        assert e.value.rcvd.code == 1008 and e.value.rcvd.reason == "bad token"
        a, _, _, _ = join(s.url, token="s3cret")
        b, _, _, _ = join(s.url, token="s3cret")
        ws = open_ws(s.url)
        ws.send(P.pack(P.Hello(token="s3cret")))
        msg = recv(ws)
        assert isinstance(msg, P.Error) and msg.code == P.SERVER_FULL
        with pytest.raises(ConnectionClosed) as e:
            recv(ws)
        assert e.value.rcvd.code == 1013 and "server full: 2 of 2" in e.value.rcvd.reason
        a.close()
        assert wait_until(lambda: s.server.sessions == 1, 1.0)
        c, _, _, _ = join(s.url, token="s3cret")  # a freed place is taken again
        assert play(c, 0, 1).seq == 0
        b.close()
        c.close()


def test_a_client_that_vanishes_mid_frame_frees_its_session_within_a_second(server):
    engine = server.server.scheduler.engine
    before = len(engine.free_rows)
    ws, _, _, _ = join(server.url)
    assert len(engine.free_rows) == before - 1
    ws.send(P.pack(P.Action(seq=0, action=2)))
    ws.socket.close()  # no close frame: the process died mid-frame
    t0 = time.monotonic()
    assert wait_until(lambda: len(engine.free_rows) == before and server.server.scheduler.active == 0
                      and server.server.sessions == 0, 1.0)
    assert time.monotonic() - t0 <= 1.0


def test_idle_clients_are_closed(bundle):
    with running_server(bundle, fps=0, idle_timeout=0.3) as s:
        ws, _, _, _ = join(s.url)
        with pytest.raises(ConnectionClosed) as e:
            recv(ws, timeout=5)
        assert e.value.rcvd.code == 1001 and "idle" in e.value.rcvd.reason


def test_other_addresses_need_a_token_or_insecure():
    with pytest.raises(ServeError, match="--token"):
        ServerSettings(host="0.0.0.0").check()
    ServerSettings(host="0.0.0.0", token="t").check()
    ServerSettings(host="0.0.0.0", insecure=True).check()
    ServerSettings(host="::1").check()


def test_a_recorded_scene_starts_at_its_frame(bundle, tmp_path):
    store = scene_store(tmp_path / "scene")
    ep = EpisodeStore(store).load("000000")
    with running_server(bundle, fps=0, scene=f"{store}:000000:5") as s:
        ws, welcome, first, errors = join(s.url, ground_truth=True, encoding="raw")
        assert not welcome.ground_truth and errors[0].code == P.UNAVAILABLE  # a recording has no game
        assert first.step == 5 and first.image == ep.frames[5].tobytes()
        frame = play(ws, 0, 2)
        assert frame.step == 6 and frame.truth is None
        ws.close()
    with pytest.raises(ServeError, match="has frames 0..12"):
        Game.from_bundle(bundle, scene=f"{store}:000000:40")
    with pytest.raises(ServeError, match="no episode 'x'"):
        Game.from_bundle(bundle, scene=f"{store}:x")
    path = EpisodeStore(store).episode_path("000000")  # torn: a CorruptEpisode traceback before
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ServeError, match="--scene: .*000000"):
        Game.from_bundle(bundle, scene=f"{store}:000000")


def test_minerl_button_actions(tmp_path):
    b = tiny_bundle(tmp_path / "minerl", game="minerl")
    with pytest.raises(ServeError, match="recorded episode"):
        Game.from_bundle(b)  # no simulator to reset
    store = scene_store(tmp_path / "scene", game="minerl")
    with running_server(b, fps=0, scene=str(store)) as s:
        ws, welcome, first, _ = join(s.url)
        assert welcome.action_space == MINERL_SPACE.to_dict() and first.step == 0
        frame = play(ws, 0, {"forward": 1, "jump": True, "camera": [5.0, -3.0]})
        assert frame.seq == 0 and frame.step == 1
        for i, bad in enumerate(({"fly": 1}, 3)):  # seq increases with every action
            errors = []
            ws.send(P.pack(P.Action(seq=1 + 2 * i, action=bad)))
            play(ws, 2 + 2 * i, {}, errors)
            assert [e.code for e in errors] == [P.BAD_ACTION]
        ws.close()


def test_serve_refuses_an_open_address_without_a_token(bundle, capsys):
    assert main(["serve", "--bundle", str(bundle), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("worldsim serve: error:") and "--token" in err and len(err.splitlines()) == 1


def test_a_collected_scene_replays_for_ground_truth(bundle, tmp_path):
    from worldsim.data.collect import collect_crafter

    collect_crafter(tmp_path / "store", episodes=1, steps=8, seed=3, size=SIZE, progress=False)
    ep = EpisodeStore(tmp_path / "store").load("000000")
    with running_server(bundle, fps=0, scene=f"{tmp_path / 'store'}:000000:6") as s:
        ws, welcome, first, errors = join(s.url, ground_truth=True, encoding="raw")
        assert welcome.ground_truth and not errors
        assert first.step == 6 and first.image == first.truth == ep.frames[6].tobytes()
        frame = play(ws, 0, int(ep.actions[6]))  # the recorded action: the real game agrees
        assert frame.step == 7 and frame.truth == ep.frames[7].tobytes()
        ws.close()


def test_the_protocol_page_example_runs_against_a_server(server):
    text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "protocol.md")).read()
    code = text.split("```python\n")[1].split("```")[0]
    assert "ws://127.0.0.1:8765" in code
    scope = {}
    exec(compile(code.replace("ws://127.0.0.1:8765", server.url), "protocol.md", "exec"), scope)
    assert scope["welcome"]["type"] == "welcome" and scope["msg"]["type"] == "frame"
    assert scope["msg"]["seq"] >= 0 and scope["msg"]["image"][:2] == b"\xff\xd8"  # a JPEG


def test_serve_on_a_busy_port_says_so_in_one_line(bundle, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--bundle", str(bundle), "--port", str(port), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("worldsim serve: error: cannot listen on") and len(err.splitlines()) == 1


def test_paced_sessions_share_one_batch_per_tick(bundle):
    with running_server(bundle, fps=20, max_sessions=2) as s:
        a, b = join(s.url, seed=1)[0], join(s.url, seed=2)[0]
        last = {}
        for name, ws in (("a", a), ("b", b)) * 6:  # both open: every tick steps both at once
            msg = recv(ws)
            ws.send(P.pack(P.Ack(index=msg.index)))
            last[name] = msg
        assert last["a"].timings["batch"] == last["b"].timings["batch"] == 2
        assert last["a"].step > 1 and last["b"].step > 1  # the game clocks run without input
        a.close()
        b.close()


def test_acks_over_the_rate_limit_still_open_the_send_window(bundle):
    """A burst of input spends the client's messages; the acks of the frames it brings come
    while nothing is left. They are applied all the same: dropped, the send window would stay
    full and the stream would stop for good, though the client then keeps well under the limit."""
    with running_server(bundle, fps=0, max_sessions=1, max_rate=4) as s:
        ws, _, _, _ = join(s.url, window=1)
        for i in range(4):  # the bucket's four messages, at once
            ws.send(P.pack(P.Action(seq=i, action=2)))
        got = []
        while not got or got[-1].seq < 3:  # the burst's frames, each acknowledged at once
            msg = recv(ws)
            if isinstance(msg, P.Frame):
                ws.send(P.pack(P.Ack(index=msg.index)))
                got.append(msg)
        time.sleep(1.5)  # back under the limit
        for seq in (4, 5):
            assert play(ws, seq, 3, errors=[]).seq == seq
        ws.close()


def test_a_rate_limit_under_one_message_a_second_lets_messages_through():
    from worldsim.inference.server import RateLimit

    limit = RateLimit(0.5)
    assert limit.take() and not limit.take()  # one message, then one every two seconds
    limit.last -= 2.0
    assert limit.take()


def test_an_unsent_real_frame_is_not_replaced_by_a_dreamed_one():
    """After a reset the real frame is what the client waits for: a dreamed frame made before
    it was sent waits behind it instead of taking its place; a newer real frame does replace it."""
    import asyncio

    from worldsim.inference.scheduler import FrameOut
    from worldsim.inference.server import Outbox

    def frame(i, decoder):
        return FrameOut(i, i, np.zeros((2, 2, 3), np.uint8), None, i, None, decoder)

    async def run():
        box = Outbox(window=4)
        box.put(frame(1, "block_diffusion"))
        box.put(frame(2, None))  # a reset's real frame replaces the dreamed one
        box.put(frame(3, "block_diffusion"))
        box.put(frame(4, "block_diffusion"))  # the newest dreamed frame waits behind it
        first, second = await box.get(), await box.get()
        box.put(frame(5, "block_diffusion"))
        box.put(frame(6, None))
        box.put(frame(7, "block_diffusion"))
        box.put(frame(8, None))  # a newer real frame: the real and the dreamed one behind it go
        return [first.index, second.index, (await box.get()).index], box.dropped, box.item, box.behind

    order, dropped, item, behind = asyncio.run(run())
    assert order == [2, 4, 8] and dropped == 5 and item is None and behind is None


def test_a_session_closed_as_the_scheduler_stops_frees_its_engine_row(bundle):
    """A close that arrives while the worker is busy queues the freeing of its row; stopping
    then runs it, so a stopped scheduler holds no cache rows."""
    from worldsim.inference.engine import DecoderSettings, Engine
    from worldsim.inference.sampling import GREEDY
    from worldsim.inference.scheduler import Scheduler, Start

    engine = Engine.from_bundle(bundle, decoder=DecoderSettings(steps=2, sampling=GREEDY), max_sessions=2)
    sched = Scheduler(engine, CRAFTER_SPACE, 0).start()
    sid, opened = sched.open(Start(np.zeros((1, SIZE, SIZE, 3), np.uint8), []), lambda out: None)
    opened.result(10)
    assert sorted(engine.free_rows) == [1]
    with sched._cv:  # the worker is held, as in a step, while the client leaves and the server stops
        sched.close(sid)
        sched._stop = True
        sched._cv.notify_all()
    sched._thread.join(10)
    assert not sched._thread.is_alive() and sorted(engine.free_rows) == [0, 1]


def test_a_real_game_that_fails_leaves_the_dream_running(bundle):
    """Ground truth is the real game stepped beside the dream; if it raises, the session goes
    on without it (and the inference thread, which every session shares, lives)."""
    import queue

    from worldsim.inference.engine import DecoderSettings, Engine
    from worldsim.inference.sampling import GREEDY
    from worldsim.inference.scheduler import Scheduler, Start

    class Broken:
        def step(self, action):
            raise RuntimeError("the game crashed")

    engine = Engine.from_bundle(bundle, decoder=DecoderSettings(steps=2, sampling=GREEDY), max_sessions=1)
    sched = Scheduler(engine, CRAFTER_SPACE, 0).start()
    frames: queue.Queue = queue.Queue()
    sid, opened = sched.open(Start(np.zeros((1, SIZE, SIZE, 3), np.uint8), [], truth=Broken()), frames.put)
    opened.result(10)
    assert frames.get(timeout=10).truth is not None  # the real frame it starts from
    for seq in (0, 1):
        sched.submit(sid, 2, seq)
        out = frames.get(timeout=10)
        assert out is not None and out.seq == seq and out.truth is None
    assert sched._thread.is_alive()
    sched.stop()


def test_a_reset_whose_game_fails_gets_an_internal_error_and_a_close_while_others_play(bundle):
    with running_server(bundle, fps=0, max_sessions=2) as s:
        bystander, _, _, _ = join(s.url, seed=3)
        ws, _, _, _ = join(s.url)
        start = s.server.game.start

        def broken(seed, truth):
            if seed == 99:
                raise RuntimeError("no such world")
            return start(seed, truth)

        s.server.game.start = broken
        ws.send(P.pack(P.Reset(seed=99)))
        got = []
        with pytest.raises(ConnectionClosed) as e:
            while True:
                got.append(recv(ws))
        assert e.value.rcvd.code == 1011
        assert any(isinstance(m, P.Error) and m.code == P.INTERNAL and "no such world" in m.message for m in got)
        assert play(bystander, 0, 2).seq == 0
        assert wait_until(lambda: s.server.stats()["sessions"] == 1, 5)  # its session was freed
        bystander.close()


def test_a_tap_while_a_key_is_held_reaches_the_frame_and_the_frame_says_what_it_applied(bundle):
    """Walking (W held) and tapping Space before the next frame: the frame does `do`, and it
    carries the action it was made with (what a recording keeps)."""
    import queue

    from worldsim.inference.engine import DecoderSettings, Engine
    from worldsim.inference.sampling import GREEDY
    from worldsim.inference.scheduler import Scheduler, Start

    engine = Engine.from_bundle(bundle, decoder=DecoderSettings(steps=2, sampling=GREEDY), max_sessions=1)
    sched = Scheduler(engine, CRAFTER_SPACE, 0).start()
    frames: queue.Queue = queue.Queue()
    sid, opened = sched.open(Start(np.zeros((1, SIZE, SIZE, 3), np.uint8), []), frames.put)
    opened.result(10)
    assert frames.get(timeout=10).action is None  # the real frame it starts from
    sched.submit(sid, 3, 0)  # W: move up, held
    assert frames.get(timeout=10).action == 3
    with sched._cv:  # both inputs land before the worker takes the next one
        sched.submit(sid, 5, 1)  # Space: do
        sched.submit(sid, 3, 2)  # Space released, W still held
    assert frames.get(timeout=10).action == 5
    sched.stop()


def test_a_server_that_cannot_listen_stops_its_scheduler_too(bundle):
    import socket

    from worldsim.inference.server import ServerThread, make_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = make_server(bundle, ServerSettings(host="127.0.0.1", port=taken.getsockname()[1]))
        with pytest.raises(Exception):
            ServerThread(server).start()
    assert not server.scheduler._thread.is_alive()


def test_a_connections_p95_latency_is_taken_as_bench_takes_it():
    """With few samples the log's p95 indexed below the 95th percentile: two samples gave the
    smaller, under the median."""
    from worldsim.inference.server import Connection

    c = Connection(ws=None, peer="peer")
    c.latencies.extend([100.0, 10.0])
    assert "latency median 55.0 ms p95 95.5 ms" in c.summary()
