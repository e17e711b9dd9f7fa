"""VPT recordings -> MineRL actions and episodes: key/mouse/camera mapping, alignment, resume."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest

from worldsim.data.store import EpisodeStore, StoreError
from worldsim.data.vpt import (CAMERA_SCALE, CONFLICTS, KEY_PREFIX, KEY_TO_BUTTON, VPTWarning,
                               convert_vpt, episode_id, find_recordings, json_to_action,
                               jsonl_to_actions, read_recording, resize_frames)
from worldsim.envs.minerl_space import MINERL_FPS, MINERL_SPACE

N, H, W = 12, 64, 96
# Twelve well-separated solid colours, so each decoded frame can be told apart after H.264.
PALETTE = np.array([[(i * 23) % 256, 255 - (i * 21) % 256, (i * 67) % 256] for i in range(N)],
                   np.uint8)  # (N, 3)


def vpt_line(keys: Sequence[str] = (), buttons: Sequence[int] = (), dx: float = 0.0,
             dy: float = 0.0) -> str:
    """One JSONL line in VPT's recorder format (with fields the converter ignores)."""
    return json.dumps({
        "mouse": {"x": 640.0, "y": 360.0, "dx": dx, "dy": dy, "scaledX": 0.0, "scaledY": 0.0,
                  "dwheel": 0.0, "buttons": list(buttons), "newButtons": []},
        "keyboard": {"keys": list(keys), "newKeys": [], "chars": ""},
        "isGuiOpen": False, "isGuiInventory": False, "hotbar": 0, "yaw": 0.0, "pitch": 0.0,
        "xpos": 0.0, "ypos": 64.0, "zpos": 0.0, "tick": 0, "milli": 0, "inventory": [],
        "serverTick": 0, "serverTickDurationMs": 50.0, "stats": {},
    })


def act(**kw: Any) -> dict[str, Any]:
    return json_to_action(json.loads(vpt_line(**kw)))


def pressed(action: dict[str, Any]) -> set[str]:
    return {b for b in MINERL_SPACE.buttons if action[b]}


def write_mp4(path: Path, n: int = N) -> np.ndarray:
    import imageio.v3 as iio

    frames = np.broadcast_to(PALETTE[:n, None, None, :], (n, H, W, 3)).copy()  # (n, H, W, 3)
    iio.imwrite(path, frames, plugin="FFMPEG", fps=MINERL_FPS)
    return frames


def write_jsonl(path: Path, n: int = N, bad_line: int | None = None) -> None:
    """Line i moves the mouse by dx = 24*i (yaw 3.6*i deg): it tells which line an action is."""
    lines = [vpt_line(keys=["key.keyboard.w"] if i % 2 else [], dx=24 * i) for i in range(n)]
    if bad_line is not None:
        lines[bad_line] = '{"mouse": {"dx": 1,'
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("rec")
    write_mp4(d / "r.mp4")
    write_jsonl(d / "r.jsonl")
    return d / "r.mp4", d / "r.jsonl"


def assert_colours(frames: np.ndarray, n: int) -> None:
    """frames (n, h, w, 3): frame i is (close to) palette colour i."""
    assert frames.shape[0] == n
    means = frames.reshape(n, -1, 3).mean(1)  # (n, 3)
    np.testing.assert_allclose(means, PALETTE[:n], atol=8)


# -- keyboard and mouse -------------------------------------------------------------------------
@pytest.mark.parametrize("key,button", sorted(KEY_TO_BUTTON.items()))
@pytest.mark.parametrize("prefix", ["key.keyboard.", ""])
def test_each_key_maps_to_its_button(prefix: str, key: str, button: str) -> None:
    a = act(keys=[prefix + key])
    assert pressed(a) == {button}
    assert a["camera"] == [0.0, 0.0]


def test_key_table_is_the_documented_one() -> None:
    want = {"w": "forward", "s": "back", "a": "left", "d": "right", "space": "jump",
            "left.shift": "sneak", "left.control": "sprint", "q": "drop", "e": "inventory",
            "f": "swapHands", "escape": "ESC", **{str(i): f"hotbar.{i}" for i in range(1, 10)}}
    assert KEY_TO_BUTTON == want
    assert set(want.values()) | {"attack", "use", "pickItem"} == set(MINERL_SPACE.buttons)


@pytest.mark.parametrize("mouse,button", [(0, "attack"), (1, "use"), (2, "pickItem")])
def test_mouse_buttons(mouse: int, button: str) -> None:
    assert pressed(act(buttons=[mouse])) == {button}


def test_unknown_inputs_are_ignored_and_action_is_complete() -> None:
    a = act(keys=["key.keyboard.t", "key.keyboard.right.shift", "key.keyboard.0"], buttons=[3, 4])
    assert pressed(a) == set()
    assert set(a) == set(MINERL_SPACE.noop())
    assert all(isinstance(a[b], int) for b in MINERL_SPACE.buttons)


@pytest.mark.parametrize("pair", CONFLICTS)
def test_each_conflicting_pair_is_zeroed(pair: tuple[str, str]) -> None:
    inv = {v: k for k, v in KEY_TO_BUTTON.items()}
    mouse_inv = {"attack": 0, "use": 1}
    keys = ["key.keyboard.1"] + [KEY_PREFIX + inv[b] for b in pair if b in inv]
    buttons = [mouse_inv[b] for b in pair if b in mouse_inv]
    a = act(keys=keys, buttons=buttons)
    assert pressed(a) == {"hotbar.1"}  # the pair cancels, the unrelated key stays
    # Either half alone is kept.
    for b in pair:
        one = act(keys=[KEY_PREFIX + inv[b]] if b in inv else [],
                  buttons=[mouse_inv[b]] if b in mouse_inv else [])
        assert pressed(one) == {b}


def test_conflicts_listed() -> None:
    assert set(CONFLICTS) == {("forward", "back"), ("left", "right"), ("jump", "sneak"),
                              ("sprint", "sneak"), ("attack", "use")}


def test_conflicts_are_judged_one_after_another_as_mineworld_does() -> None:
    """jump+sneak cancel first; sneak is then off, so sprint no longer conflicts and stays
    (MineWorld's loader cancels the pairs in this order; judging all pairs on the presses
    zeroed sprint too, and gave other tokens for such frames)."""
    a = act(keys=["key.keyboard.space", "key.keyboard.left.shift", "key.keyboard.left.control",
                  "key.keyboard.w"])
    assert pressed(a) == {"forward", "sprint"}
    b = act(keys=["key.keyboard.left.shift", "key.keyboard.left.control"])
    assert pressed(b) == set()  # sprint+sneak alone still cancel


@pytest.mark.parametrize("mouse", [{"dx": float("nan")}, {"dy": float("inf")}, {"dx": 1e306},
                                   {"dx": "12"}, {"dy": True}, {"buttons": [1e400]},
                                   {"buttons": [0.7]}, {"buttons": [float("nan")]}])
def test_a_mouse_that_is_not_finite_numbers_is_refused(mouse) -> None:
    """Such a line made a NaN or infinite camera that was stored without a word (tokenize
    failed on it later, naming no episode), or an OverflowError that escaped the skip."""
    for integer in (False, True):
        with pytest.raises(ValueError, match="mouse"):
            json_to_action({"mouse": mouse}, integer_camera=integer)


def test_a_line_that_is_not_utf8_names_its_place() -> None:
    lines = [b'{"keyboard": {"keys": []}}', b'\xff\xfe{"mouse": {}}']
    with pytest.raises(ValueError, match="<lines>:2: bad JSON"):
        jsonl_to_actions(lines)


# -- camera -----------------------------------------------------------------------------------
def test_camera_scale_and_order() -> None:
    assert CAMERA_SCALE == 360.0 / 2400.0
    a = act(dx=240, dy=-24)
    assert a["camera"] == [-3.6, 36.0]  # [pitch, yaw]
    b = act(dx=10, dy=-10)
    assert b["camera"] == [-1.5, 1.5]
    assert all(isinstance(v, float) for v in b["camera"])


def test_integer_camera_truncates_toward_zero() -> None:
    line = json.loads(vpt_line(dx=10, dy=-10))  # 1.5 and -1.5 degrees
    assert json_to_action(line, integer_camera=True)["camera"] == [-1.0, 1.0]
    line = json.loads(vpt_line(dx=240, dy=-24))  # 36 and -3.6 degrees
    assert json_to_action(line, integer_camera=True)["camera"] == [-3.0, 36.0]
    line = json.loads(vpt_line(dx=6.0, dy=-6.0))  # 0.9 and -0.9 degrees
    assert json_to_action(line, integer_camera=True)["camera"] == [0.0, 0.0]
    out = jsonl_to_actions([vpt_line(dx=17)], integer_camera=True)  # 2.55 -> 2
    assert out[0]["camera"] == [0.0, 2.0]


# -- jsonl ------------------------------------------------------------------------------------
def test_jsonl_from_path_and_lines(tmp_path: Path) -> None:
    lines = [vpt_line(keys=["key.keyboard.w"]), "", vpt_line(buttons=[0], dx=240)]
    p = tmp_path / "x.jsonl"
    p.write_text("\n".join(lines) + "\n\n")
    for src in (p, str(p), lines):
        out = jsonl_to_actions(src)
        assert [pressed(a) for a in out] == [{"forward"}, {"attack"}]
        assert out[1]["camera"] == [0.0, 36.0]
    arr = MINERL_SPACE.to_array(out)  # (2, 25)
    assert arr.shape == (2, MINERL_SPACE.width) and arr[1, -1] == np.float32(36.0)


def test_bad_json_line_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text(vpt_line() + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        jsonl_to_actions(p)
    with pytest.raises(ValueError, match=":1"):
        jsonl_to_actions([json.dumps({"keyboard": {"keys": "w"}})])


# -- frames -----------------------------------------------------------------------------------
def test_read_recording_native_size(recording: tuple[Path, Path]) -> None:
    frames, actions = read_recording(*recording, size=None)
    assert frames.dtype == np.uint8 and frames.shape == (N, H, W, 3)
    assert len(actions) == N
    assert_colours(frames, N)
    assert [a["camera"][1] for a in actions] == pytest.approx([3.6 * i for i in range(N)])


def test_read_recording_resizes(recording: tuple[Path, Path]) -> None:
    frames, actions = read_recording(*recording, size=(32, 40))
    assert frames.shape == (N, 32, 40, 3) and frames.dtype == np.uint8
    assert_colours(frames, N)
    up = resize_frames(frames[:2], (48, 80))  # (2, 48, 80, 3)
    assert up.shape == (2, 48, 80, 3)
    assert resize_frames(frames, (32, 40)) is frames


def test_length_mismatch_uses_shorter(tmp_path: Path, recording: tuple[Path, Path]) -> None:
    mp4, _ = recording
    short = tmp_path / "short.jsonl"
    write_jsonl(short, n=N - 3)
    with pytest.warns(VPTWarning, match="more frames"):
        frames, actions = read_recording(mp4, short, size=None)
    assert len(frames) == len(actions) == N - 3
    assert_colours(frames, N - 3)
    long = tmp_path / "long.jsonl"
    write_jsonl(long, n=N + 4)
    with pytest.warns(VPTWarning, match="fewer frames"):
        frames, actions = read_recording(mp4, long, size=None)
    assert len(frames) == len(actions) == N


# -- folders and conversion -------------------------------------------------------------------
def test_find_recordings_pairs_and_warns(tmp_path: Path) -> None:
    for name in ("b", "a"):
        (tmp_path / f"{name}.mp4").write_bytes(b"x")
        (tmp_path / f"{name}.jsonl").write_text("")
    (tmp_path / "lonely.mp4").write_bytes(b"x")
    (tmp_path / "orphan.jsonl").write_text("")
    with pytest.warns(VPTWarning) as rec:
        found = find_recordings(tmp_path)
    assert [n for n, _, _ in found] == ["a", "b"]
    assert found[0][1] == tmp_path / "a.mp4" and found[0][2] == tmp_path / "a.jsonl"
    text = " ".join(str(w.message) for w in rec)
    assert "lonely" in text and "orphan" in text


def test_episode_id_sanitised() -> None:
    assert episode_id("cheeky-cornflower-setter-02e496ce4abb-20220421-092639") == \
        "cheeky-cornflower-setter-02e496ce4abb-20220421-092639"
    assert episode_id("my rec (1)") == "my_rec__1_"
    assert episode_id("-x") == "v-x"


@pytest.fixture(scope="module")
def src_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("vpt")
    for name in ("good 1", "good2"):
        write_mp4(d / f"{name}.mp4")
        write_jsonl(d / f"{name}.jsonl")
    (d / "corrupt.mp4").write_bytes(b"\x00not an mp4" * 64)
    write_jsonl(d / "corrupt.jsonl")
    write_mp4(d / "badjson.mp4")
    write_jsonl(d / "badjson.jsonl", bad_line=5)
    return d


def test_convert_aligns_and_skips_bad(tmp_path: Path, src_dir: Path) -> None:
    out = tmp_path / "store"
    with pytest.warns(VPTWarning) as rec:
        s = convert_vpt(src_dir, out, size=(32, 48), progress=False)
    text = " ".join(str(w.message) for w in rec)
    assert "'corrupt'" in text and "'badjson'" in text
    assert (s["episodes"], s["skipped"], s["failed"], s["frames"]) == (2, 0, 2, 2 * N)
    assert s["mb"] > 0 and s["seconds"] >= 0 and set(s) == {"episodes", "skipped", "failed",
                                                            "frames", "mb", "seconds"}

    store = EpisodeStore(out)
    assert store.episode_ids() == ["good2", "good_1"]
    assert store.info.env == "minerl" and store.info.action_space == MINERL_SPACE
    assert store.info.frame_size == (32, 48) and store.info.fps == MINERL_FPS
    assert (store.info.episodes, store.info.frames) == (2, 2 * N)
    assert store.info.source["kind"] == "vpt" and store.info.source["integer_camera"] is False
    ep = store.load("good2")
    assert ep.frames.shape == (N, 32, 48, 3) and ep.actions.shape == (N - 1, MINERL_SPACE.width)
    assert_colours(ep.frames, N)
    # Action i comes from JSONL line i (yaw 3.6*i, forward on odd lines); line N-1 is dropped.
    np.testing.assert_allclose(ep.actions[:, -1], [3.6 * i for i in range(N - 1)], rtol=1e-6)
    fwd = MINERL_SPACE.buttons.index("forward")
    assert ep.actions[:, fwd].tolist() == [float(i % 2) for i in range(N - 1)]
    assert MINERL_SPACE.from_array(ep.actions, 1)["forward"] == 1


def test_convert_resumes(tmp_path: Path, src_dir: Path) -> None:
    out = tmp_path / "store"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VPTWarning)
        first = convert_vpt(src_dir, out, size=(32, 48), progress=False)
        mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "episodes").glob("*.npz")}
        again = convert_vpt(src_dir, out, size=(32, 48), progress=False)
    assert first["episodes"] == 2
    assert (again["episodes"], again["skipped"], again["failed"], again["frames"]) == (0, 2, 2, 0)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "episodes").glob("*.npz")} == mtimes

    # A torn episode file is redone; the intact one is kept.
    torn = out / "episodes" / "good2.npz"
    torn.write_bytes(torn.read_bytes()[:100])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VPTWarning)
        third = convert_vpt(src_dir, out, size=(32, 48), progress=False)
    assert (third["episodes"], third["skipped"]) == (1, 1)
    assert EpisodeStore(out).load("good2").frames.shape == (N, 32, 48, 3)


def test_convert_integer_camera(tmp_path: Path, src_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VPTWarning)
        convert_vpt(src_dir, tmp_path / "s", size=(32, 48), integer_camera=True, progress=False)
    ep = EpisodeStore(tmp_path / "s").load("good_1")
    assert ep.actions[:, -1].tolist() == [float(24 * i * 360 // 2400) for i in range(N - 1)]
    with pytest.raises(StoreError, match="integer_camera"), warnings.catch_warnings():
        warnings.simplefilter("ignore", VPTWarning)
        convert_vpt(src_dir, tmp_path / "s", size=(32, 48), integer_camera=False, progress=False)


def test_collect_into_a_store_of_the_other_camera_rule_is_one_line(tmp_path: Path, src_dir: Path, capsys) -> None:
    from worldsim.cli import main

    args = ["collect", "--from-vpt", str(src_dir), "--out", str(tmp_path / "s"), "--size", "32x48", "--no-progress"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VPTWarning)
        assert main(args + ["--integer-camera"]) == 0
        capsys.readouterr()
        assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "integer_camera=True" in err and "Traceback" not in err
