"""The project's scripts (scripts/ is not a package) loaded as modules, for tests."""

import argparse
import importlib.util
from pathlib import Path
from typing import Callable
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str) -> ModuleType:
    """scripts/NAME.py as a module named NAME."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def caught_parser(call: Callable[[], object]) -> argparse.ArgumentParser:
    """The argparse parser that `call()` builds, caught as it is asked to parse (nothing runs)."""
    import pytest

    caught = []

    class Caught(Exception):
        pass

    def grab(self, args=None, namespace=None):
        caught.append(self)
        raise Caught

    with pytest.MonkeyPatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", grab)
        with pytest.raises(Caught):
            call()
    return caught[0]
