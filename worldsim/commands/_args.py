"""Checked argument types for every command: bad input stops at parse time with one line.

Use them as argparse `type=` callables:

    p.add_argument("--steps", type=positive_int, default=100)
    p.add_argument("--out", type=out_dir, required=True)
    p.add_argument("--device", type=device, default="auto")

A failed check raises `argparse.ArgumentTypeError`; the CLI's parser prints it as
`worldsim CMD: error: argument --steps: must be at least 1, got 0` and exits with status 2,
before any data is loaded or any training starts. Each callable returns the parsed value (paths
stay strings, as the commands pass them on).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def _float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return x + 0.0  # -0 (or -1e-400) is 0: a negative zero would print as "-0" wherever it is shown


def positive_int(text: str) -> int:
    n = _int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return n


def nonneg_int(text: str) -> int:
    n = _int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return n


def seed(text: str) -> int:
    """A random seed: a whole number in [0, 2**31 - 1]. Seeds go to torch and numpy generators,
    some offset or multiplied on the way (a worker's, a draw's): 31 bits leave room for that,
    and are what the wire protocol carries."""
    from worldsim.protocol import MAX_SEED

    n = nonneg_int(text)
    if n > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SEED}, got {text}")
    return n


def positive_float(text: str) -> float:
    x = _float(text)
    if x <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return x


def nonneg_float(text: str) -> float:
    x = _float(text)
    if x < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return x


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    x = _float(text)
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return x


def out_dir(text: str) -> str:
    """A folder to write into: it may be missing (it will be made), but neither it nor a parent
    may be a file, and the nearest existing parent must be writable."""
    if not text:
        raise argparse.ArgumentTypeError("must name a folder, got ''")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is an existing file, not a folder")
    parent = path
    while not parent.exists():
        if parent.is_symlink():  # a link to nowhere: making the folder fails with "File exists"
            raise argparse.ArgumentTypeError(f"cannot make {text}: {parent} is a link to a missing "
                                             f"{os.readlink(parent)}")
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot make {text}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write in {parent} (permission denied)")
    return text


def out_file(text: str) -> str:
    """A file to write at the end of a command: checked now, so that a path that cannot be
    written fails before the work rather than after it. It may not be a folder; its folder is
    checked as `out_dir` checks one (it will be made if missing)."""
    if not text:
        raise argparse.ArgumentTypeError("must name a file, got ''")
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    out_dir(str(path.parent))
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text} (permission denied)")
    return text


def existing_dir(text: str) -> str:
    """A folder that must already exist (what it holds is checked by whoever reads it)."""
    if not text:  # Path("") is the working folder: --data "" would read whatever is there
        raise argparse.ArgumentTypeError("must name a folder, got ''")
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such folder: {text}")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return text


def device(text: str) -> str:
    """auto | cpu | cuda | cuda:N | mps, refused at parse time where this machine lacks it."""
    from worldsim.device import device_problem

    problem = device_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text}: {problem}")
    return text


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: `worldsim CMD: error: ... (see worldsim CMD --help)`
    instead of a usage block that pushes the message off the first line."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
