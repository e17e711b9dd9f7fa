"""The play path under review: the frame server, the wire protocol, `worldsim serve` and
`worldsim play`, the client connection and window (real sockets on loopback, no mocks of them)."""

import os
import threading

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

from worldsim import protocol as P  # noqa: E402
from worldsim.envs.crafter import CRAFTER_SPACE  # noqa: E402

from _serving import SIZE, running_server, tiny_bundle, wait_until  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("play-review") / "bundle")


def recv(ws, timeout=10.0):
    return P.unpack(ws.recv(timeout))


def join(url, seed=1):
    """Connect and say hello: (socket, first frame), acknowledging it."""
    ws = connect(url, compression=None, max_size=P.MAX_SERVER_MESSAGE, open_timeout=10).__enter__()
    ws.send(P.pack(P.Hello(seed=seed)))
    while True:
        msg = recv(ws)
        if isinstance(msg, P.Frame):
            ws.send(P.pack(P.Ack(index=msg.index)))
            return ws, msg


def play(ws, seq, action):
    ws.send(P.pack(P.Action(seq=seq, action=action)))
    while True:
        msg = recv(ws)
        if isinstance(msg, P.Frame):
            ws.send(P.pack(P.Ack(index=msg.index)))
            if msg.seq >= seq:
                return msg


def test_a_session_that_fails_while_its_config_waits_leaves_the_scheduler_serving_others(bundle):
    """The engine fails a session whose Config waits in the scheduler's queue: the server drops
    the connection and cancels its wait. That cancel went through `asyncio.wrap_future` to the
    command's own future, and the worker, setting its result later, died of InvalidStateError:
    no session got another frame."""
    with running_server(bundle, fps=0, max_sessions=2) as s:
        sched = s.server.scheduler
        ws, _ = join(s.url, seed=1)
        queue, step, futures = sched._queue, sched.engine.step, []

        def slow_queue(fn):
            def run():  # hold the command until the connection is gone (or its wait cancelled it)
                wait_until(lambda: futures[-1].cancelled() or not s.server.connections, 10)
                return fn()
            futures.append(queue(run))
            return futures[-1]

        stepping = threading.Event()

        def failing_step(batch):
            stepping.set()
            wait_until(lambda: futures, 10)  # the Config is queued behind this step
            raise RuntimeError("out of memory (simulated)")

        sched._queue, sched.engine.step = slow_queue, failing_step
        try:
            ws.send(P.pack(P.Action(seq=0, action=1)))
            assert stepping.wait(10)
            ws.send(P.pack(P.Config(steps=3)))
            with pytest.raises(ConnectionClosed):
                while True:
                    recv(ws)
            assert wait_until(lambda: futures[-1].done(), 10)
        finally:
            sched._queue, sched.engine.step = queue, step
        assert sched._thread.is_alive()
        other, _ = join(s.url, seed=2)
        assert play(other, 0, 2).seq == 0
        other.close()
        ws.close()


def test_a_server_refuses_settings_its_welcome_cannot_state_before_the_model_loads(bundle, monkeypatch):
    """--steps 300 (or --fps 2000) made a server whose welcome every client refused as a bad
    message: each waited out its timeout and said the server did not answer."""
    from worldsim.inference import engine as engine_mod
    from worldsim.inference.engine import DecoderSettings
    from worldsim.inference.sampling import SamplingSettings
    from worldsim.inference.server import ServeError, ServerSettings, make_server

    def no_load(*a, **kw):
        raise AssertionError("the model loaded before the settings were checked")

    monkeypatch.setattr(engine_mod.Engine, "from_bundle", no_load)
    settings = ServerSettings(host="127.0.0.1", port=0)
    with pytest.raises(ServeError, match=r"--steps must lie in \[1, 256\]"):
        make_server(bundle, settings, fps=0, decoder=DecoderSettings(steps=300))
    with pytest.raises(ServeError, match=r"--fps must lie in \[0, 1000\]"):
        make_server(bundle, settings, fps=2000.0, decoder=DecoderSettings())
    with pytest.raises(ServeError, match="--temperature must be at most 100"):
        make_server(bundle, settings, fps=0, decoder=DecoderSettings(sampling=SamplingSettings(500.0)))


def test_a_welcome_the_client_cannot_read_fails_the_connection_at_once_and_says_why():
    """A welcome outside the protocol (a server of another version, or one with out-of-range
    settings) was taken as an error and the client waited for another welcome until its timeout,
    then said the server did not answer."""
    from websockets.sync.server import serve

    from worldsim.client.connection import Connection, ConnectionFailed

    def handler(ws):
        ws.recv()  # the hello
        ws.send(P.pack(P.Welcome(session=0, width=SIZE, height=SIZE, fps=10.0,
                                 action_space=CRAFTER_SPACE.to_dict(), encoding="jpeg", ground_truth=False,
                                 decoder="block_diffusion", steps=300, decoders=["block_diffusion"], seed=1)))
        for _ in ws:
            pass

    with serve(handler, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        with pytest.raises(ConnectionFailed, match="cannot read.*'steps'"):
            Connection(f"ws://127.0.0.1:{port}", seed=1, timeout=3).open()
        server.shutdown()


def test_a_long_internal_error_reaches_the_client_as_a_readable_error(bundle):
    """An exception's text went whole into the error message; over 1024 characters the client
    could not read it and lost why its session closed."""
    with running_server(bundle, fps=0, max_sessions=1) as s:
        ws, _ = join(s.url)

        def broken(seed, truth):
            raise RuntimeError("no such world: " + "x" * 3000)

        s.server.game.start = broken
        ws.send(P.pack(P.Reset(seed=7)))
        got = []
        with pytest.raises(ConnectionClosed):
            while True:
                got.append(recv(ws))
        assert any(isinstance(m, P.Error) and m.code == P.INTERNAL and "no such world" in m.message for m in got)
        ws.close()


def _play_args(bundle, tmp_path, *more):
    return ["play", "--bundle", str(bundle), "--frames", "2", "--fps", "0", "--device", "cpu",
            "--autoplay", "--out", str(tmp_path), *more]


def test_play_refuses_an_out_folder_it_cannot_write_before_it_plays(bundle, tmp_path, capsys):
    """--out was not checked: a file there ended the game with an error at the first F12 (or
    at the end of a recording, which was lost)."""
    from worldsim.cli import main

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(SystemExit) as e:
        main(_play_args(bundle, tmp_path, "--out", str(a_file)))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err and "not a folder" in err


def test_play_refuses_a_token_without_a_server(bundle, tmp_path, capsys):
    """--token without --server went to the server `worldsim play` starts itself, which asks
    for none: accepted and ignored."""
    from worldsim.cli import main

    assert main(_play_args(bundle, tmp_path, "--token", "SECRET")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--token" in err and "--server" in err


def test_play_without_a_display_says_so_before_it_loads_the_model(bundle, tmp_path, monkeypatch, capsys):
    from worldsim.cli import main
    from worldsim.commands import serve

    def no_load(*a, **kw):
        raise AssertionError("the model loaded before the window was asked for")

    monkeypatch.setattr(serve, "build_server", no_load)
    monkeypatch.setenv("SDL_VIDEODRIVER", "no-such-driver")
    assert main(_play_args(bundle, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot open a window" in err


def test_a_refused_hello_fails_the_connection_at_once_with_the_servers_reason(bundle):
    """The server answers a hello it refuses (here a seed out of range) with an error and waits
    for another hello; the client waited for a welcome until its timeout and then said the
    server did not answer."""
    from worldsim.client.connection import Connection, ConnectionFailed

    with running_server(bundle, fps=0, max_sessions=1) as s:
        with pytest.raises(ConnectionFailed, match="refused the session: field 'seed'"):
            Connection(s.url, seed=P.MAX_SEED + 1, timeout=3).open()


def test_play_refuses_a_seed_that_hello_cannot_carry_before_the_model_loads(bundle, tmp_path, capsys):
    from worldsim.cli import main

    with pytest.raises(SystemExit) as e:
        main(_play_args(bundle, tmp_path, "--seed", str(P.MAX_SEED + 1)))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seed" in err and str(P.MAX_SEED) in err


def test_play_help_says_p_pauses_only_where_p_is_no_game_key(tmp_path):
    """The help said "P or F8 pause" for every game; in Crafter P places a plant."""
    import pygame

    from worldsim.client.game import GameWindow
    from worldsim.commands.play import HELP
    from worldsim.envs.minerl_space import MINERL_SPACE

    crafter, minerl = HELP.split("Crafter:")[1].split("MineRL:")
    assert "place stone/table/furnace/plant" in crafter and "pause" not in crafter
    assert "P pause" in minerl and "P or F8" not in minerl and "F8 pause" in minerl

    class Conn:  # what the window asks of a connection
        first_frame, errors, open_now = None, [], True

        def __init__(self, space):
            self.welcome = P.Welcome(session=0, width=SIZE, height=SIZE, fps=10.0, action_space=space.to_dict(),
                                     encoding="raw", ground_truth=False, decoder="block_diffusion", steps=4,
                                     decoders=["block_diffusion"], seed=1)

        def configure(self, **kw):
            pass

    for space, p_pauses in ((CRAFTER_SPACE, False), (MINERL_SPACE, True)):
        window = GameWindow(Conn(space), out_dir=tmp_path)
        try:
            window._key_down(pygame.K_p)
            assert window.paused == p_pauses
            window.paused = False
            window._key_down(pygame.K_F8)
            assert window.paused
        finally:
            window.close()


def test_an_action_the_server_refuses_raises_its_reason_and_the_session_goes_on(bundle):
    """step() waited its whole timeout for a frame that would never come, then said no frame
    came in time; the server's reason lay unread in `errors`."""
    from worldsim.client.connection import ActionRefused, Connection

    with running_server(bundle, fps=0, max_sessions=1) as s:
        with Connection(s.url, seed=1, timeout=20) as c:
            with pytest.raises(ActionRefused, match="refused the action: a crafter action is an integer"):
                c.step(99)
            with pytest.raises(ActionRefused, match="refused the action"):
                c.step("left")
            frame = c.step(3)
            assert frame.action == 3 and frame.seq == 2  # the third action sent (from 0): it goes on


def test_an_action_whose_seq_goes_back_is_refused_and_the_session_goes_on(bundle):
    """A seq that went back was taken, and frames carried it: a client's "first frame with
    seq >= s" then read a frame that did not include its action."""
    with running_server(bundle, fps=0, max_sessions=1) as s:
        ws, _ = join(s.url)
        try:
            assert play(ws, 5, 3).seq == 5
            ws.send(P.pack(P.Action(seq=2, action=4)))
            err = recv(ws)
            while isinstance(err, P.Frame):  # a frame already on its way
                ws.send(P.pack(P.Ack(index=err.index)))
                err = recv(ws)
            assert isinstance(err, P.Error) and err.code == P.BAD_FIELD and "'seq' must increase" in err.message
            assert play(ws, 6, 4).seq == 6
        finally:
            ws.close()


def test_the_server_log_says_who_closed_and_an_ipv6_url_dials(bundle, caplog):
    """A message over the size limit, which the server closes on, was logged "closed 1006
    (client)"; an IPv6 address was printed as ws://::1:PORT, which no client can dial."""
    import logging

    from worldsim.inference.server import ws_url

    assert ws_url("::1", 8765) == "ws://[::1]:8765" and ws_url("127.0.0.1", 8765) == "ws://127.0.0.1:8765"
    with caplog.at_level(logging.INFO, logger="worldsim.server"):
        with running_server(bundle, fps=0, max_sessions=1) as s:
            ws, _ = join(s.url)
            ws.send(b"\x00" * (P.MAX_CLIENT_MESSAGE + 100))
            with pytest.raises(ConnectionClosed):
                while True:
                    recv(ws)
            assert wait_until(lambda: any("closed 1009" in r.message for r in caplog.records), 10)
    line = next(r.message for r in caplog.records if "closed 1009" in r.message)
    assert line.endswith("by the server"), line


def test_play_stopped_by_ctrl_c_still_prints_its_summary(bundle, tmp_path, monkeypatch, capsys):
    from worldsim.cli import main
    from worldsim.client.game import GameWindow

    def run(self, max_frames=None):
        self.frames_shown = 7
        raise KeyboardInterrupt

    monkeypatch.setattr(GameWindow, "run", run)
    assert main(["play", "--bundle", str(bundle), "--fps", "0", "--device", "cpu", "--out", str(tmp_path)]) == 130
    captured = capsys.readouterr()
    assert "worldsim play: 7 frames from ws://" in captured.out and "interrupted" in captured.err
