"""Token shards: an episode store turned into image and action tokens that training memory-maps.

Layout of a shards folder:

    SHARDS/index.json            {"format": "worldsim.tokens", "version": 1, "tokens_per_frame": N,
                                  "action_tokens": A, "codebook_size": K, "grid": [rows, cols],
                                  "action_tokenizer": {...}, "env", "episodes": [{"id", "frames",
                                  "frame_offset", "action_offset"}, ...], "frames", "steps"}
    SHARDS/frames.npy            uint16 [sum(T_e + 1), N]   every episode's frame tokens, in order
    SHARDS/actions.npy           uint16 [sum(T_e), A]       every episode's action tokens (ids
                                                            already offset past the K image codes)
    SHARDS/parts/<id>.npz        per-episode results while tokenizing; packed into the two
                                 arrays above at the end (kept, so adding episodes resumes).
                                 Each records what it was made from (`source`: the tokenizer's
                                 hash and the episode file's fingerprint), so a part is reused
                                 only for the same episode through the same tokenizer

Shards may hold several stores of one game (`worldsim tokenize --data A --data B`): the first
store's episodes keep their ids and `data` names it, so its validation split, and every reader
of `data`, stay as with that store alone (unless the store is so small that its one held-out
episode is the fallback of `split_ids`, chosen among all the stores' episodes); a further store's
episodes are named `<its folder name>/<id>`, and `more_data` lists those stores with their prefixes.

`TokenShards` memory-maps the two arrays and draws random windows of F consecutive frames
with their F actions, with vectorised indexing (no per-token Python loops).
"""

from __future__ import annotations

import json
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from worldsim.data.store import CorruptEpisode, EpisodeStore
from worldsim.errors import WorldsimError
from worldsim.fileio import atomic_open, atomic_save_npz, atomic_write_json, clean_stale_temps, file_sha256
from worldsim.tokenizers.action import action_tokenizer_from_config, make_action_tokenizer

FORMAT = "worldsim.tokens"
VERSION = 1


def tokenize_store(data: str | Path | Sequence[str | Path], tokenizer_bundle: str | Path, out: str | Path,
                   batch: int = 256, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Encode every episode of a store, or of several stores of one game, into token shards
    (resumable; corrupt episodes skipped). With several, the first store's ids are kept and a
    further store's episodes are named `<folder name>/<id>` (see the module's docstring)."""
    import warnings

    from worldsim.data.store import CorruptEpisodeWarning
    from worldsim.bundle import load_image_tokenizer

    paths = [data] if isinstance(data, (str, Path)) else list(data)
    if not paths:
        raise WorldsimError("no episode store to tokenize")
    stores = [EpisodeStore(p) for p in paths]
    prefixes = [""] + [f"{Path(p).resolve().name}/" for p in paths[1:]]
    _check_alike(paths, stores, prefixes)
    store, data = stores[0], paths[0]
    from worldsim.device import pick_device

    dev = pick_device(device)
    image_tok = load_image_tokenizer(tokenizer_bundle, dev)
    cfg = image_tok.cfg
    if (cfg.height, cfg.width) != tuple(store.info.frame_size):
        raise WorldsimError(f"the tokenizer takes {cfg.height}x{cfg.width} frames but {data} holds "
                            f"{store.info.frame_size[0]}x{store.info.frame_size[1]}")
    action_tok = make_action_tokenizer(store.info.action_space, offset=cfg.codebook_size)
    # Action ids follow the image codes: both must fit uint16, or the actions would wrap.
    if action_tok.vocab_end > 65536:
        raise WorldsimError(f"{cfg.codebook_size} image codes and {action_tok.vocab_end - cfg.codebook_size} "
                            "action ids do not fit uint16 shards (at most 65,536 ids in all)")
    out = Path(out)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "version": VERSION, "tokens_per_frame": cfg.tokens_per_frame,
              "action_tokens": action_tok.tokens_per_action, "codebook_size": cfg.codebook_size,
              "grid": list(cfg.grid), "action_tokenizer": action_tok.to_config(),
              "env": store.info.env, "action_space": store.info.action_space.to_dict(),
              "frame_size": list(store.info.frame_size), "fps": store.info.fps,
              "tokenizer": str(tokenizer_bundle), "data": str(data),
              **({"more_data": [{"data": str(p), "prefix": pre} for p, pre in zip(paths[1:], prefixes[1:])]}
                 if len(paths) > 1 else {}),
              # which weights made the codes: train refuses a --tokenizer with other weights
              "tokenizer_sha256": file_sha256(Path(tokenizer_bundle) / "image_tokenizer.safetensors")}
    old = _read_index(out / "index.json")
    if old is not None:
        same = {k: old.get(k) for k in ("tokens_per_frame", "codebook_size", "action_tokenizer",
                                        "tokenizer_sha256") if k in old}
        if same != {k: header[k] for k in same}:
            raise WorldsimError(f"{out} holds shards from another tokenizer; choose another --out")

    source = {pre + i: (st, i) for st, pre in zip(stores, prefixes) for i in st.episode_ids()}
    ids = list(source)
    made_from = {eid: _made_from(header["tokenizer_sha256"], st, local) for eid, (st, local) in source.items()}
    for pre in prefixes[1:]:
        (parts / pre).mkdir(exist_ok=True)
    for folder in [out, parts] + [parts / pre for pre in prefixes[1:]]:
        clean_stale_temps(folder)  # a killed run's half-written arrays and parts
    todo = [i for i in ids if not _part_ok(parts / f"{i}.npz", made_from[i])]
    t0 = time.perf_counter()
    n_frames = corrupt = unlit = 0
    bar = tqdm(todo, desc="tokenize", unit="ep", disable=not progress or not todo)
    for eid in bar:
        st, local = source[eid]
        try:
            ep = st.load(local)
        except CorruptEpisode as e:
            warnings.warn(f"skipping corrupt episode {e}", CorruptEpisodeWarning, stacklevel=2)
            corrupt += 1
            continue
        if getattr(image_tok, "uses_light", False):  # a tile tokenizer takes the recorded daylight
            unlit += ep.daylight is None
            light = ep.daylight if ep.daylight is not None else np.ones(len(ep.frames), np.float32)
            codes = [image_tok.encode(ep.frames[i:i + batch], light[i:i + batch]).cpu()
                     for i in range(0, len(ep.frames), batch)]
        else:
            codes = [image_tok.encode(ep.frames[i:i + batch]).cpu() for i in range(0, len(ep.frames), batch)]
        frames_TN = torch.cat(codes).numpy().astype(np.uint16)
        actions_TA = action_tok.encode_array(ep.actions).astype(np.uint16)
        atomic_save_npz(parts / f"{eid}.npz", compress=False, frames=frames_TN, actions=actions_TA,
                        source=np.array(made_from[eid] or ""))
        n_frames += len(frames_TN)
        bar.set_postfix(fps=f"{n_frames / (time.perf_counter() - t0):.0f}")
    if unlit:
        warnings.warn(f"{unlit} episode(s) record no daylight and were tokenized as full day: a night "
                      "frame among them gets the codes of another tile", stacklevel=2)
    index = _pack(out, ids, header, made_from)
    return {"episodes": len(index["episodes"]), "tokenized": len(todo) - corrupt, "corrupt": corrupt,
            "frames": index["frames"], "new_frames": n_frames, "seconds": time.perf_counter() - t0}


def _read_index(path: Path) -> dict[str, Any] | None:
    """The old index.json as a dict, or None where it is missing or unreadable: tokenizing
    again repairs such a folder (its parts are checked one by one, and the index is written anew)."""
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, truncated, not UTF-8
        return None
    return index if isinstance(index, dict) else None


def _check_alike(paths: list, stores: list[EpisodeStore], prefixes: list[str]) -> None:
    """Stores tokenized together must be of one game, frame size, rate and action space, and
    the further ones must have distinct folder names (their episodes' prefixes). Two stores
    collected with the same seed are refused: `worldsim collect` plays episode i of both in the
    same world, and the split draws `000017` and `other/000017` apart, so the first store's
    held-out worlds would be trained on through their twins. So are two VPT stores that hold
    one recording (converted episodes are named after their recordings)."""
    roots = [st.root.resolve() for st in stores]
    twice = next((paths[i] for i, r in enumerate(roots) if r in roots[:i]), None)
    if twice is not None:
        raise WorldsimError(f"--data {twice} is given twice: each store is tokenized once")
    if len(set(prefixes[1:])) != len(prefixes[1:]):
        raise WorldsimError("stores tokenized together after the first need distinct folder names: "
                            "their episodes are named <folder name>/<id>")
    first = stores[0].info
    seeds: dict[int, str] = {}
    for p, st in zip(paths, stores):
        i = st.info
        if (i.env, tuple(i.frame_size), i.fps, i.action_space.to_dict()) != (
                first.env, tuple(first.frame_size), first.fps, first.action_space.to_dict()):
            raise WorldsimError(f"{p} is not of the same game as {paths[0]} (game, frame size, "
                                "frame rate and action space must match to tokenize them together)")
        seed = (i.source or {}).get("seed")
        if seed is not None and (i.source or {}).get("collector"):
            if seed in seeds:
                raise WorldsimError(
                    f"{p} and {seeds[seed]} were both collected with --seed {seed}: their episodes "
                    "play the same worlds one for one, so held-out episodes of one would be trained "
                    "on through the other's; collect one of them again with another --seed")
            seeds[seed] = str(p)
    # A VPT episode is named after its recording: two stores that hold one name hold one
    # recording (a copy of a store, or folders converted twice), split apart as two episodes.
    recordings: dict[str, str] = {}
    for p, st in zip(paths, stores):
        if (st.info.source or {}).get("kind") != "vpt":
            continue
        ids = st.episode_ids()
        shared = next((eid for eid in ids if eid in recordings), None)
        if shared is not None:
            raise WorldsimError(
                f"{p} and {recordings[shared]} both hold the VPT recording {shared!r}: held-out "
                "episodes of one would be trained on through the other's copy; tokenize each "
                "recording from one store only")
        recordings.update(dict.fromkeys(ids, str(p)))


def _made_from(tokenizer_sha256: str, store: EpisodeStore, episode_id: str) -> str | None:
    """What a part of this episode is made from: the tokenizer's weights and the episode file's
    contents (None where the file cannot be read: the episode is then tokenized, or skipped as
    corrupt, again)."""
    try:
        return f"{tokenizer_sha256}|{store.fingerprint(episode_id)}"
    except CorruptEpisode:
        return None


def _read_part(path: Path, made_from: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """A part's (frames, actions), or None where it is missing, damaged, or made from anything
    but `made_from` (another store's episode of the same id, an episode written again since,
    another tokenizer, or a part from before parts recorded their source)."""
    if made_from is None or not path.exists():
        return None
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            if not {"frames", "actions", "source"} <= set(z.files) or str(z["source"]) != made_from:
                return None
            f, a = z["frames"], z["actions"]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error):
        return None
    return (f, a) if f.ndim == 2 and len(a) == len(f) - 1 else None


def _part_ok(path: Path, made_from: str | None) -> bool:
    return _read_part(path, made_from) is not None


def _pack(out: Path, ids: list[str], header: dict[str, Any], made_from: dict[str, str | None]) -> dict[str, Any]:
    """Concatenate per-episode parts into frames.npy / actions.npy and write index.json."""
    episodes, frames, actions = [], [], []
    f_off = a_off = 0
    for eid in ids:
        part = _read_part(out / "parts" / f"{eid}.npz", made_from[eid])
        if part is None:
            continue
        f, a = part
        episodes.append({"id": eid, "frames": len(f), "frame_offset": f_off, "action_offset": a_off})
        frames.append(f)
        actions.append(a)
        f_off += len(f)
        a_off += len(a)
    if not episodes:
        raise WorldsimError("no episode could be tokenized")
    # The index is written last and names what the arrays hold: it goes first, so that a kill
    # between the two arrays leaves no shards (the next `tokenize` packs them again from the
    # parts) rather than an old index over new arrays, whose offsets would cut windows across
    # episodes.
    (out / "index.json").unlink(missing_ok=True)
    for name, arrs in (("frames.npy", frames), ("actions.npy", actions)):
        with atomic_open(out / name, "wb") as fh:
            np.save(fh, np.concatenate(arrs))
    index = {**header, "episodes": episodes, "frames": f_off, "steps": a_off}
    atomic_write_json(out / "index.json", index)
    return index


class TokenShards:
    """Memory-mapped token shards with random windows of F frames.

    A window is F consecutive frames of one episode plus the F actions taken at them (so the
    window never includes an episode's last frame, whose action does not exist)."""

    def __init__(self, folder: str | Path, ids: list[str] | None = None):
        folder = Path(folder)
        index_path = folder / "index.json"
        if not index_path.is_file():
            raise WorldsimError(f"{folder} holds no token shards (no index.json); make them with "
                                "`worldsim tokenize`")
        again = "run `worldsim tokenize` into it again"
        try:
            self.index = json.loads(index_path.read_text())
        except ValueError as e:  # cut short or overwritten: JSONDecodeError, UnicodeDecodeError
            raise WorldsimError(f"{index_path} is damaged ({type(e).__name__}: {e}); {again}") from None
        if not isinstance(self.index, dict) or self.index.get("format") != FORMAT:
            raise WorldsimError(f"{index_path} is not a worldsim token index")
        arrays = {}
        for name in ("frames", "actions"):  # (sum T+1, N) and (sum T, A) uint16
            try:
                arrays[name] = np.load(folder / f"{name}.npy", mmap_mode="r")
            except (OSError, ValueError, EOFError) as e:  # missing, truncated (mmap past the end)
                raise WorldsimError(f"{folder / name}.npy cannot be read ({type(e).__name__}: {e}); "
                                    f"{again}") from None
        self.frames, self.actions = arrays["frames"], arrays["actions"]
        try:
            self.N = int(self.index["tokens_per_frame"])
            self.A = int(self.index["action_tokens"])
            self.K = int(self.index["codebook_size"])
            keep = set(ids) if ids is not None else None
            self.episodes = [e for e in self.index["episodes"] if keep is None or e["id"] in keep]
            for ep in self.episodes:  # windows index by these
                int(ep["frames"]), int(ep["frame_offset"]), int(ep["action_offset"])
        except (KeyError, TypeError, ValueError) as e:
            raise WorldsimError(f"{index_path} lacks what a token index holds ({type(e).__name__}: "
                                f"{e}); {again}") from None
        if (self.frames.shape != (self.index.get("frames"), self.N)
                or self.actions.shape != (self.index.get("steps"), self.A)):
            raise WorldsimError(f"{folder}: frames.npy and actions.npy do not hold what index.json "
                                f"says; {again}")

    @property
    def action_tokenizer(self):
        return action_tokenizer_from_config(self.index["action_tokenizer"])

    @property
    def episode_ids(self) -> list[str]:
        return [e["id"] for e in self.episodes]

    def window_starts(self, frames: int) -> tuple[np.ndarray, np.ndarray]:
        """Global frame and action indices of every valid window start: (S,), (S,)."""
        f_starts, a_starts = [], []
        for e in self.episodes:
            n = e["frames"] - 1 - frames + 1  # windows use frames[s:s+F] and actions[s:s+F]
            if n > 0:
                f_starts.append(e["frame_offset"] + np.arange(n))
                a_starts.append(e["action_offset"] + np.arange(n))
        if not f_starts:
            raise WorldsimError(f"no episode is long enough for windows of {frames} frames")
        return np.concatenate(f_starts), np.concatenate(a_starts)

    def gather(self, f_starts: np.ndarray, a_starts: np.ndarray, frames: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows at the given starts: frame tokens (B, F, N) and action tokens (B, F, A), int64."""
        off = np.arange(frames)
        f = self.frames[f_starts[:, None] + off]  # fancy indexing on the memmap: one copy
        a = self.actions[a_starts[:, None] + off]
        return torch.from_numpy(f.astype(np.int64)), torch.from_numpy(a.astype(np.int64))

    def episode(self, episode_id: str) -> tuple[np.ndarray, np.ndarray]:
        """One episode's frame tokens (T+1, N) and action tokens (T, A)."""
        for e in self.episodes:
            if e["id"] == episode_id:
                fo, ao, n = e["frame_offset"], e["action_offset"], e["frames"]
                return np.asarray(self.frames[fo:fo + n]), np.asarray(self.actions[ao:ao + n - 1])
        raise KeyError(episode_id)
