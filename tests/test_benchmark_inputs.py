"""The benchmark scripts take their options as `worldsim`'s commands do: every option has help,
and bad input stops at parse time with one line, before a model loads."""

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

from _scripts import caught_parser

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
# cuda_check.py runs the GPU checks without options; _windows.py is their shared part.
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py") if p.stem not in ("_windows", "cuda_check"))


def _parser(name: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser benchmarks/NAME.py builds, caught as its main() asks it to parse."""
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import their shared _windows
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(sys, "argv", [f"{name}.py"])
    return caught_parser(mod.main)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_benchmark_option_has_help(name, monkeypatch):
    p = _parser(name, monkeypatch)
    missing = [a.option_strings[0] for a in p._actions
               if not isinstance(a, argparse._HelpAction) and not a.help]
    assert not missing, f"{name}.py: options without help: {missing}"


@pytest.mark.parametrize("name", SCRIPTS)
def test_bad_numbers_stop_at_parse_time_in_one_line(name, monkeypatch, capsys):
    p = _parser(name, monkeypatch)
    # Counts of things (sampler_variants' --draws is a list of draw numbers instead).
    counts = [a.option_strings[0] for a in p._actions if isinstance(a.default, int) and a.option_strings[0] in (
        "--episodes", "--frames", "--steps", "--draws", "--horizon", "--batch", "--contexts", "--sessions",
        "--threads", "--bucket", "--library-episodes", "--pool", "--client-procs", "--ahead")]
    assert counts, f"{name}.py takes no count to check"
    for opt in counts:
        for bad in ("0", "-3", "two"):
            with pytest.raises(SystemExit) as e:
                p.parse_args([opt, bad])
            assert e.value.code == 2
            err = capsys.readouterr().err.strip().splitlines()[-1]
            assert opt in err and ("at least 1" in err or "whole number" in err), err
