"""Collection, recordings and the inverse dynamics model: resume, interruption and labelling."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from worldsim.cli import main
from worldsim.data.collect import check_replayable, collect_crafter
from worldsim.data.store import EpisodeStore, StoreError
from worldsim.envs.crafter import CRAFTER_SPACE


def _workers(pid: int) -> list[int]:
    """The multiprocessing workers `pid` started (Linux), not its resource tracker."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            out.append(int(stat.parent.name))
    return out


def _start_collect(out: Path, episodes: int) -> tuple[subprocess.Popen, list[int]]:
    """`worldsim collect` on 2 workers, once its first episode is written, and its workers."""
    cmd = [sys.executable, "-m", "worldsim", "collect", "--episodes", str(episodes), "--steps", "200",
           "--out", str(out), "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("episodes/*.npz")):
        time.sleep(0.05)
    assert list(out.glob("episodes/*.npz")), "no episode was written"
    workers = _workers(proc.pid)
    assert len(workers) == 2
    return proc, workers


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_collect_refuses_a_store_it_did_not_collect(tmp_path):
    """Collecting into a store of `worldsim play` recordings (Crafter, 72x72) added episodes
    000000.. beside the recordings, under the recordings' source: the collection's seed was never
    recorded, so the collected episodes could not be replayed either."""
    from worldsim.data.recording import write_recording

    frames = [np.full((72, 72, 3), i, np.uint8).tobytes() for i in range(3)]
    write_recording(tmp_path, frames, 72, 72, [1, 2], CRAFTER_SPACE.to_dict(), 10,
                    {"recorder": "worldsim play", "real": False})
    rec = tmp_path / "recordings"
    before = sorted(p.name for p in (rec / "episodes").iterdir())
    with pytest.raises(StoreError, match="did not collect"):
        collect_crafter(rec, 1, 5, seed=0, progress=False)
    assert sorted(p.name for p in (rec / "episodes").iterdir()) == before
    assert "seed" not in json.loads((rec / "dataset.json").read_text())["source"]
    # a store it did collect still resumes, and replays
    collect_crafter(tmp_path / "c", 1, 5, seed=0, progress=False)
    assert collect_crafter(tmp_path / "c", 2, 5, seed=0, progress=False)["episodes"] == 1
    check_replayable(EpisodeStore(tmp_path / "c"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers in /proc")
def test_ctrl_c_during_a_pool_prints_one_line(tmp_path):
    """Ctrl-C reaches the workers as well as the main process: each worker died with a
    traceback of its own ("Process SpawnPoolWorker-1: Traceback ...") around the one line."""
    out = tmp_path / "c"
    proc, workers = _start_collect(out, 40)
    try:
        for pid in workers:  # the terminal's Ctrl-C, as it reaches the workers
            os.kill(pid, signal.SIGINT)
        deadline = time.time() + 3  # a worker that dies of it does so at once
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # and the main process
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert err.decode().strip().splitlines() == [
        "worldsim collect: interrupted; finished work is kept, run again to resume"]
    store = EpisodeStore(out)
    assert store.info.episodes == len(store.episode_ids()) >= 1
    assert not list((out / "episodes").glob(".*"))  # no temporaries left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers in /proc")
def test_a_worker_killed_ends_the_collection_with_one_line(tmp_path):
    """A worker killed (the out-of-memory killer, say) lost its episode inside
    multiprocessing.Pool, which then waited for it forever: collect hung."""
    out = tmp_path / "c"
    proc, workers = _start_collect(out, 8)
    try:
        os.kill(workers[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # hung
            proc.kill()
            proc.wait()
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "worker died" in lines[0] and "run again to resume" in lines[0], lines
    store = EpisodeStore(out)
    assert store.info.episodes == len(store.episode_ids()) >= 1
    assert not list((out / "episodes").glob(".*"))
    assert not any(_alive(p) for p in workers)
    s = collect_crafter(out, 8, 200, seed=0, progress=False)  # and it resumes
    assert s["store_episodes"] == 8


def test_recordings_of_another_kind_go_to_their_own_store(tmp_path):
    """OUT/recordings took the first session's frame size and source for good: a session at
    another size was refused at its end (its recording lost), and a recording of dreamed frames
    was filed under a source saying the frames were the real game's."""
    from worldsim.data.recording import write_recording

    def record(size: int, real: bool) -> Path:
        frames = [np.full((size, size, 3), i, np.uint8).tobytes() for i in range(3)]
        written = write_recording(tmp_path, frames, size, size, [1, 2], CRAFTER_SPACE.to_dict(), 10,
                                  {"recorder": "worldsim play", "real": real})
        return written[0].parent.parent  # the store

    real72 = record(72, True)
    assert real72 == tmp_path / "recordings"
    dream72 = record(72, False)
    small = record(36, True)
    assert record(72, True) == real72 and record(72, False) == dream72  # the same kind: one store
    assert len({real72, dream72, small}) == 3
    for root, real, size, n in ((real72, True, 72, 2), (dream72, False, 72, 2), (small, True, 36, 1)):
        store = EpisodeStore(root)
        assert store.info.source["real"] is real and store.info.frame_size == (size, size)
        assert store.info.episodes == len(store.validate()[0]) == n


def test_idm_resume_on_another_split_or_store_is_refused(crafter_store, tmp_path, capsys):
    """Resumed with another --val-fraction (or --data), the IDM went on training on episodes
    that were held out before and was then scored on episodes it had trained on."""
    import shutil

    from worldsim.idm import IDMTrainSettings, train_idm

    capsys.readouterr()
    other = tmp_path / "other"
    shutil.copytree(crafter_store, other)
    out = tmp_path / "idm"
    args = ["train-idm", "--out", str(out), "--steps", "2", "--batch", "4", "--channels", "8",
            "--no-progress"]
    assert main(args + ["--data", str(crafter_store), "--val-fraction", "0.3"]) == 0
    for extra, says in ((["--data", str(crafter_store), "--val-fraction", "0.6"],
                         "was trained with --val-fraction 0.3; resume it with --val-fraction 0.3"),
                        (["--data", str(other), "--val-fraction", "0.3"],
                         f"was trained with --data {crafter_store}")):
        assert main(args + extra) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
    assert json.loads((out / "config.json").read_text())["idm_metrics"]["steps"] == 2  # untouched
    # the same split resumes; so does the same store named by another path
    rel = os.path.relpath(crafter_store)
    r = train_idm(rel, out, IDMTrainSettings(steps=3, batch=4, val_fraction=0.3), channels=8, progress=False)
    assert r["steps"] == 3


@pytest.mark.parametrize("flag", [["--episodes", "3"], ["--steps", "50"], ["--seed", "4"],
                                  ["--workers", "1"], ["--idle-do", "0.05"]])
def test_collect_from_vpt_refuses_the_options_of_playing_crafter(tmp_path, capsys, flag):
    """--from-vpt converts every recording as it is: --seed, --steps, --episodes, --workers and
    --idle-do were accepted and silently ignored."""
    src = tmp_path / "vpt"
    src.mkdir()
    (src / "a.mp4").write_bytes(b"")
    (src / "a.jsonl").write_text("")
    assert main(["collect", "--from-vpt", str(src), "--out", str(tmp_path / "o"), "--no-progress",
                 *flag]) == 2
    err = capsys.readouterr().err
    assert f"{flag[0]} applies to playing Crafter" in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()  # refused before anything was read or made


def test_collect_crafter_defaults_are_unchanged(tmp_path, monkeypatch):
    import worldsim.data.collect as collect_mod

    seen = {}

    def fake(out, episodes, steps, seed=0, size=72, workers=1, progress=True, idle_do=0.0):
        seen.update(episodes=episodes, steps=steps, seed=seed, size=size, workers=workers, idle_do=idle_do)
        return {"episodes": 0, "skipped": episodes, "store_episodes": 0, "store_frames": 0}

    monkeypatch.setattr(collect_mod, "collect_crafter", fake)
    assert main(["collect", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert seen == {"episodes": 20, "steps": 200, "seed": 0, "size": 72,
                    "workers": min(4, os.cpu_count() or 1), "idle_do": 0.0}


@pytest.mark.parametrize("size", ["64x95", "36", "100x60"])
def test_collect_from_vpt_refuses_a_size_no_tokenizer_reads(size, tmp_path, capsys):
    """A 64x95 store converted fine, then every image tokenizer refused it (8-pixel patches):
    hours of conversion for frames nothing reads."""
    from _cli import one_line_error

    (tmp_path / "vpt").mkdir()
    line = one_line_error(["collect", "--from-vpt", str(tmp_path / "vpt"), "--size", size,
                           "--out", str(tmp_path / "o")], capsys)
    assert "multiples of 8" in line and not (tmp_path / "o").exists()
