import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from worldsim.cli import main
from worldsim.data.collect import collect_crafter
from worldsim.data.store import EpisodeStore
from worldsim.envs.crafter import CrafterEnv, ExplorerPolicy


def test_collected_store_is_valid(crafter_store):
    store = EpisodeStore(crafter_store)
    good, bad = store.validate()
    assert len(good) == 6 and not bad
    ep = store.load(good[0])
    assert ep.frames.shape[1:] == (72, 72, 3)
    assert ep.daylight is not None and ep.daylight.shape == (ep.frames.shape[0],)
    assert ((ep.daylight >= 0) & (ep.daylight <= 1)).all()
    assert store.info.episodes == 6


def test_collection_is_deterministic_and_resumes(tmp_path, crafter_store):
    # Same (seed, index) -> same episode, so a resumed run writes what a single run would.
    collect_crafter(tmp_path / "a", episodes=2, steps=40, seed=3, progress=False)
    a = EpisodeStore(tmp_path / "a").load("000001")
    b = EpisodeStore(crafter_store).load("000001")
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.actions, b.actions)
    before = os.stat(EpisodeStore(tmp_path / "a").episode_path("000000")).st_mtime_ns
    s = collect_crafter(tmp_path / "a", episodes=3, steps=40, seed=3, progress=False)
    assert s["episodes"] == 1 and s["skipped"] == 2 and s["store_episodes"] == 3
    assert os.stat(EpisodeStore(tmp_path / "a").episode_path("000000")).st_mtime_ns == before


def test_explorer_moves_in_runs_and_works_what_it_faces():
    env = CrafterEnv(size=72, seed=1)
    env.reset()
    policy = ExplorerPolicy(seed=0)
    actions = []
    for _ in range(300):
        a = policy(env)
        actions.append(a)
        _, done, _ = env.step(a)
        if done:
            break
    actions = np.array(actions)
    moves = np.isin(actions, [1, 2, 3, 4])
    # Runs of the same move: consecutive moves repeat far more often than chance (1/4).
    same = (actions[1:] == actions[:-1])[moves[1:] & moves[:-1]]
    assert same.mean() > 0.5
    assert (actions == 5).sum() > 5  # it works trees, stone, water, creatures


def _facing_and_actions(p_idle_do: float, steps: int = 100, games: int = 4
                        ) -> tuple[list[str | None], np.ndarray]:
    """What the player faced (None: a creature) and the policy's action, over a few games."""
    facing, actions = [], []
    for seed in range(games):
        env = CrafterEnv(size=72, seed=seed)
        env.reset()
        policy = ExplorerPolicy(seed=seed, p_idle_do=p_idle_do)
        for _ in range(steps):
            material, creature = env.facing()
            facing.append(None if creature else material)
            actions.append(policy(env))
            if env.step(actions[-1])[1]:
                break
    return facing, np.array(actions)


def test_explorer_presses_do_where_nothing_changes_only_when_asked():
    """Without p_idle_do, `do` is never pressed facing grass, sand or path (so a model trained
    on such data never learns that it does nothing there); with it, about that often."""
    boring = {"grass", "sand", "path"}
    facing, actions = _facing_and_actions(0.0)
    at_boring = np.array([f in boring for f in facing])
    assert at_boring.sum() > 100 and not (actions[at_boring] == 5).any()
    facing, actions = _facing_and_actions(0.2)
    at_boring = np.array([f in boring for f in facing])
    share = (actions[at_boring] == 5).mean()
    assert 0.1 < share < 0.3, share


def test_cli_rerun_adds_nothing(tmp_path, capsys):
    args = ["collect", "--episodes", "2", "--steps", "15", "--out", str(tmp_path / "c"),
            "--workers", "1", "--no-progress"]
    assert main(args) == 0
    assert "collected 2 episodes" in capsys.readouterr().out
    assert main(args) == 0
    assert "nothing to do: 2 episodes already" in capsys.readouterr().out
    assert len(EpisodeStore(tmp_path / "c")) == 2


def test_cli_bad_size_is_one_line_error(tmp_path, capsys):
    assert main(["collect", "--size", "70", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "multiple of 9" in err


def test_resume_with_other_steps_seed_or_size_is_refused(tmp_path, capsys):
    """Episode i is fixed by (seed, i) at a length: another --steps, --seed or --size would mix
    two collections in one store."""
    base = ["collect", "--episodes", "1", "--steps", "5", "--out", str(tmp_path / "c"),
            "--workers", "1", "--no-progress"]
    assert main(base) == 0
    capsys.readouterr()
    for extra, says in ((["--steps", "6"], "was collected with --steps 5; resume it with --steps 5"),
                        (["--seed", "1"], "was collected with --seed 0; resume it with --seed 0"),
                        (["--size", "81"], "already holds a crafter store at 72x72; cannot add crafter at 81x81"),
                        (["--idle-do", "0.05"], "was collected with --idle-do 0.0; resume it with --idle-do 0.0")):
        assert main(base + extra + ["--episodes", "2"]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1
    assert len(EpisodeStore(tmp_path / "c")) == 1  # nothing was added


def test_killed_collection_resumes_without_corrupt_files(tmp_path):
    out = tmp_path / "k"
    cmd = [sys.executable, "-m", "worldsim", "collect", "--episodes", "12", "--steps", "60",
           "--out", str(out), "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        if len(list((out / "episodes").glob("*.npz"))) >= 3 if (out / "episodes").exists() else False:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list((out / "episodes").glob("*.npz")))
    assert 3 <= done_before < 12
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = EpisodeStore(out)
    good, bad = store.validate()
    assert len(good) == 12 and not bad
    assert not list((out / "episodes").glob(".*"))  # no temporaries left
    assert store.info.episodes == 12


def test_stores_collected_with_another_idle_do_are_not_the_same_collection(tmp_path):
    """The eval tells a model's training store by how it was collected: the same seed with
    another --idle-do plays other episodes under the same ids."""
    from worldsim.evaluation.episodes import _same_collection

    collect_crafter(tmp_path / "a", 1, 5, seed=0, progress=False)
    collect_crafter(tmp_path / "longer", 1, 8, seed=0, progress=False)
    collect_crafter(tmp_path / "idle", 1, 5, seed=0, progress=False, idle_do=0.05)
    assert _same_collection(EpisodeStore(tmp_path / "a"), str(tmp_path / "longer"))
    assert not _same_collection(EpisodeStore(tmp_path / "a"), str(tmp_path / "idle"))
