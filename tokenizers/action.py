"""Action tokenizers: one player action -> A integer tokens that follow the image codes.

Every tokenizer shares one API:

- `tokens_per_action` (A), `num_ids` (ids it uses, relative), `offset` (added to every id, so
  action ids start right after the image codebook: K=8192 for MineWorld).
- `encode(action) -> int64 [A]`, `decode(tokens_A) -> action`.
- `encode_array(actions) -> int64 [T, A]` and `decode_array(tokens_TA) -> actions`, vectorised
  over the on-disk form (`ActionSpace` docs: int16 [T] for discrete spaces, float32
  [T, len(buttons) + 2] for dict spaces, whose last two columns are camera pitch and yaw).
- `to_config() -> dict` (JSON-ready), `action_tokenizer_from_config(d)` (unknown keys raise
  ValueError) and `make_action_tokenizer(space, offset, **opts)` (unknown opts raise ValueError).

Discrete spaces (Crafter, 17 actions): one token, id = offset + action.

    | slot | id (relative)   |
    |------|-----------------|
    | 0    | action, 0..n-1  |

MineRL, in MineWorld's layout: 11 tokens per action.

    | slot | holds                                   | ids (relative)                    |
    |------|-----------------------------------------|-----------------------------------|
    | 0    | bos                                     | 65                                |
    | 1    | camera pitch bin (camera[0])            | 23..43 (bin 0..20)                |
    | 2    | camera yaw bin (camera[1])              | 44..64 (bin 0..20)                |
    | 3    | hotbar: the lowest pressed, else null   | 14..22 (hotbar.1..9) or 66        |
    | 4    | forward or back                         | 2, 3 or 66                        |
    | 5    | left or right                           | 4, 5 or 66                        |
    | 6    | sprint or sneak                         | 8, 7 or 66                        |
    | 7    | use or attack                           | 0, 1 or 66                        |
    | 8    | jump                                    | 6 or 66                           |
    | 9    | drop or pickItem                        | 9, 11 or 66                       |
    | 10   | eos                                     | 67                                |

    The vocabulary (68 ids, relative to the offset):

    | id    | name        | id    | name          |
    |-------|-------------|-------|---------------|
    | 0     | use         | 10    | swapHands     |
    | 1     | attack      | 11    | pickItem      |
    | 2     | forward     | 12    | inventory     |
    | 3     | back        | 13    | ESC           |
    | 4     | left        | 14-22 | hotbar.1-9    |
    | 5     | right       | 23-43 | pitch bins    |
    | 6     | jump        | 44-64 | yaw bins      |
    | 7     | sneak       | 65    | bos           |
    | 8     | sprint      | 66    | null          |
    | 9     | drop        | 67    | eos           |

A pair slot holds a key's id when exactly that key of the pair is pressed, and null when neither
or both are pressed. The jump slot holds jump's id when it is pressed, else null.

Camera (degrees): mu-law with maxval 90, binsize 9, mu 11.4887, 21 bins per axis:
`x = clip(x, -90, 90) / 90; x = sign(x) * log(1 + mu|x|) / log(1 + mu) * 90;
bin = round((x + 90) / 9)` (numpy's round: halves go to the even bin, as in MineWorld).
Decoding returns the bin centre, the inverse mu-law of `bin * 9 - 90`: 0, +-2.25, +-5.15,
+-8.87, ... +-90 degrees. Bin 10 is no camera motion.

Encoding MineRL actions is lossy: swapHands, inventory and ESC have ids but no slot; only the
lowest pressed hotbar key survives; conflicting pairs become null; the camera snaps to its bin.
`decode` returns every button of the space (those without a slot come back 0) plus
"camera": [pitch, yaw] as floats (bin centres).

Where this differs from MineWorld (microsoft/MineWorld, `mcdataset.py`): the layout, the ids, the
camera quantiser and the conflict rules above are MineWorld's tokenizer
(`get_action_index_from_actiondict`). MineWorld's recording loader additionally drops jump+sneak
and sprint+sneak when both are held, before tokenizing; this tokenizer does not (jump+sneak keeps
both: jump in slot 8, sneak in slot 6); apply that cleaning when reading recordings if you need
MineWorld's exact training tokens. MineWorld has no decoder; decoding here is our own, and
non-finite camera values raise ValueError instead of producing garbage bins.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Mapping

import numpy as np

from worldsim.envs.base import ActionSpace

__all__ = [
    "ActionTokenizer", "DiscreteActionTokenizer", "CrafterActionTokenizer",
    "MineRLActionTokenizer", "make_action_tokenizer", "action_tokenizer_from_config",
    "MINEWORLD_OFFSET", "MINEWORLD_BUTTON_IDS", "MINEWORLD_SLOTS",
    "mu_law_bins", "mu_law_centres",
]

# MineWorld puts action ids right after its 8192 image codes.
MINEWORLD_OFFSET = 8192

# Relative ids of the buttons, in MineWorld's vocabulary order.
MINEWORLD_BUTTON_IDS: dict[str, int] = {
    name: i for i, name in enumerate((
        "use", "attack", "forward", "back", "left", "right", "jump", "sneak", "sprint",
        "drop", "swapHands", "pickItem", "inventory", "ESC",
        *(f"hotbar.{i}" for i in range(1, 10)),
    ))
}
_N_BUTTON_IDS = len(MINEWORLD_BUTTON_IDS)  # 23: camera bins start here
_HOTBARS = tuple(f"hotbar.{i}" for i in range(1, 10))

# The 11 slots, in order. A pair slot names (first key, second key); its conflict rule is symmetric.
MINEWORLD_SLOTS = (
    "bos", "camera_pitch", "camera_yaw", "hotbar", "forward|back", "left|right",
    "sprint|sneak", "use|attack", "jump", "drop|pickItem", "eos",
)
_PAIR_SLOTS: tuple[tuple[int, str, str], ...] = (
    (4, "forward", "back"),
    (5, "left", "right"),
    (6, "sprint", "sneak"),
    (7, "use", "attack"),
    (9, "drop", "pickItem"),
)
_SINGLE_SLOTS: tuple[tuple[int, str], ...] = ((8, "jump"),)
# Buttons a dict space must have for the MineWorld layout (camera too).
_REQUIRED_BUTTONS = tuple(sorted({k for _, a, b in _PAIR_SLOTS for k in (a, b)}
                                 | {k for _, k in _SINGLE_SLOTS} | set(_HOTBARS)))

_CAMERA_DEFAULTS = {"camera_maxval": 90.0, "camera_binsize": 9.0, "camera_mu": 11.4887}


# --------------------------------------------------------------------------- camera quantiser

def mu_law_bins(x: np.ndarray, maxval: float = 90.0, binsize: float = 9.0,
                mu: float = 11.4887) -> np.ndarray:
    """Camera angles (degrees, any shape) -> int64 bin indices in [0, 2*maxval/binsize]."""
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("camera angles must be finite")
    x = np.clip(x, -maxval, maxval) / maxval
    x = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu) * maxval
    return np.round((x + maxval) / binsize).astype(np.int64)


def mu_law_centres(bins: np.ndarray, maxval: float = 90.0, binsize: float = 9.0,
                   mu: float = 11.4887) -> np.ndarray:
    """Bin indices (any shape) -> the angle at each bin's centre (float64 degrees)."""
    y = (np.asarray(bins, dtype=np.float64) * binsize - maxval) / maxval
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu * maxval


# --------------------------------------------------------------------------- common API

class ActionTokenizer(ABC):
    """Turns actions of one `ActionSpace` into `tokens_per_action` ids in
    [offset, offset + num_ids)."""

    kind: str  # the name saved in the config: "discrete" | "minerl"
    space: ActionSpace
    offset: int
    tokens_per_action: int
    num_ids: int

    @property
    def vocab_end(self) -> int:
        """One past the largest id this tokenizer emits (absolute)."""
        return self.offset + self.num_ids

    @abstractmethod
    def encode(self, action: Any) -> np.ndarray:  # (A,) int64
        ...

    @abstractmethod
    def decode(self, tokens_A: Any) -> Any:
        ...

    @abstractmethod
    def encode_array(self, actions: np.ndarray) -> np.ndarray:  # on-disk -> (T, A) int64
        ...

    @abstractmethod
    def decode_array(self, tokens_TA: np.ndarray) -> np.ndarray:  # (T, A) -> on-disk
        ...

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "offset": self.offset, "space": self.space.to_dict(),
                **self._options()}

    def _options(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(space={self.space.name!r}, offset={self.offset}, "
                f"tokens_per_action={self.tokens_per_action}, num_ids={self.num_ids})")

    def _tokens_1d(self, tokens_A: Any) -> np.ndarray:
        t = np.asarray(tokens_A)
        if t.shape != (self.tokens_per_action,):
            raise ValueError(f"expected {self.tokens_per_action} action tokens, got shape {t.shape}")
        return self._check_int(t)[None, :]

    def _tokens_2d(self, tokens_TA: np.ndarray) -> np.ndarray:
        t = np.asarray(tokens_TA)
        if t.ndim != 2 or t.shape[1] != self.tokens_per_action:
            raise ValueError(f"expected action tokens of shape (T, {self.tokens_per_action}), "
                             f"got {t.shape}")
        return self._check_int(t)

    @staticmethod
    def _check_int(t: np.ndarray) -> np.ndarray:
        if t.dtype.kind not in "iub":
            if t.dtype.kind != "f" or (t.size and not np.all(np.equal(np.mod(t, 1), 0))):
                raise ValueError(f"expected integers, got {t.dtype} values")
        return t.astype(np.int64, copy=False)


def _check_offset(offset: Any) -> int:
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
    return int(offset)


# --------------------------------------------------------------------------- discrete (Crafter)

class DiscreteActionTokenizer(ActionTokenizer):
    """One token per step: id = offset + action (Crafter: 17 actions, ids offset..offset+16)."""

    kind = "discrete"
    tokens_per_action = 1

    def __init__(self, space: ActionSpace, offset: int = 0):
        if space.kind != "discrete":
            raise ValueError(f"DiscreteActionTokenizer needs a discrete space, got {space.kind!r}")
        self.space = space
        self.offset = _check_offset(offset)
        self.num_ids = space.n

    def encode(self, action: Any) -> np.ndarray:  # (1,) int64
        a = np.asarray(action)
        if a.ndim != 0:
            raise ValueError(f"a {self.space.name} action is one integer, got {action!r}")
        return self.encode_array(a.reshape(1))[0]

    def decode(self, tokens_A: Any) -> int:
        return int(self.decode_array(self._tokens_1d(tokens_A))[0])

    def encode_array(self, actions: np.ndarray) -> np.ndarray:  # (T,) -> (T, 1) int64
        a = np.asarray(actions)
        if a.ndim != 1:
            raise ValueError(f"{self.space.name} actions on disk are 1-D [T], got shape {a.shape}")
        a = self._check_int(a)
        if a.size and (a.min() < 0 or a.max() >= self.num_ids):
            raise ValueError(f"{self.space.name} actions must lie in [0, {self.num_ids})")
        return (a + self.offset)[:, None]

    def decode_array(self, tokens_TA: np.ndarray) -> np.ndarray:  # (T, 1) -> (T,) int16
        a = self._tokens_2d(tokens_TA)[:, 0] - self.offset
        if a.size and (a.min() < 0 or a.max() >= self.num_ids):
            raise ValueError(f"{self.space.name} action tokens must lie in "
                             f"[{self.offset}, {self.vocab_end})")
        return a.astype(np.int16)


CrafterActionTokenizer = DiscreteActionTokenizer


# --------------------------------------------------------------------------- MineRL (MineWorld)

class MineRLActionTokenizer(ActionTokenizer):
    """MineRL dict actions -> 11 tokens in MineWorld's layout (see the module docstring)."""

    kind = "minerl"
    tokens_per_action = 11

    def __init__(self, space: ActionSpace, offset: int = MINEWORLD_OFFSET,
                 camera_maxval: float = 90.0, camera_binsize: float = 9.0,
                 camera_mu: float = 11.4887):
        if space.kind != "dict" or not space.camera:
            raise ValueError("the MineWorld action layout needs a dict action space with a camera")
        missing = [b for b in _REQUIRED_BUTTONS if b not in space.buttons]
        if missing:
            raise ValueError(f"the MineWorld action layout needs buttons {missing} "
                             f"that space {space.name!r} lacks")
        self.space = space
        self.offset = _check_offset(offset)
        self.camera_maxval = float(camera_maxval)
        self.camera_binsize = float(camera_binsize)
        self.camera_mu = float(camera_mu)
        if not all(0 < v < math.inf for v in (self.camera_maxval, self.camera_binsize, self.camera_mu)):
            raise ValueError("camera_maxval, camera_binsize and camera_mu must be positive and finite")
        n = 2 * self.camera_maxval / self.camera_binsize
        if abs(n - round(n)) > 1e-9:
            raise ValueError("2 * camera_maxval must be a multiple of camera_binsize")
        self.n_camera_bins = int(round(n)) + 1  # 21 by default

        # Relative ids.
        self.pitch_id0 = _N_BUTTON_IDS
        self.yaw_id0 = _N_BUTTON_IDS + self.n_camera_bins
        self.bos_id = _N_BUTTON_IDS + 2 * self.n_camera_bins
        self.null_id = self.bos_id + 1
        self.eos_id = self.bos_id + 2
        self.num_ids = self.eos_id + 1  # 68 by default
        self.bin_centres = mu_law_centres(np.arange(self.n_camera_bins), self.camera_maxval,
                                          self.camera_binsize, self.camera_mu)  # (n_bins,)

        col = {b: i for i, b in enumerate(space.buttons)}
        self._col = col
        self._hotbar_cols = np.array([col[h] for h in _HOTBARS])
        self._pitch_col = len(space.buttons)
        self._yaw_col = len(space.buttons) + 1
        # Per slot: the relative ids allowed there (for decode-time validation).
        allowed: list[set[int]] = [set() for _ in range(self.tokens_per_action)]
        allowed[0] = {self.bos_id}
        allowed[1] = set(range(self.pitch_id0, self.pitch_id0 + self.n_camera_bins))
        allowed[2] = set(range(self.yaw_id0, self.yaw_id0 + self.n_camera_bins))
        allowed[3] = {MINEWORLD_BUTTON_IDS[h] for h in _HOTBARS} | {self.null_id}
        for slot, a, b in _PAIR_SLOTS:
            allowed[slot] = {MINEWORLD_BUTTON_IDS[a], MINEWORLD_BUTTON_IDS[b], self.null_id}
        for slot, k in _SINGLE_SLOTS:
            allowed[slot] = {MINEWORLD_BUTTON_IDS[k], self.null_id}
        allowed[10] = {self.eos_id}
        self._allowed = allowed
        # (A, num_ids) table: True where relative id v may appear in slot s.
        self._allowed_table = np.zeros((self.tokens_per_action, self.num_ids), bool)
        for s, ids in enumerate(allowed):
            self._allowed_table[s, sorted(ids)] = True
        self._slot_base = np.arange(self.tokens_per_action, dtype=np.int64) * self.num_ids
        # Relative id -> on-disk column of its button, -1 for ids that set no button.
        self._id_to_col = np.full(self.num_ids, -1, np.int64)
        for b, i in MINEWORLD_BUTTON_IDS.items():
            self._id_to_col[i] = col[b] if b in col else -1

    def _options(self) -> dict[str, Any]:
        return {"camera_maxval": self.camera_maxval, "camera_binsize": self.camera_binsize,
                "camera_mu": self.camera_mu}

    # -- naming, for debugging and display
    def id_name(self, token: int) -> str:
        """Absolute id -> its vocabulary name ('forward', 'pitch_10', 'null', ...)."""
        v = int(token) - self.offset
        names = {i: n for n, i in MINEWORLD_BUTTON_IDS.items()}
        if v in names:
            return names[v]
        if self.pitch_id0 <= v < self.yaw_id0:
            return f"pitch_{v - self.pitch_id0}"
        if self.yaw_id0 <= v < self.bos_id:
            return f"yaw_{v - self.yaw_id0}"
        special = {self.bos_id: "bos", self.null_id: "null", self.eos_id: "eos"}
        if v in special:
            return special[v]
        raise ValueError(f"id {token} is not a MineRL action id (offset {self.offset})")

    def camera_bins(self, camera: np.ndarray) -> np.ndarray:
        """Degrees (any shape) -> bin indices, with this tokenizer's quantiser."""
        return mu_law_bins(camera, self.camera_maxval, self.camera_binsize, self.camera_mu)

    # -- one action: a direct, readable reference for the vectorised path
    def encode(self, action: Mapping[str, Any]) -> np.ndarray:  # (11,) int64
        if not isinstance(action, Mapping):
            raise ValueError(f"a MineRL action is a dict, got {type(action).__name__}")
        unknown = set(action) - set(self.space.buttons) - {"camera"}
        if unknown:
            raise ValueError(f"unknown {self.space.name} action keys: {sorted(unknown)}")
        pressed = {b: bool(action.get(b, 0)) for b in self.space.buttons}
        cam = np.asarray(action.get("camera", (0.0, 0.0)), dtype=np.float64)
        if cam.shape != (2,):
            raise ValueError(f"camera must be [pitch, yaw], got {action.get('camera')!r}")
        pitch_bin, yaw_bin = self.camera_bins(cam)

        null = self.null_id
        out = [null] * self.tokens_per_action
        out[0], out[10] = self.bos_id, self.eos_id
        out[1] = self.pitch_id0 + int(pitch_bin)
        out[2] = self.yaw_id0 + int(yaw_bin)
        for h in _HOTBARS:  # the lowest pressed hotbar key wins
            if pressed[h]:
                out[3] = MINEWORLD_BUTTON_IDS[h]
                break
        for slot, a, b in _PAIR_SLOTS:
            if pressed[a] and not pressed[b]:
                out[slot] = MINEWORLD_BUTTON_IDS[a]
            elif pressed[b] and not pressed[a]:
                out[slot] = MINEWORLD_BUTTON_IDS[b]
        for slot, k in _SINGLE_SLOTS:
            if pressed[k]:
                out[slot] = MINEWORLD_BUTTON_IDS[k]
        return np.asarray(out, dtype=np.int64) + self.offset

    def decode(self, tokens_A: Any) -> dict[str, Any]:
        row = self.decode_array(self._tokens_1d(tokens_A))[0]
        a: dict[str, Any] = {b: int(row[i] > 0.5) for i, b in enumerate(self.space.buttons)}
        a["camera"] = [float(self.bin_centres[self._rel(tokens_A, 1) - self.pitch_id0]),
                       float(self.bin_centres[self._rel(tokens_A, 2) - self.yaw_id0])]
        return a

    def _rel(self, tokens_A: Any, slot: int) -> int:
        return int(np.asarray(tokens_A)[slot]) - self.offset

    # -- many actions, vectorised over the on-disk array
    def encode_array(self, actions: np.ndarray) -> np.ndarray:  # (T, W) float -> (T, 11) int64
        x = np.asarray(actions)
        if x.ndim != 2 or x.shape[1] != self.space.width:
            raise ValueError(f"{self.space.name} actions on disk are [T, {self.space.width}], "
                             f"got shape {x.shape}")
        T = x.shape[0]
        down = x[:, : len(self.space.buttons)] > 0.5  # (T, n_buttons) bool
        null = self.null_id
        out = np.full((T, self.tokens_per_action), null, dtype=np.int64)
        out[:, 0] = self.bos_id
        out[:, 10] = self.eos_id
        out[:, 1] = self.pitch_id0 + self.camera_bins(x[:, self._pitch_col])
        out[:, 2] = self.yaw_id0 + self.camera_bins(x[:, self._yaw_col])

        hot = down[:, self._hotbar_cols]  # (T, 9)
        out[:, 3] = np.where(hot.any(axis=1),
                             MINEWORLD_BUTTON_IDS["hotbar.1"] + hot.argmax(axis=1), null)
        for slot, a, b in _PAIR_SLOTS:
            da, db = down[:, self._col[a]], down[:, self._col[b]]
            out[:, slot] = np.where(da & ~db, MINEWORLD_BUTTON_IDS[a],
                                    np.where(db & ~da, MINEWORLD_BUTTON_IDS[b], null))
        for slot, k in _SINGLE_SLOTS:
            out[:, slot] = np.where(down[:, self._col[k]], MINEWORLD_BUTTON_IDS[k], null)
        out += self.offset
        return out

    def decode_array(self, tokens_TA: np.ndarray) -> np.ndarray:  # (T, 11) -> (T, W) float32
        rel = self._tokens_2d(tokens_TA) - self.offset  # (T, 11)
        T = rel.shape[0]
        in_range = (rel >= 0) & (rel < self.num_ids)
        flat = np.where(in_range, rel, 0) + self._slot_base  # (T, 11) index into the table
        ok = in_range & self._allowed_table.reshape(-1)[flat]
        if not ok.all():
            t, s = map(int, np.argwhere(~ok)[0])
            raise ValueError(f"action token {int(rel[t, s]) + self.offset} at step {t} is not "
                             f"valid in slot {s} ({MINEWORLD_SLOTS[s]})")

        W = self.space.width
        out = np.zeros((T, W), np.float32)
        out_flat = out.reshape(-1)  # a view
        row_start = np.arange(T, dtype=np.int64) * W
        for slot in range(3, 10):  # hotbar, pairs, jump: a button id -> its column, null -> none
            col = self._id_to_col[rel[:, slot]]  # (T,)
            hit = col >= 0
            out_flat[row_start[hit] + col[hit]] = 1.0
        out[:, self._pitch_col] = self.bin_centres[rel[:, 1] - self.pitch_id0]
        out[:, self._yaw_col] = self.bin_centres[rel[:, 2] - self.yaw_id0]
        return out


# --------------------------------------------------------------------------- factory and config

_OPTIONS = {"discrete": (), "minerl": tuple(_CAMERA_DEFAULTS)}


def _kind_for(space: ActionSpace) -> str:
    return "discrete" if space.kind == "discrete" else "minerl"


def make_action_tokenizer(space: ActionSpace, offset: int, **opts: Any) -> ActionTokenizer:
    """The tokenizer for `space`: discrete spaces get one token per action; dict spaces (MineRL)
    get MineWorld's 11-token layout. `opts` (MineRL only): camera_maxval, camera_binsize,
    camera_mu. Unknown options raise ValueError."""
    kind = _kind_for(space)
    unknown = set(opts) - set(_OPTIONS[kind])
    if unknown:
        raise ValueError(f"unknown options for the {kind} action tokenizer: {sorted(unknown)}")
    if kind == "discrete":
        return DiscreteActionTokenizer(space, offset)
    return MineRLActionTokenizer(space, offset, **opts)


def action_tokenizer_from_config(d: Mapping[str, Any]) -> ActionTokenizer:
    """Inverse of `to_config()`. Unknown or missing keys raise ValueError."""
    if not isinstance(d, Mapping):
        raise ValueError(f"an action tokenizer config is a dict, got {type(d).__name__}")
    kind = d.get("kind")
    if kind not in _OPTIONS:
        raise ValueError(f"action tokenizer kind must be one of {sorted(_OPTIONS)}, got {kind!r}")
    known = {"kind", "offset", "space", *_OPTIONS[kind]}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown action tokenizer config keys: {sorted(unknown)}")
    missing = {"offset", "space"} - set(d)
    if missing:
        raise ValueError(f"action tokenizer config lacks {sorted(missing)}")
    space = d["space"] if isinstance(d["space"], ActionSpace) else ActionSpace.from_dict(d["space"])
    if _kind_for(space) != kind:
        raise ValueError(f"config kind {kind!r} does not fit a {space.kind} action space")
    opts = {k: d[k] for k in _OPTIONS[kind] if k in d}
    return make_action_tokenizer(space, d["offset"], **opts)
