import os
import signal

import numpy as np
import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
# The Ctrl-C tests need Ctrl-C: a shell that starts the suite in the background (`cmd &`) has it
# ignored, and the runs they start would inherit that. Python's own handler, as in a terminal.
signal.signal(signal.SIGINT, signal.default_int_handler)


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


@pytest.fixture(scope="session")
def tiny_tokens(crafter_store, tmp_path_factory):
    """A tiny image tokenizer bundle and the crafter store tokenized with it: (bundle, shards)."""
    from worldsim.data.shards import tokenize_store
    from worldsim.train_tokenizer import TokenizerTrainSettings, train_tokenizer

    root = tmp_path_factory.mktemp("tok")
    s = TokenizerTrainSettings(steps=3, batch=8, eval_frames=16, checkpoint_seconds=1e9)
    train_tokenizer(crafter_store, root / "tok", preset="tiny", settings=s, progress=False)
    tokenize_store(crafter_store, root / "tok", root / "shards", progress=False)
    return root / "tok", root / "shards"
