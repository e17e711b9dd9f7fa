"""Typed configs: every component has one dataclass config, saved in its bundle; unknown keys raise."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def strict_from_dict(cls: type[T], d: dict[str, Any], what: str) -> T:
    """Build dataclass `cls` from `d`, refusing keys it does not define (a typo or a config from
    another version must not be silently dropped)."""
    if not isinstance(d, dict):  # a hand-edited config: set("tiny") would be "unknown keys ['i', 'n', ...]"
        raise ValueError(f"a {what} config must be a JSON object, not {type(d).__name__}")
    unknown = set(d) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
    if unknown:
        raise ValueError(f"unknown {what} config keys: {sorted(unknown)}")
    return cls(**d)
