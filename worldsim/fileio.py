"""Atomic file writes: a kill mid-write never leaves a half-written file under the final name.

Each writer writes a temporary file in the destination folder (same filesystem), flushes and
fsyncs it, then renames it over the destination with `os.replace`, which is atomic on POSIX and
Windows. Readers therefore see either the old file or the new one, never a torn one.

While a file is written, SIGINT and SIGTERM are held back and delivered once it is in place:
a second Ctrl-C during the checkpoint written on the way out of a run cannot destroy it. The
file gets the permissions any new file would (0666 less the user's umask), not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np


_DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them to the handlers that were
    in place. Only the main thread may set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in _DEFERRED}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        for s in dict.fromkeys(pending):  # twice Ctrl-C is still one interruption
            signal.raise_signal(s)


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (os.umask would set it
    for every thread for a moment)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary sibling of `path` for writing; on success rename it to `path`. Text is
    written as UTF-8 whatever the locale, so that another machine reads what this one wrote."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with deferred_signals():
        # The temporary's name is the final one's (cut short: with ".", "." and 12 more characters
        # a name near the filesystem's 255-byte limit would no longer fit) and mkstemp's random part.
        prefix = "." + os.fsdecode(os.fsencode(path.name)[:200]) + "."
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
        except OSError as e:  # a read-only folder: name the file asked for, not a random temporary
            raise OSError(e.errno, e.strerror, str(path)) from e
        try:
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
                yield f
                f.flush()
                if hasattr(os, "fchmod"):  # POSIX
                    os.fchmod(f.fileno(), 0o666 & ~_umask())
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)  # the rename itself outlives a power cut only once its folder is on disk
        except BaseException as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
                # A full disk (no name) or a refused rename (the temporary's name, removed just
                # now): the line the user reads names the file that was not written.
                raise OSError(e.errno, e.strerror, str(path)) from e
            raise


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (POSIX; where folders cannot be opened, as on Windows, nothing)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """`obj` as JSON, a NaN or infinity written as null: JSON has no such numbers, and Python's
    `NaN` in a file is refused by every other reader (a browser, jq, another language)."""
    with atomic_open(path, "w") as f:
        json.dump(_finite(obj), f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


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


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (a weights file can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
