"""The pygame client under SDL's dummy video driver, driven by synthetic key events through an
embedded server (as `worldsim play` runs it)."""

import os
import shutil

import numpy as np
import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
pygame = pytest.importorskip("pygame")

from worldsim.client.connection import Connection, ConnectionFailed  # noqa: E402
from worldsim.client.game import GameWindow  # noqa: E402
from worldsim.client.keymaps import CrafterKeymap, MineRLKeymap  # noqa: E402
from worldsim.envs.crafter import CRAFTER_ACTIONS, CRAFTER_SPACE, CrafterEnv  # noqa: E402
from worldsim.envs.minerl_space import MINERL_SPACE  # noqa: E402

from _serving import SIZE, running_server, tiny_bundle  # noqa: E402

# Keys held over the 30 frames: right, then left, then `do`.
SCRIPT = {2: pygame.K_d, 11: pygame.K_a, 21: pygame.K_SPACE}


def test_keymaps_turn_keys_into_actions():
    crafter = CrafterKeymap(CRAFTER_SPACE.to_dict())
    assert crafter.action([]) == CRAFTER_ACTIONS.index("noop")
    assert crafter.action([pygame.K_w]) == CRAFTER_ACTIONS.index("move_up")
    assert crafter.action([pygame.K_w, pygame.K_t]) == CRAFTER_ACTIONS.index("place_table")  # last pressed wins
    assert crafter.action([pygame.K_6]) == CRAFTER_ACTIONS.index("make_iron_sword")
    assert crafter.action([pygame.K_TAB]) == CRAFTER_ACTIONS.index("sleep")
    minerl = MineRLKeymap(MINERL_SPACE.to_dict())
    a = minerl.action([pygame.K_w, pygame.K_LSHIFT, pygame.K_3], buttons=[1], motion=(20, -10))
    assert {k for k, v in a.items() if k != "camera" and v} == {"forward", "sneak", "hotbar.3", "attack"}
    assert a["camera"] == pytest.approx([-1.5, 3.0])  # mouse up looks up; right turns right


def test_a_bad_address_gives_one_line():
    with pytest.raises(ConnectionFailed, match="cannot connect"):
        Connection("ws://127.0.0.1:9", timeout=2).open()


def test_window_plays_30_frames_from_synthetic_keys(tmp_path):
    bundle = tiny_bundle(tmp_path / "bundle")
    with running_server(bundle, fps=0, max_sessions=1) as server:
        conn = Connection(server.url, encoding="raw", seed=5, ground_truth=True).open()
        sent = {}
        send = conn.send_action

        def record_send(action):
            seq = send(action)
            sent[seq] = action
            return seq

        conn.send_action = record_send
        window = GameWindow(conn, out_dir=tmp_path)
        frames = []

        def on_frame(w):
            frames.append(w.frame)
            n = w.frames_shown
            if n in SCRIPT:
                for key in w.held:
                    pygame.event.post(pygame.event.Event(pygame.KEYUP, key=key))
                pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=SCRIPT[n]))
            if n == 2:
                pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_F1))  # HUD on
            if n in (5, 25):
                pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_F9))  # record

        try:
            shown = window.run(max_frames=31, on_frame=on_frame)  # the first, real frame + 30
            shot = window.screenshot(tmp_path / "play.png")
        finally:
            conn.close()
            window.close()
    assert shown == 31 and len(frames) == 30
    assert window._temperature() == "  greedy"  # the HUD's sampler, from the welcome
    assert pygame.image.load(str(shot)).get_size() == (2 * SIZE * window.scale + 8, SIZE * window.scale)
    keep = os.environ.get("WORLDSIM_SCREENSHOT")  # set to refresh the committed docs/ image
    if keep:
        shutil.copyfile(shot, keep)

    # The keys became the actions the keymap names, one per frame, in order.
    actions = [sent[s] for s in sorted(sent)]
    names = [CRAFTER_ACTIONS[a] for a in actions]
    assert names[:1] == ["noop"] and "move_right" in names and "move_left" in names and names[-1] == "do"
    assert names.index("move_right") < names.index("move_left") < names.index("do")
    assert [f.seq for f in frames] == list(range(30)) and [f.step for f in frames] == list(range(1, 31))
    # The real game beside the dream is Crafter under exactly those actions.
    env = CrafterEnv(size=SIZE, seed=5)
    env.reset()
    for f in frames:
        real, _, _ = env.step(actions[f.seq])
        assert f.truth == real.tobytes()
    truths = [np.frombuffer(f.truth, np.uint8) for f in frames]
    assert not np.array_equal(truths[0], truths[10])  # walking right moved the view
    assert len({f.image for f in frames}) > 1  # the dream is not frozen

    # F9 twice recorded the frames between as an episode and an mp4.
    from worldsim.data.store import EpisodeStore

    store = EpisodeStore(tmp_path / "recordings")
    (eid,) = store.episode_ids()
    ep = store.load(eid)
    assert ep.frames.shape[1:] == (SIZE, SIZE, 3) and len(ep.frames) == len(ep.actions) + 1 >= 15
    assert ep.frames[0].tobytes() in {f.truth for f in frames}  # the real game's frames were kept
    assert list(tmp_path.glob("worldsim-*.mp4"))


def test_worldsim_play_runs_an_embedded_server(tmp_path, capsys):
    from worldsim.cli import main

    bundle = tiny_bundle(tmp_path / "bundle")
    gif = tmp_path / "play.gif"
    assert main(["play", "--bundle", str(bundle), "--frames", "6", "--fps", "0", "--device", "cpu",
                 "--seed", "2", "--out", str(tmp_path), "--autoplay", "--gif", str(gif)]) == 0
    out = capsys.readouterr().out
    assert "worldsim play: 6 frames from ws://127.0.0.1:" in out
    import imageio.v2 as imageio

    assert len(imageio.mimread(gif)) == 6


def test_a_gif_keeps_the_sessions_last_frames(tmp_path, capsys, monkeypatch):
    """A long session with --gif held every frame, uncompressed, until the end (--frames 0
    plays until the window closes): it now keeps the last GIF_MAX_FRAMES, and says so."""
    import imageio.v2 as imageio

    from worldsim.client import game
    from worldsim.cli import main

    monkeypatch.setattr(game, "GIF_MAX_FRAMES", 3)
    bundle = tiny_bundle(tmp_path / "bundle")
    gif = tmp_path / "play.gif"
    assert main(["play", "--bundle", str(bundle), "--frames", "6", "--fps", "0", "--device", "cpu",
                 "--seed", "2", "--out", str(tmp_path), "--autoplay", "--gif", str(gif)]) == 0
    assert f"wrote the last 3 of 6 frames to {gif}" in capsys.readouterr().out
    kept = imageio.mimread(gif)
    assert len(kept) == 3 and kept[0].shape[:2] == kept[-1].shape[:2]


def test_play_without_a_model_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from worldsim import bundle
    from worldsim.cli import main

    # This checkout ships a model: point the search at a folder that holds none.
    missing = Path("assets") / "models" / "no-such-model"
    monkeypatch.setattr(bundle, "SHIPPED", missing)
    monkeypatch.chdir(tmp_path)
    assert main(["play"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--bundle" in err and str(missing) in err


def test_minerl_window_sums_mouse_motion_between_frames(tmp_path):
    from _serving import scene_store

    bundle = tiny_bundle(tmp_path / "bundle", game="minerl")
    store = scene_store(tmp_path / "scene", game="minerl")
    with running_server(bundle, fps=0, max_sessions=1, scene=str(store)) as server:
        conn = Connection(server.url, encoding="raw").open()
        sent = []
        send = conn.send_action
        conn.send_action = lambda a: (sent.append(a), send(a))[1]
        window = GameWindow(conn, out_dir=tmp_path)
        assert window.mouse_captured  # MineRL looks with the mouse

        def on_frame(w):
            if w.frames_shown == 2:
                for e in (pygame.event.Event(pygame.KEYDOWN, key=pygame.K_w),
                          pygame.event.Event(pygame.MOUSEMOTION, rel=(10, 0), pos=(0, 0), buttons=(0, 0, 0)),
                          pygame.event.Event(pygame.MOUSEMOTION, rel=(5, -4), pos=(0, 0), buttons=(0, 0, 0)),
                          pygame.event.Event(pygame.MOUSEBUTTONDOWN, button=1, pos=(0, 0))):
                    pygame.event.post(e)

        try:
            window.run(max_frames=5, on_frame=on_frame)
        finally:
            conn.close()
            window.close()
    moved = [a for a in sent if a.get("camera", [0, 0]) != [0.0, 0.0]]
    assert len(moved) == 1  # both motion events in one action, sent once
    a = moved[0]
    assert a["forward"] == 1 and a["attack"] == 1 and a["camera"] == pytest.approx([-4 * 0.15, 15 * 0.15])
    after = sent[sent.index(a) + 1]
    assert after["forward"] == 1 and after["camera"] == [0.0, 0.0]  # held keys stay, motion is spent


@pytest.mark.parametrize("answer", ["nothing", "welcome"])
def test_a_server_that_stops_answering_gives_one_error_and_keeps_no_socket(answer):
    """No welcome, or a welcome and no first frame: `open` raises ConnectionFailed (which
    `worldsim play` prints as one line) and closes its socket and receiver."""
    import threading

    from websockets.sync.server import serve

    from worldsim import protocol as P

    ended = threading.Event()

    def handler(ws):
        ws.recv()  # the hello
        if answer == "welcome":
            ws.send(P.pack(P.Welcome(session=0, width=SIZE, height=SIZE, fps=10.0,
                                     action_space=CRAFTER_SPACE.to_dict(), encoding="jpeg",
                                     ground_truth=False, decoder="x", steps=1, decoders=["x"], seed=1)))
        for _ in ws:  # until the client goes
            pass
        ended.set()

    with serve(handler, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        with pytest.raises(ConnectionFailed, match="in time" if answer == "welcome" else "did not answer"):
            Connection(f"ws://127.0.0.1:{port}", seed=1, timeout=0.5).open()
        assert ended.wait(5)  # the client closed its socket,
        assert not any(t.name == "worldsim-client-recv" and t.is_alive() for t in threading.enumerate())  # nor its receiver
        server.shutdown()


def test_a_reset_waits_for_its_real_frame_even_under_a_newer_dreamed_one():
    """The reset's real frame may be followed by a dreamed one before the waiting thread looks:
    `wait_frame(real=True)` still finds it."""
    from worldsim import protocol as P

    conn = Connection("ws://127.0.0.1:9", timeout=1)

    def frame(i, decoder):
        return P.Frame(index=i, seq=-1, encoding="jpeg", width=SIZE, height=SIZE, image=b"", truth=None,
                       step=i, decoder=decoder, timings={})

    conn._on_frame(frame(4, "block_diffusion"))
    conn._on_frame(frame(5, None))  # the reset's frame
    conn._on_frame(frame(6, "block_diffusion"))
    assert conn.wait_frame(4, timeout=0.1, real=True).index == 5
    with pytest.raises(ConnectionFailed, match="in time"):
        conn.wait_frame(5, timeout=0.1, real=True)  # no real frame after it yet


def _welcome(fps=10.0, **kw):
    from worldsim import protocol as P

    return P.Welcome(session=0, width=SIZE, height=SIZE, fps=fps, action_space=CRAFTER_SPACE.to_dict(),
                     encoding="raw", ground_truth=False, decoder="block_diffusion", steps=4,
                     decoders=["block_diffusion"], seed=1, **kw)


def test_a_recording_keeps_the_actions_the_frames_were_made_with_and_one_game_per_episode(tmp_path):
    """Each recorded step carries the action the server applied (not the input last sent),
    and a reset or frames the window never got start another episode."""
    from worldsim import protocol as P
    from worldsim.client.game import Recorder
    from worldsim.data.store import EpisodeStore

    pygame.display.init()
    rec = Recorder(_welcome())

    def add(step, action, decoder="block_diffusion"):
        surface = pygame.Surface((SIZE, SIZE))
        surface.fill((step * 10 % 256, 0, 0))
        frame = P.Frame(index=step, seq=step, encoding="raw", width=SIZE, height=SIZE, image=b"",
                        step=step, decoder=decoder, action=action)
        rec.add(surface, None, frame, sent=0)

    for step, action in [(3, 2), (4, 5), (5, 2), (6, 2)]:  # one stretch: steps 3..6
        add(step, action)
    add(0, None, decoder=None)  # a reset's real frame
    add(1, 1)
    add(2, 1)
    add(7, 3)  # frames 3..6 never reached the window
    written = rec.stop(tmp_path)
    store = EpisodeStore(tmp_path / "recordings")
    eps = [store.load(e) for e in store.episode_ids()]
    assert rec.count == 8 and len(eps) == 2 and len(written) == 4  # the lone frame at step 7 is no episode
    assert sorted(ep.actions.tolist() for ep in eps) == [[1, 1], [5, 2, 2]]
    # Each Crafter frame records its daylight, from the game step it was shown at: without it
    # the tile tokenizer reads a night recording as day.
    from worldsim.envs.crafter import crafter_daylight

    by_actions = {tuple(ep.actions.tolist()): ep for ep in eps}
    np.testing.assert_array_equal(by_actions[(1, 1)].daylight, crafter_daylight(np.arange(0, 3)))
    np.testing.assert_array_equal(by_actions[(5, 2, 2)].daylight, crafter_daylight(np.arange(3, 7)))


class _FakeConn:
    """What the window asks of a connection, recording what it sends."""

    def __init__(self, welcome, fail_after=None):
        from collections import deque

        self.welcome, self.first_frame, self.errors = welcome, None, deque()
        self.sent, self.calls, self.fail_after = [], [], fail_after
        self.open_now, self.closed_reason = True, None

    def send_action(self, action):
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            self.open_now, self.closed_reason = False, "1001 going away"
            raise ConnectionFailed("the server closed the session: 1001 going away")
        self.sent.append(action)

    def configure(self, **kw):
        self.calls.append(("configure", kw))

    def reset(self, wait=True):
        self.calls.append(("reset", {}))

    def latest(self, timeout=0.0):
        return None

    def median_latency(self):
        return None


def test_the_window_resends_held_keys_after_a_reset_and_pausing_turns_nothing(tmp_path):
    conn = _FakeConn(_welcome())
    window = GameWindow(conn, out_dir=tmp_path)
    try:
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_d))
        window._events()
        window._send_input()
        window._send_input()  # nothing changed: nothing sent
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_F5))
        window._events()
        window._send_input()  # D is still held: said again after the reset
        assert [CRAFTER_ACTIONS[a] for a in conn.sent] == ["move_right", "move_right"]
        assert ("reset", {}) in conn.calls
        window.motion = [5.0, 0.0]
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_F8))
        window._events()
        assert window.paused and window.motion == [0.0, 0.0]
        a, b = window.screenshot(), window.screenshot()  # two in one second: both kept
        assert a != b and a.exists() and b.exists()
    finally:
        window.close()


def test_a_server_gone_mid_play_ends_the_game_with_a_line_and_errors_are_shown(tmp_path, capsys):
    from worldsim import protocol as P

    conn = _FakeConn(_welcome(), fail_after=0)
    conn.errors.append(P.Error(P.UNAVAILABLE, "no ground truth for this recorded scene"))
    window = GameWindow(conn, out_dir=tmp_path, max_fps=1000)
    try:
        window.run(max_frames=100)  # the first input finds the server gone: returns, not raises
    finally:
        window.close()
    out = capsys.readouterr().out
    assert "server: no ground truth for this recorded scene" in out
    assert "the server closed the session: 1001 going away" in out


def test_play_with_a_server_refuses_the_options_of_its_own_server(capsys):
    from worldsim.cli import main

    assert main(["play", "--server", "ws://127.0.0.1:9", "--steps", "3", "--bundle", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--bundle, --steps" in err and "worldsim serve" in err


def test_a_key_pressed_and_released_between_two_sends_is_sent_once_and_lockstep_resends(tmp_path):
    import time as _time

    conn = _FakeConn(_welcome())
    window = GameWindow(conn, out_dir=tmp_path)
    try:
        window._send_input()  # noop: the first input
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_SPACE))
        pygame.event.post(pygame.event.Event(pygame.KEYUP, key=pygame.K_SPACE))  # within one pass
        window._events()
        window._send_input()
        window._send_input()
        assert [CRAFTER_ACTIONS[a] for a in conn.sent] == ["noop", "do", "noop"]
    finally:
        window.close()
    conn = _FakeConn(_welcome(fps=0.0))  # lockstep: a frame per input
    window = GameWindow(conn, out_dir=tmp_path)
    try:
        window._send_input()
        window._send_input()  # no frame yet: waits
        assert len(conn.sent) == 1
        window.last_message = _time.monotonic() - 2.0  # a second and more without an answer
        window._send_input()
        assert len(conn.sent) == 2
    finally:
        window.close()


def test_no_display_is_one_line(tmp_path, monkeypatch, capsys):
    from worldsim.cli import main

    monkeypatch.setenv("SDL_VIDEODRIVER", "no-such-driver")
    assert main(["play", "--frames", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot open a window" in err and "SDL_VIDEODRIVER=dummy" in err


def test_a_paused_window_keeps_the_game_within_the_servers_idle_timeout(tmp_path):
    """The window sent its keep-alive every 30 s whatever the server announced: a server with
    --idle-timeout 5 closed a paused game."""
    for limits, every in (({"idle_timeout_s": 5.0}, 5.0 / 3), ({}, 30.0), ({"idle_timeout_s": 600.0}, 30.0)):
        window = GameWindow(_FakeConn(_welcome(limits=limits)), out_dir=tmp_path)
        try:
            assert window.keepalive_s == pytest.approx(every)
        finally:
            window.close()
