import json
import warnings

import numpy as np
import pytest

from worldsim.data.store import (CorruptEpisodeWarning, EpisodeStore, StoreError)
from worldsim.envs.crafter import CRAFTER_SPACE
from worldsim.envs.minerl_space import MINERL_SPACE
from worldsim.fileio import atomic_save_npz


def make_store(tmp_path, n=4, t=5, size=(8, 8)):
    store = EpisodeStore.create(tmp_path / "s", env="crafter", action_space=CRAFTER_SPACE,
                                frame_size=size, fps=10)
    rng = np.random.default_rng(1)
    for i in range(n):
        frames = rng.integers(0, 256, (t + 1, *size, 3), dtype=np.uint8)
        actions = rng.integers(0, 17, t).astype(np.int16)
        store.write_episode(f"{i:06d}", frames, actions, daylight=np.linspace(1, 0, t + 1))
    store.refresh()
    return store


def test_round_trip_and_metadata(tmp_path):
    store = make_store(tmp_path)
    meta = json.loads((store.root / "dataset.json").read_text())
    assert meta["episodes"] == 4 and meta["frames"] == 24 and meta["env"] == "crafter"
    assert meta["frame_size"] == [8, 8] and meta["fps"] == 10
    reopened = EpisodeStore(store.root)
    assert reopened.info.action_space == CRAFTER_SPACE
    ep = reopened.load("000002")
    assert ep.frames.shape == (6, 8, 8, 3) and ep.frames.dtype == np.uint8
    assert ep.actions.shape == (5,) and ep.actions.dtype == np.int16
    assert ep.daylight is not None and ep.daylight[0] == pytest.approx(1.0)


def test_truncated_episode_is_skipped_with_warning(tmp_path):
    store = make_store(tmp_path)
    bad = store.episode_path("000001")
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # as if a copy was cut short
    with pytest.warns(CorruptEpisodeWarning, match="000001"):
        ids = [ep.id for ep in store.iter_episodes()]
    assert ids == ["000000", "000002", "000003"]
    assert not store.has_valid("000001") and store.has_valid("000000")
    assert store.refresh().episodes == 3


def test_a_lone_npy_array_under_an_episode_name_is_skipped_with_warning(tmp_path):
    """np.load gives a plain array for an .npy file, which the loader took for an archive: a
    TypeError stopped every command that read the store."""
    store = make_store(tmp_path)
    with open(store.episode_path("000001"), "wb") as f:
        np.save(f, np.zeros((6, 8, 8, 3), np.uint8))
    with pytest.warns(CorruptEpisodeWarning, match="000001.*not an .npz archive"):
        ids = [ep.id for ep in store.iter_episodes()]
    assert ids == ["000000", "000002", "000003"]
    assert not store.has_valid("000001")


def test_wrong_shapes_are_corrupt(tmp_path):
    store = make_store(tmp_path)
    atomic_save_npz(store.episode_path("000009"), frames=np.zeros((3, 8, 8, 3), np.uint8),
                    actions=np.zeros(7, np.int16))
    with pytest.warns(CorruptEpisodeWarning, match="000009.*actions"):
        assert len(list(store.iter_episodes())) == 4


def test_split_is_deterministic_disjoint_and_stable(tmp_path):
    store = make_store(tmp_path, n=40, t=1)
    train, val = store.split(0.2)
    assert set(train).isdisjoint(val) and sorted(train + val) == store.episode_ids()
    assert 0 < len(val) < 40
    assert store.split(0.2) == (train, val)
    # An episode keeps its side when the store grows.
    _, val_more = store.split(0.2, ids=store.episode_ids() + [f"x{i}" for i in range(50)])
    assert set(val) <= set(val_more)


def test_incompatible_reopen_and_bad_folder(tmp_path):
    make_store(tmp_path)
    with pytest.raises(StoreError, match="already holds a crafter store at 8x8"):
        EpisodeStore.create(tmp_path / "s", env="crafter", action_space=CRAFTER_SPACE,
                            frame_size=(72, 72), fps=10)
    with pytest.raises(StoreError, match="no dataset.json"):
        EpisodeStore(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "dataset.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        EpisodeStore(tmp_path / "junk")


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    store = make_store(tmp_path, n=1)

    def boom(f, **arrays):
        f.write(b"PK partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(OSError):
        store.write_episode("000005", np.zeros((2, 8, 8, 3), np.uint8), np.zeros(1, np.int16))
    assert not store.episode_path("000005").exists()
    assert not list((store.root / "episodes").glob(".*"))


def test_dict_action_space_on_disk(tmp_path):
    store = EpisodeStore.create(tmp_path / "m", env="minerl", action_space=MINERL_SPACE,
                                frame_size=(8, 8), fps=20)
    acts = [MINERL_SPACE.noop(), {**MINERL_SPACE.noop(), "forward": 1, "camera": [1.5, -3.0]}]
    arr = MINERL_SPACE.to_array(acts)
    assert arr.shape == (2, len(MINERL_SPACE.buttons) + 2) and arr.dtype == np.float32
    store.write_episode("rec", np.zeros((3, 8, 8, 3), np.uint8), arr)
    ep = store.load("rec")
    assert MINERL_SPACE.from_array(ep.actions, 1) == acts[1]
    with pytest.raises(ValueError, match="unknown minerl action keys"):
        MINERL_SPACE.to_array([{"fly": 1}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(store.iter_episodes())) == 1


def test_files_get_the_users_umask(tmp_path):
    """mkstemp makes 0600 files; a written file gets what any new file would: 0666 less umask."""
    import os

    from worldsim.fileio import atomic_write_json

    old = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        store = make_store(tmp_path, n=1)
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    assert store.episode_path("000000").stat().st_mode & 0o777 == 0o640


def test_signals_wait_until_the_file_is_in_place(tmp_path):
    """Ctrl-C (twice) during an atomic write is delivered once the file is renamed into place."""
    import os
    import signal

    from worldsim.fileio import atomic_open

    with pytest.raises(KeyboardInterrupt):
        with atomic_open(tmp_path / "f.bin") as f:
            f.write(b"first half ")
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            f.write(b"second half")
    assert (tmp_path / "f.bin").read_bytes() == b"first half second half"
    assert not list(tmp_path.glob(".*.tmp"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_two_recordings_in_one_second_are_both_kept(tmp_path, monkeypatch):
    from worldsim.data import recording
    from worldsim.data.recording import write_recording

    monkeypatch.setattr(recording.time, "strftime", lambda fmt: "20261207-083000")  # one second
    frames = [np.full((8, 8, 3), i, np.uint8).tobytes() for i in range(3)]
    written = [write_recording(tmp_path, frames, 8, 8, [1, 2], CRAFTER_SPACE.to_dict(), 10, {"kind": "test"})
               for _ in range(2)]
    store = EpisodeStore(tmp_path / "recordings")
    assert len(store.episode_ids()) == 2 and store.info.episodes == 2
    assert len({p for w in written for p in w}) == sum(len(w) for w in written)  # no file written twice


def test_an_atomic_write_flushes_the_file_and_then_its_folder(tmp_path, monkeypatch):
    """The rename that makes a write atomic is on disk only once the folder is: without the
    folder's fsync a power cut could leave the old file, or none, after a checkpoint "saved"."""
    import os
    import stat

    from worldsim import fileio

    kinds = []
    real = os.fsync

    def seen(fd):
        kinds.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        return real(fd)

    monkeypatch.setattr(fileio.os, "fsync", seen)
    fileio.atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert kinds == ["file", "dir"] and (tmp_path / "x.json").read_text().startswith("{")


def test_an_episode_with_daylight_the_game_never_draws_is_corrupt(tmp_path):
    store = make_store(tmp_path, n=3)
    ep = store.load("000001")
    for bad in (np.nan, 1.5, -0.25):
        light = np.asarray(ep.daylight, np.float32).copy()
        light[2] = bad
        with pytest.raises(ValueError, match=r"daylight must lie in \[0, 1\]"):
            store.write_episode("000009", ep.frames, ep.actions, daylight=light)
    # Written past the check (another program, a bad disk): loaders skip it with a warning.
    light = np.asarray(ep.daylight, np.float32).copy()
    light[2] = np.nan
    atomic_save_npz(store.episode_path("000001"), frames=ep.frames, actions=ep.actions, daylight=light)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = [e.id for e in store.iter_episodes()]
    assert ids == ["000000", "000002"]
    assert any(issubclass(w.category, CorruptEpisodeWarning) and "000001" in str(w.message) for w in caught)
