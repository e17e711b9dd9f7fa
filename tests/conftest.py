import os

import numpy as np
import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


@pytest.fixture(scope="session")
def crafter_store(tmp_path_factory):
    """A small real Crafter store (6 episodes of up to 40 steps), collected once per session."""
    from worldsim.data.collect import collect_crafter

    out = tmp_path_factory.mktemp("crafter") / "store"
    collect_crafter(out, episodes=6, steps=40, seed=3, size=72, workers=1, progress=False)
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(0)
