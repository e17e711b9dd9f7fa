"""benchmarks/long_dream.py's check of the rolling cache: its exact-window engine must draw each
frame from exactly the last frames a training window would hold."""

import sys
from pathlib import Path

import torch

from worldsim.envs.crafter import CRAFTER_SPACE
from worldsim.inference.engine import DecoderSettings, Engine
from worldsim.inference.sampling import GREEDY
from worldsim.model import WorldModel, preset_config
from worldsim.tokenizers.action import make_action_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from long_dream import ExactWindowEngine  # noqa: E402


def test_exact_window_engine_draws_each_frame_from_a_fresh_window_of_its_last_frames():
    torch.manual_seed(0)
    model = WorldModel(preset_config("tiny", objective="block_diffusion")).eval()
    act = make_action_tokenizer(CRAFTER_SPACE, offset=model.cfg.codebook_size)
    decoder = DecoderSettings(name="block_diffusion", steps=2, sampling=GREEDY)
    exact = ExactWindowEngine(model, None, act, decoder, max_sessions=1)
    fresh = Engine(model, None, act, decoder, max_sessions=1)
    n = exact.cache.blocks
    g = torch.Generator().manual_seed(0)
    frames = list(torch.randint(0, model.cfg.codebook_size, (2, model.cfg.tokens_per_frame), generator=g))
    actions = [3]
    plan = [int(a) for a in torch.randint(0, 17, (3 * n,), generator=g)]
    s = exact.open(torch.stack(frames), actions)
    for a in plan:
        # The frame a fresh session draws from the last n frames (and the n - 1 actions between).
        with fresh.open(torch.stack(frames[-n:]), actions[-(n - 1):] if n > 1 else []) as f:
            f.step(a)
            want = f.last_frame.clone()
        s.step(a)
        assert torch.equal(s.last_frame, want)
        frames.append(s.last_frame.reshape(-1))
        actions.append(a)
    assert len(exact.history[s][0]) == n  # the history stays a window long
