"""Collect Crafter episodes into an episode store with an exploration policy.

Episode i is fully determined by (seed, i): the world seed and the policy seed derive from
them, so a resumed or re-run collection writes the same episodes. Finished episodes are found
by their files and skipped; each file is written atomically, so a kill loses at most the
episodes in flight.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from worldsim.data.store import EpisodeStore, StoreError
from worldsim.fileio import clean_stale_temps
from worldsim.envs.crafter import CRAFTER_FPS, CRAFTER_SPACE, CrafterEnv, ExplorerPolicy


@dataclass(frozen=True)
class CollectJob:
    out: str
    index: int
    steps: int
    seed: int
    size: int
    idle_do: float = 0.0  # ExplorerPolicy's p_idle_do


def episode_id(index: int) -> str:
    return f"{index:06d}"


def episode_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index * 7919 + 17) % (2**31 - 1)


class NotReplayable(Exception):
    """A stored episode cannot be rebuilt as a game (the reason is the message)."""


def check_replayable(store: EpisodeStore) -> None:
    """Raises NotReplayable unless `store` was written by `worldsim collect` on Crafter."""
    src = store.info.source or {}
    if store.info.env != "crafter":
        raise NotReplayable(f"only Crafter episodes replay as games, not {store.info.env}")
    if src.get("collector") != "explorer" or src.get("seed") is None:
        raise NotReplayable(f"{store.root} does not record the collection seed of `worldsim collect`, "
                            "so its episodes cannot be replayed")


def replay_episode(store: EpisodeStore, episode: str, step: int, frames: np.ndarray | None = None
                   ) -> tuple[CrafterEnv, list[tuple[int, int]]]:
    """The Crafter game of `episode` after `step` of its recorded steps, rebuilt from its seed,
    and the player's tile at each frame 0..step. Each replayed frame is checked against `frames`
    (the frames expected at steps step - len(frames) + 1 .. step; default: every stored frame up
    to `step`). Raises NotReplayable, with the reason, where it cannot be replayed."""
    check_replayable(store)
    if not episode.isdigit():
        raise NotReplayable(f"episode {episode!r} of {store.root} is not named by its collection index")
    ep = store.load(episode)
    expected = ep.frames[:step + 1] if frames is None else frames
    first = step - len(expected) + 1
    env = CrafterEnv(size=store.info.frame_size[0], seed=episode_seed(int(store.info.source["seed"]),
                                                                      int(episode)))
    frame, tiles = env.reset(), []
    for t in range(step + 1):
        if t > 0:
            frame, _, _ = env.step(store.info.action_space.from_array(ep.actions, t - 1))
        if t >= first and not np.array_equal(frame, expected[t - first]):
            raise NotReplayable(f"episode {episode} of {store.root} does not replay to its stored frame "
                                f"{t} (collected by another version of Crafter or of `worldsim collect`)")
        tiles.append(tuple(int(v) for v in env._env._player.pos))
    return env, tiles


def run_episode(job: CollectJob) -> tuple[str, int, int]:
    """Play one episode and write it. Returns (id, frames, bytes)."""
    s = episode_seed(job.seed, job.index)
    env = CrafterEnv(size=job.size, seed=s, length=job.steps)
    policy = ExplorerPolicy(seed=s + 1, p_idle_do=job.idle_do)
    frames = np.empty((job.steps + 1, job.size, job.size, 3), np.uint8)
    daylight = np.empty(job.steps + 1, np.float32)
    actions = np.empty(job.steps, np.int16)
    frames[0] = env.reset()
    daylight[0] = env.daylight
    t = 0
    while t < job.steps:
        a = policy(env)
        frame, done, info = env.step(a)
        actions[t] = a
        t += 1
        frames[t], daylight[t] = frame, info["daylight"]
        if done:  # the player died: the episode is shorter
            break
    store = EpisodeStore(job.out)
    path = store.write_episode(episode_id(job.index), frames[: t + 1], actions[:t], daylight[: t + 1])
    return episode_id(job.index), t + 1, path.stat().st_size


def _ignore_sigint() -> None:
    # Ctrl-C reaches every process of the terminal's group: the workers leave it to the main
    # process, which stops them, instead of each dying with a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _in_workers(jobs: list[CollectJob], workers: int) -> Iterator[tuple[str, int, int]]:
    """run_episode over `jobs` in worker processes, results as they finish. A worker that dies
    (killed, or out of memory) raises StoreError: multiprocessing.Pool would wait for its episode
    forever. However the loop ends, the workers are stopped before this returns."""
    ex = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_ignore_sigint)
    futures = [ex.submit(run_episode, job) for job in jobs]
    try:
        for f in as_completed(futures):
            try:
                yield f.result()
            except BrokenProcessPool:
                raise StoreError("a collection worker died (out of memory, or killed); the finished "
                                 "episodes are kept, run again to resume") from None
    finally:
        for f in futures:
            f.cancel()
        # The executor cannot stop a running episode itself: its workers (ignoring Ctrl-C) are
        # terminated, and an episode file being written is finished first (fileio holds SIGTERM).
        for proc in list((getattr(ex, "_processes", None) or {}).values()):
            proc.terminate()
        ex.shutdown(wait=True, cancel_futures=True)


def _check_resume(store: EpisodeStore, defaults: dict[str, float] | None = None, **wanted: float) -> None:
    """Episode i is fixed by (seed, i) at a given length and policy: resuming with another --steps,
    --seed or --idle-do would mix two collections in one store, so it is refused. (The size is
    checked by the store.) Stores written before a setting was recorded lack it: `defaults`
    gives what they were collected with, and with none there is nothing to check."""
    for key, value in wanted.items():
        old = store.info.source.get(key, (defaults or {}).get(key))
        if old is not None and old != value:
            flag = key.replace("_", "-")
            raise StoreError(f"{store.root} was collected with --{flag} {old}; resume it with "
                             f"--{flag} {old}, or choose another --out for --{flag} {value}")


def collect_crafter(out: str | Path, episodes: int, steps: int, seed: int = 0, size: int = 72,
                    workers: int = 1, progress: bool = True, idle_do: float = 0.0) -> dict[str, Any]:
    """Collect `episodes` episodes of up to `steps` steps into the store at `out` (resumable).
    `idle_do` is the policy's chance of `do` where it changes nothing in view (ExplorerPolicy)."""
    if episodes < 1 or steps < 1:
        raise StoreError("--episodes and --steps must be at least 1")
    if not 0 <= idle_do <= 1:
        raise StoreError(f"--idle-do must lie in [0, 1], got {idle_do}")
    try:
        env = CrafterEnv(size=size)  # validates the size before anything is written
        if not (Path(out) / "dataset.json").exists():
            # A new store's dataset.json fixes its frame size for good: draw a frame first, so
            # that a size the game cannot draw fails here, not in the workers after the folder
            # is taken at that size.
            env.reset()
    except ValueError as e:
        raise StoreError(f"Crafter cannot collect {size}x{size} frames: {e}") from None
    store = EpisodeStore.create(out, env="crafter", action_space=CRAFTER_SPACE,
                                frame_size=(size, size), fps=CRAFTER_FPS,
                                source={"collector": "explorer", "seed": seed, "size": size,
                                        "steps": steps, "idle_do": idle_do})
    if store.info.source.get("collector") != "explorer":
        # A store of `worldsim play` recordings, say: its episodes have no (seed, index), and the
        # collection's seed would never be recorded, so the collected ones could not be replayed.
        raise StoreError(f"{out} holds episodes that `worldsim collect` did not collect; "
                         "choose another --out")
    _check_resume(store, {"idle_do": 0.0}, steps=steps, seed=seed, idle_do=idle_do)
    todo = [i for i in range(episodes) if not store.has_valid(episode_id(i))]
    jobs = [CollectJob(str(out), i, steps, seed, size, idle_do) for i in todo]
    summary = {"episodes": 0, "skipped": episodes - len(todo), "frames": 0, "bytes": 0,
               "seconds": 0.0}
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), unit="ep", desc="collect", disable=not progress or not jobs)
    try:
        results = (map(run_episode, jobs) if workers <= 1 or len(jobs) <= 1
                   else _in_workers(jobs, min(workers, len(jobs))))
        try:
            for _eid, n, nbytes in results:
                summary["episodes"] += 1
                summary["frames"] += n
                summary["bytes"] += nbytes
                dt = time.perf_counter() - t0
                bar.update(1)
                bar.set_postfix(frames=summary["frames"], fps=f"{summary['frames'] / dt:.0f}")
        finally:
            if not isinstance(results, map):
                results.close()  # the workers stop before the store is recounted
    finally:
        bar.close()
        summary["seconds"] = time.perf_counter() - t0
        # Every worker has stopped: what a killed one was writing is a temporary nobody finishes.
        clean_stale_temps(Path(out) / "episodes")
        info = store.refresh(episodes_requested=episodes, steps=steps)
        summary["store_episodes"] = info.episodes
        summary["store_frames"] = info.frames
    return summary
