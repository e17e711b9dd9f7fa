"""Golden frames: each decoder's tokens on a seeded tiny model, stored in tests/data.

The decoders' frames must not change when their code is reorganised: greedy and sampled, two
sessions stepped as one batch, long enough for the window to roll. An intended change of the
frames (a new algorithm, not a refactor) regenerates the file with
`python tests/test_golden.py` and says why in its commit.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim.envs.crafter import CRAFTER_SPACE
from worldsim.tokenizers.action import make_action_tokenizer
from worldsim.inference.engine import DecoderSettings, Engine
from worldsim.inference.sampling import GREEDY, SamplingSettings

from _models import tiny_model

GOLDEN = Path(__file__).parent / "data" / "golden_decoders.npz"
SAMPLED = SamplingSettings(temperature=1.0, top_k=20, top_p=0.9)
CASES = {  # name -> (objective, decoder settings[, sharpen])
    "ar_greedy": ("ar", DecoderSettings("ar", sampling=GREEDY)),
    "ar_sampled": ("ar", DecoderSettings("ar", sampling=SAMPLED)),
    "diagonal_greedy": ("ar", DecoderSettings("diagonal", window=2, sampling=GREEDY)),
    "diagonal_sampled": ("ar", DecoderSettings("diagonal", window=2, sampling=SAMPLED)),
    "block_diffusion_greedy": ("block_diffusion", DecoderSettings("block_diffusion", steps=4,
                                                                  sampling=GREEDY)),
    "block_diffusion_sampled": ("block_diffusion", DecoderSettings("block_diffusion", steps=4,
                                                                   sampling=SAMPLED)),
    "block_diffusion_threshold": ("block_diffusion", DecoderSettings(
        "block_diffusion", steps=4, threshold=0.3, sampling=SamplingSettings(temperature=1.0))),
    # Matrices scaled up: greedy tokens that depend on their context (see test_decoders.tiny).
    "ar_sharp": ("ar", DecoderSettings("ar", sampling=GREEDY), 6.0),
    "diagonal_sharp": ("ar", DecoderSettings("diagonal", window=2, sampling=GREEDY), 6.0),
    "block_diffusion_sharp": ("block_diffusion", DecoderSettings("block_diffusion", steps=4,
                                                                 sampling=GREEDY), 6.0),
}
PLAN = [1, 4, 4, 2, 5, 0, 16, 3]  # 8 frames: the tiny model's window (3-4 blocks) rolls


def dream(objective: str, settings: DecoderSettings, sharpen: float = 1.0) -> np.ndarray:
    """Two sessions with different contexts and seeds, stepped together -> tokens (2, T, N)."""
    model = tiny_model(objective, sharpen)
    cfg = model.cfg
    act = make_action_tokenizer(CRAFTER_SPACE, offset=cfg.codebook_size)
    eng = Engine(model, None, act, settings, max_sessions=2, seed=3)
    g = torch.Generator().manual_seed(1)
    sessions = []
    for i, c in enumerate((2, 3)):
        frames = torch.randint(0, cfg.codebook_size, (c, cfg.tokens_per_frame), generator=g)
        actions = [int(a) for a in torch.randint(0, 17, (c - 1,), generator=g)]
        sessions.append(eng.open(frames, actions, seed=20 + i))
    out = []
    for t, a in enumerate(PLAN):
        eng.step({s: (a + 3 * i) % 17 for i, s in enumerate(sessions)})
        out.append(torch.cat([s.last_frame for s in sessions]).numpy())
    return np.stack(out, 1).astype(np.int16)  # (2, T, N)


@pytest.mark.parametrize("case", sorted(CASES))
def test_frames_match_the_golden_ones(case):
    golden = np.load(GOLDEN)[case]
    got = dream(*CASES[case])
    assert got.shape == golden.shape
    np.testing.assert_array_equal(got, golden)


if __name__ == "__main__":
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, **{name: dream(*c) for name, c in CASES.items()})
    print(f"wrote {GOLDEN}")
