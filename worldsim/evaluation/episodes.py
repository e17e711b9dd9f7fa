"""Which real windows an evaluation runs on: held-out episodes of the bundle's training store,
or any other store whole.

A bundle records the token shards it was trained on (`training.shards`), and the shards record
the episode store they came from (`data` in their index.json) and the episode ids; training held
out `split_ids(ids, training.val_fraction)[1]`. When `--data` is that store, only those
validation episodes are used, and so for a store collected like it (the same `worldsim collect`
seed and size, so the same episodes under the same ids, however many); any other store is used
whole (a store collected with unseen seeds tests generalisation). Shards tokenized from several
stores (`more_data` in their index) are judged the same way on each of those stores, with the
split their training saw (a further store's episodes were split under `<folder name>/<id>`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.bundle import recorded_path
from worldsim.data.store import CorruptEpisode, EpisodeStore, split_ids
from worldsim.errors import WorldsimError


@dataclass
class Window:
    """`length` consecutive real frames of one episode and the actions between them."""
    episode: str
    start: int  # game step of the first frame (recorded episodes start at step 0)
    frames: np.ndarray  # (T, H, W, 3) uint8
    actions: np.ndarray  # (T-1,) or (T-1, D), the on-disk form
    daylight: np.ndarray | None  # (T,) float32, 1.0 at noon


def held_out_ids(store: EpisodeStore, bundle_cfg: dict[str, Any], bundle_dir: str | Path | None = None
                 ) -> tuple[list[str], str]:
    """(episode ids to draw from, a note saying which and why). `bundle_dir` is where the
    config was read: a relative shards path is also looked for above it."""
    ids = store.episode_ids()
    training = bundle_cfg.get("training") or {}
    shards = training.get("shards")
    if not shards:
        return ids, "whole store (the bundle records no training data)"
    if bundle_dir is not None:
        shards = recorded_path(bundle_dir, shards)
    index_path = Path(shards) / "index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        warnings.warn(f"cannot read {index_path}, the shards the model was trained on, to tell whether "
                      f"{store.root} was its training store; using every episode of it", stacklevel=2)
        return ids, f"whole store (training shards {shards} unreadable)"
    trained = [e["id"] for e in index.get("episodes", [])]
    val_fraction = float(training.get("val_fraction", 0.05))
    sources = [(index.get("data"), "")] + [(m.get("data"), m.get("prefix", ""))
                                          for m in index.get("more_data", [])]
    # a store's path, as tokenize was run, is also looked for above the shards
    sources = [(None if src is None else str(recorded_path(shards, src)), pre) for src, pre in sources]
    for source, prefix in sources:
        # the episodes of that store, under the store's own ids (the first keeps them whole)
        mine = [e for e in index.get("episodes", []) if _prefix_of(e["id"]) == prefix]
        local = [{**e, "id": e["id"][len(prefix):]} for e in mine]
        if source is None or Path(source).resolve() != store.root.resolve():
            # The recorded path may be relative to another working folder, or the store may have
            # moved: the same episodes (ids and lengths) make it the training store all the same.
            if not (_same_episodes(store, local) or _same_collection(store, source)):
                continue
        # A side depends on the id the training saw, prefix included.
        _, val = split_ids(trained, val_fraction)
        val_local = {v[len(prefix):] for v in val if _prefix_of(v) == prefix}
        have, seen = set(ids), {e["id"] for e in local}
        # Episodes added to the store after tokenizing were never trained on: they count as held out.
        held = sorted((val_local & have) | (have - seen))
        return held, f"validation split of the training store ({len(held)} of {len(ids)} episodes)"
    return ids, f"whole store (the model was trained on {_named(sources)})"


def _prefix_of(episode_id: str) -> str:
    """The prefix a store tokenized after the first gives its episodes ("" for the first)."""
    return episode_id[:episode_id.index("/") + 1] if "/" in episode_id else ""


def _named(sources: list[tuple[str | None, str]]) -> str:
    return " and ".join(str(s) for s, _ in sources)


def _same_collection(store: EpisodeStore, source: str | None) -> bool:
    """Whether `store` and the training store `source` were collected alike by `worldsim
    collect` (same game, collector, seed, frame size and `--idle-do`, 0 where a store predates
    it): an episode is then the same game under the same id in both, although one store may hold
    fewer episodes, or more, or shorter ones."""
    if source is None:
        return False
    try:
        other = EpisodeStore(source)
    except (WorldsimError, OSError):  # moved or gone: nothing to vouch for it
        return False
    mine, theirs = store.info.source or {}, other.info.source or {}
    return (store.info.env == other.info.env and mine.get("collector") == "explorer"
            and mine.get("seed") is not None
            and all(mine.get(k) == theirs.get(k) for k in ("collector", "seed", "size"))
            and mine.get("idle_do", 0.0) == theirs.get("idle_do", 0.0))


def _same_episodes(store: EpisodeStore, trained: list[dict[str, Any]], sample: int = 32) -> bool:
    """Whether the store holds the trained episodes: every id, and the same frame counts for a
    sample of them (collected stores number their episodes alike, so ids alone do not tell)."""
    have = set(store.episode_ids())
    if not trained or not all(e["id"] in have for e in trained):
        return False
    step = max(1, len(trained) // sample)
    for e in trained[::step]:
        try:
            if len(store.load(e["id"]).frames) != int(e["frames"]):
                return False
        except CorruptEpisode:  # cannot vouch for it
            return False
    return True


def select_windows(store: EpisodeStore, ids: list[str], count: int, length: int, seed: int,
                   need: str = "(context + horizon); lower --horizon or --context") -> list[Window]:
    """Up to `count` windows of `length` frames, one per episode, episodes and starts drawn with
    `seed`. Corrupt episodes are skipped with a warning that names them; short ones silently.
    `need` follows the length in the error where no episode is long enough: why, and what to do."""
    rng = np.random.default_rng(seed)
    order = [ids[i] for i in rng.permutation(len(ids))]
    out: list[Window] = []
    for ep in store.iter_episodes(order):
        if len(ep.frames) < length:
            continue
        t0 = int(rng.integers(0, len(ep.frames) - length + 1))
        light = None if ep.daylight is None else np.asarray(ep.daylight[t0:t0 + length], np.float32)
        out.append(Window(ep.id, t0, ep.frames[t0:t0 + length], ep.actions[t0:t0 + length - 1], light))
        if len(out) == count:
            break
    if not out:
        raise WorldsimError(f"no readable episode in {store.root} has {length} frames {need}")
    if len(out) < count:
        # Said by what limits it: the held-out episodes, or their length.
        why = (f"{len(ids)} of its episodes are held out from training" if len(ids) < count and len(out) == len(ids)
               else f"{len(out)} of its {len(ids)} held-out episodes have {length} frames")
        warnings.warn(f"only {why} in {store.root}; evaluating on {len(out)} instead of {count}",
                      stacklevel=2)
    return out
