"""The `worldsim` command. Each subcommand lives in `worldsim.commands.<name>` and provides
`register(subparsers)`, which adds its parser and sets `func`; heavy imports happen inside
`func`, so `worldsim --help` is instant."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import warnings

from worldsim import __version__
from worldsim.commands._args import Parser
from worldsim.errors import WorldsimError

# In the order `worldsim --help` lists them.
COMMANDS = ("collect", "train-tokenizer", "tokenize", "train", "train-idm", "bench", "eval", "info", "serve",
            "play")


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    # One readable line per warning, not Python's two-line source excerpt. tqdm.write clears
    # any progress bar first and redraws it below, so the warning is not glued to the bar.
    from tqdm import tqdm

    tqdm.write(f"worldsim: warning: {message}", file=file or sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    # Subparsers are made with the parent's class, so every command's usage errors are one line.
    parser = Parser(
        prog="worldsim",
        description="An interactive world-model engine: collect games, train tokenizers and "
                    "world models, and play them.")
    parser.add_argument("--version", action="version", version=f"worldsim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"worldsim.commands.{name.replace('-', '_')}").register(sub)
    return parser


# The commands that keep their finished work when stopped and go on from it when run again.
RESUMABLE = frozenset({"collect", "tokenize", "train", "train-tokenizer", "train-idm"})


def _terminate(signum, frame) -> None:
    # `kill` (SIGTERM) stops a run the way Ctrl-C does: checkpoints are written on the way out.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the command's own parser, which points at its own --help
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    # Set for the command's run only: main() also runs inside other programs (the tests).
    old_showwarning, old_sigterm = warnings.showwarning, signal.signal(signal.SIGTERM, _terminate)
    warnings.showwarning = _warning_line
    try:
        return int(args.func(args) or 0)
    except WorldsimError as e:
        print(f"worldsim {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # The filesystem said no (a read-only or full disk, a path that cannot be made): the
        # user can fix that, and a traceback would hide the one line that says what happened.
        where = f": {e.filename}" if e.filename else ""
        if e.filename2:  # a rename: the second name is the file asked for, the first an atomic
            where = f": {e.filename2}"  # write's temporary, removed by now
        print(f"worldsim {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        then = "; finished work is kept, run again to resume" if args.command in RESUMABLE else ""
        print(f"worldsim {args.command}: interrupted{then}", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = old_showwarning
        signal.signal(signal.SIGTERM, old_sigterm)


if __name__ == "__main__":
    raise SystemExit(main())
