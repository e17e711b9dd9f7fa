"""The wire protocol (v1): typed messages, packed as msgpack maps over binary websocket frames.

Every message is a map with a "type" key and that type's fields, nothing else. `unpack`
validates every field on receipt (type, range, size) and raises `ProtocolError` with a code the
server sends back in an `error` message. `docs/protocol.md` describes the exchange for writers of
clients in other languages.

This module imports only msgpack and the standard library, so a client needs no torch.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, ClassVar, Mapping, Union

import msgpack

VERSION = 1
ENCODINGS = ("jpeg", "raw")
# Largest message a client may send (the server's default; welcome states the one in force).
MAX_CLIENT_MESSAGE = 4096
# Largest message a server may send: a raw frame and its ground truth, with room to spare.
MAX_SERVER_MESSAGE = 64 * 1024 * 1024
MAX_SEQ = 2**53 - 1  # exact in a double, for clients written in JavaScript
MAX_SEED = 2**31 - 1
MAX_BUTTONS = 64
# Bounds of what welcome states of a server's settings (a server refuses to start outside them)
MAX_FPS = 1000.0
MAX_STEPS = 256
MAX_TEMPERATURE = 100.0
CAMERA_LIMIT = 180.0  # degrees of pitch or yaw one action may turn

# Error codes, sent in `error` messages.
BAD_MESSAGE = "bad_message"  # not a msgpack map, or trailing bytes
UNKNOWN_TYPE = "unknown_type"
BAD_FIELD = "bad_field"  # a missing, unknown, wrongly typed, out-of-range or oversized field
BAD_ACTION = "bad_action"  # an action outside the session's action space
BAD_VERSION = "bad_version"
BAD_TOKEN = "bad_token"
NOT_READY = "not_ready"  # a message that needs a session, before `hello`
RATE_LIMITED = "rate_limited"
SERVER_FULL = "server_full"
UNAVAILABLE = "unavailable"  # a feature this server or scene does not offer
INTERNAL = "internal"


class ProtocolError(ValueError):
    """A message that breaks the protocol: `code` is one of the error codes above."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# -- field checks ----------------------------------------------------------------------------
# Each returns the checked value or raises ProtocolError(BAD_FIELD, ...) naming the field.

Check = Callable[[str, Any], Any]


def _fail(name: str, what: str) -> ProtocolError:
    return ProtocolError(BAD_FIELD, f"field {name!r} {what}")


def integer(lo: int, hi: int) -> Check:
    def check(name: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _fail(name, f"must be an integer, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise _fail(name, f"must lie in [{lo}, {hi}], got {v}")
        return v
    return check


def number(lo: float, hi: float) -> Check:
    def check(name: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _fail(name, f"must be a number, got {type(v).__name__}")
        if not (math.isfinite(v) and lo <= v <= hi):
            raise _fail(name, f"must be a finite number in [{lo}, {hi}], got {v}")
        return float(v)
    return check


def boolean(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _fail(name, f"must be true or false, got {type(v).__name__}")
    return v


def text(max_len: int, choices: tuple[str, ...] = ()) -> Check:
    def check(name: str, v: Any) -> str:
        if not isinstance(v, str):
            raise _fail(name, f"must be a string, got {type(v).__name__}")
        if len(v) > max_len:
            raise _fail(name, f"must be at most {max_len} characters, got {len(v)}")
        if choices and v not in choices:
            raise _fail(name, f"must be one of {', '.join(choices)}, got {v!r}")
        return v
    return check


def blob(max_len: int) -> Check:
    def check(name: str, v: Any) -> bytes:
        if not isinstance(v, (bytes, bytearray)):
            raise _fail(name, f"must be binary, got {type(v).__name__}")
        if len(v) > max_len:
            raise _fail(name, f"must be at most {max_len} bytes, got {len(v)}")
        return bytes(v)
    return check


def string_list(max_items: int, max_len: int) -> Check:
    item = text(max_len)

    def check(name: str, v: Any) -> list[str]:
        if not isinstance(v, list) or len(v) > max_items:
            raise _fail(name, f"must be a list of at most {max_items} strings")
        return [item(name, x) for x in v]
    return check


def number_map(max_items: int) -> Check:
    key, value = text(32), number(-1e12, 1e12)

    def check(name: str, v: Any) -> dict[str, float]:
        if not isinstance(v, dict) or len(v) > max_items:
            raise _fail(name, f"must be a map of at most {max_items} numbers")
        return {key(name, k): value(f"{name}.{k}", x) for k, x in v.items()}
    return check


def action_value(name: str, v: Any) -> int | dict[str, Any]:
    """An action in some action space: an integer (discrete spaces), or a map of pressed
    buttons (0 or 1, or booleans) with an optional "camera": [pitch, yaw] in degrees. Whether it
    fits the session's space is `check_action`'s business."""
    if isinstance(v, int) and not isinstance(v, bool):
        return integer(0, 65535)(name, v)
    if not isinstance(v, dict):
        raise _fail(name, f"must be an integer or a map, got {type(v).__name__}")
    if len(v) > MAX_BUTTONS + 1:
        raise _fail(name, f"has {len(v)} keys; at most {MAX_BUTTONS + 1}")
    out: dict[str, Any] = {}
    for k, x in v.items():
        k = text(64)(f"{name} key", k)
        if k == "camera":
            if not isinstance(x, list) or len(x) != 2:
                raise _fail(f"{name}.camera", "must be [pitch, yaw]")
            out[k] = [number(-CAMERA_LIMIT, CAMERA_LIMIT)(f"{name}.camera", c) for c in x]
        elif isinstance(x, bool):
            out[k] = int(x)
        else:
            out[k] = integer(0, 1)(f"{name}.{k}", x)
    return out


def action_space_value(name: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _fail(name, "must be a map")
    spec = {"name": text(64), "kind": text(16, ("discrete", "dict")),
            "names": string_list(4096, 64), "buttons": string_list(MAX_BUTTONS, 64),
            "camera": boolean}
    unknown = set(v) - set(spec)
    if unknown:
        raise _fail(name, f"has unknown keys {sorted(map(str, unknown))}")
    return {k: check(f"{name}.{k}", v[k]) for k, check in spec.items() if k in v}


def check_action(action: int | Mapping[str, Any], space: Mapping[str, Any]) -> int | dict[str, Any]:
    """`action` (already through `action_value`) against an action space as welcome sends it
    (`ActionSpace.to_dict()`): the full action, buttons not named are 0. Raises
    ProtocolError(BAD_ACTION)."""
    if space["kind"] == "discrete":
        n = len(space["names"])
        if isinstance(action, bool) or not isinstance(action, int) or not 0 <= action < n:
            raise ProtocolError(BAD_ACTION, f"a {space['name']} action is an integer in [0, {n})")
        return action
    if not isinstance(action, Mapping):
        raise ProtocolError(BAD_ACTION, f"a {space['name']} action is a map of buttons")
    known = set(space["buttons"]) | ({"camera"} if space.get("camera") else set())
    unknown = set(action) - known
    if unknown:
        raise ProtocolError(BAD_ACTION, f"unknown {space['name']} buttons: {sorted(unknown)[:5]}")
    full: dict[str, Any] = {b: int(action.get(b, 0)) for b in space["buttons"]}
    if space.get("camera"):
        full["camera"] = [float(c) for c in action.get("camera", (0.0, 0.0))]
    return full


# -- messages --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hello:
    """Client -> server, first: the protocol version and how frames should come."""
    TYPE: ClassVar[str] = "hello"
    version: int = VERSION
    encoding: str = "jpeg"
    quality: int = 85  # JPEG quality
    token: str | None = None
    seed: int | None = None  # the game's seed; the server picks one if absent
    ground_truth: bool = False  # also step the real game and send its frame
    window: int = 2  # frames the server may send before the client acknowledges one


@dataclass(frozen=True)
class Action:
    """Client -> server: the player's input now. `seq` increases with every action."""
    TYPE: ClassVar[str] = "action"
    seq: int
    action: int | dict[str, Any]


@dataclass(frozen=True)
class Reset:
    """Client -> server: start again from a real game frame (a new seed if given)."""
    TYPE: ClassVar[str] = "reset"
    seed: int | None = None


@dataclass(frozen=True)
class Config:
    """Client -> server: switch the decoder or its steps for the following frames, or pause
    the session (no frames, the game clock stops) and resume it."""
    TYPE: ClassVar[str] = "config"
    decoder: str | None = None
    steps: int | None = None
    paused: bool | None = None


@dataclass(frozen=True)
class Ack:
    """Client -> server: frames up to `index` have arrived (opens the send window)."""
    TYPE: ClassVar[str] = "ack"
    index: int


@dataclass(frozen=True)
class Welcome:
    """Server -> client, after hello: the session and what its frames and actions look like."""
    TYPE: ClassVar[str] = "welcome"
    session: int
    width: int
    height: int
    fps: float  # 0: a frame per action, as fast as the engine makes them
    action_space: dict[str, Any]
    encoding: str
    ground_truth: bool
    decoder: str
    steps: int
    decoders: list[str]
    seed: int
    limits: dict[str, float] = field(default_factory=dict)
    temperature: float | None = None  # the sampling temperature (0: greedy); absent from older servers
    version: int = VERSION


@dataclass(frozen=True)
class Frame:
    """Server -> client: frame `index` of the session (0 is the real frame it starts from),
    including every action up to `seq` (-1: none yet)."""
    TYPE: ClassVar[str] = "frame"
    index: int
    seq: int
    encoding: str
    width: int
    height: int
    image: bytes
    truth: bytes | None = None  # the real game's frame under the same actions
    step: int = 0  # the game clock: steps since the game's reset
    decoder: str | None = None  # the decoder that dreamed it; absent for a real frame
    timings: dict[str, float] = field(default_factory=dict)  # ms: model, decode, encode, ...
    # the action that made it, as the server applied it (inputs since the last frame merged);
    # absent for a real frame
    action: int | dict[str, Any] | None = None


@dataclass(frozen=True)
class Error:
    """Server -> client: what went wrong; the session goes on unless the socket closes."""
    TYPE: ClassVar[str] = "error"
    code: str
    message: str


Message = Union[Hello, Action, Reset, Config, Ack, Welcome, Frame, Error]
_MAX_IMAGE = MAX_SERVER_MESSAGE // 2

# type -> (class, {field: check}); a field without a default is required.
SCHEMA: dict[str, tuple[type, dict[str, Check]]] = {
    "hello": (Hello, {"version": integer(0, 2**16), "encoding": text(8, ENCODINGS),
                      "quality": integer(1, 100), "token": text(256), "seed": integer(0, MAX_SEED),
                      "ground_truth": boolean, "window": integer(1, 64)}),
    "action": (Action, {"seq": integer(0, MAX_SEQ), "action": action_value}),
    "reset": (Reset, {"seed": integer(0, MAX_SEED)}),
    "config": (Config, {"decoder": text(32), "steps": integer(1, MAX_STEPS), "paused": boolean}),
    "ack": (Ack, {"index": integer(0, MAX_SEQ)}),
    "welcome": (Welcome, {"session": integer(0, MAX_SEQ), "width": integer(1, 8192),
                          "height": integer(1, 8192), "fps": number(0, MAX_FPS),
                          "action_space": action_space_value, "encoding": text(8, ENCODINGS),
                          "ground_truth": boolean, "decoder": text(32), "steps": integer(1, MAX_STEPS),
                          "decoders": string_list(16, 32), "seed": integer(0, MAX_SEED),
                          "limits": number_map(16), "temperature": number(0, MAX_TEMPERATURE),
                          "version": integer(0, 2**16)}),
    "frame": (Frame, {"index": integer(0, MAX_SEQ), "seq": integer(-1, MAX_SEQ),
                      "encoding": text(8, ENCODINGS), "width": integer(1, 8192),
                      "height": integer(1, 8192), "image": blob(_MAX_IMAGE),
                      "truth": blob(_MAX_IMAGE), "step": integer(0, MAX_SEQ), "decoder": text(32),
                      "timings": number_map(16), "action": action_value}),
    "error": (Error, {"code": text(32), "message": text(1024)}),
}
CLIENT_TYPES = ("hello", "action", "reset", "config", "ack")
SERVER_TYPES = ("welcome", "frame", "error")


def pack(msg: Message) -> bytes:
    """A message -> msgpack bytes. Fields left at None are not sent."""
    d: dict[str, Any] = {"type": msg.TYPE}
    for f in fields(msg):
        v = getattr(msg, f.name)
        if v is not None:
            d[f.name] = v
    return msgpack.packb(d, use_bin_type=True)


def unpack(data: bytes | str, max_bytes: int = MAX_SERVER_MESSAGE,
           types: tuple[str, ...] | None = None) -> Message:
    """msgpack bytes -> a validated message, or ProtocolError. `types` limits the types
    accepted (a server takes CLIENT_TYPES); any other type is UNKNOWN_TYPE."""
    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolError(BAD_MESSAGE, "messages are binary websocket frames of msgpack")
    if len(data) > max_bytes:
        raise ProtocolError(BAD_MESSAGE, f"message of {len(data)} bytes; the limit is {max_bytes}")
    try:
        # Size limits bound what a hostile message can make the unpacker allocate.
        d = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, use_list=True,
                            max_str_len=max_bytes, max_bin_len=max_bytes, max_array_len=4096,
                            max_map_len=4096, max_ext_len=0)
    except msgpack.ExtraData:
        raise ProtocolError(BAD_MESSAGE, "bytes after the msgpack message: one message a frame") from None
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        # msgpack's own errors (FormatError, StackError) subclass ValueError; a map key that is
        # not a string is refused by strict_map_key with a ValueError too.
        what = ("a map key that is not a string" if "key" in str(e).lower() else
                "bytes that do not decode as msgpack")
        raise ProtocolError(BAD_MESSAGE, f"not a message: {what}") from None
    if not isinstance(d, dict):
        raise ProtocolError(BAD_MESSAGE, f"a message is a map, got {type(d).__name__}")
    kind = d.get("type")
    if kind is None:
        raise ProtocolError(UNKNOWN_TYPE, "a message needs a 'type' field")
    if not isinstance(kind, str) or kind not in SCHEMA or (types is not None and kind not in types):
        shown = repr(kind)[:32] if isinstance(kind, (str, int, float, bool)) else f"a {type(kind).__name__}"
        raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {shown}")
    cls, spec = SCHEMA[kind]
    unknown = [k for k in d if k != "type" and k not in spec]
    # A server may add fields to its messages within a version (a client skips what it does not
    # know); a client's message is checked whole.
    if unknown and kind in SERVER_TYPES:
        d = {k: v for k, v in d.items() if k not in unknown}
    elif unknown:
        raise ProtocolError(BAD_FIELD, f"{kind} has unknown fields {sorted(map(str, unknown))[:5]}")
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in d and d[f.name] is not None:
            values[f.name] = spec[f.name](f.name, d[f.name])
        elif f.default is MISSING and f.default_factory is MISSING:
            raise _fail(f.name, f"is required in {kind}")
    msg = cls(**values)
    if isinstance(msg, Frame) and msg.encoding == "raw":
        need = msg.width * msg.height * 3
        for name, img in (("image", msg.image), ("truth", msg.truth)):
            if img is not None and len(img) != need:
                raise _fail(name, f"must hold {need} bytes of RGB for {msg.width}x{msg.height}, got {len(img)}")
    return msg

