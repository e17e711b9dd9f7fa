"""Atomic file writes: a kill mid-write never leaves a half-written file under the final name.

Each writer writes a temporary file in the destination folder (same filesystem), flushes and
fsyncs it, then renames it over the destination with `os.replace`, which is atomic on POSIX and
Windows. Readers therefore see either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary sibling of `path` for writing; on success rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def atomic_save_npz(path: str | os.PathLike, compress: bool = True, **arrays: np.ndarray) -> None:
    save = np.savez_compressed if compress else np.savez
    with atomic_open(path, "wb") as f:
        save(f, **arrays)


def clean_stale_temps(folder: str | os.PathLike) -> int:
    """Remove temporaries left by a killed writer. Returns how many were removed."""
    n = 0
    for p in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n
