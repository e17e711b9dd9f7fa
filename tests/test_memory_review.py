"""Review of world memory (inference/memory.py and its engine wiring): each test fails on the code
as reviewed and passes once the bug it names is fixed."""

import numpy as np
import pytest
import torch

from worldsim.envs.crafter import CRAFTER_SPACE
from worldsim.inference import decode_block_diffusion
from worldsim.inference.common import FrameStats
from worldsim.inference.engine import DecoderSettings, Engine
from worldsim.inference.memory import Geometry, TileMemory
from worldsim.inference.sampling import GREEDY
from worldsim.model import WorldModel, preset_config
from worldsim.tokenizers.action import make_action_tokenizer

GEO = Geometry(rows=4, cols=4, map_rows=3)  # the tiny preset's 4x4 grid: 3 rows of map, 1 inventory
NAMES = CRAFTER_SPACE.names


class CodeImages:
    """An image tokenizer whose image of a frame shows its codes (one pixel per token)."""

    def decode(self, frame_BN):
        return frame_BN.reshape(-1, 4, 4, 1).expand(-1, 4, 4, 3).to(torch.uint8)


def test_the_image_handed_back_shows_the_remembered_tiles(monkeypatch):
    """Engine.step decoded the images before memory set remembered tiles back: the player (and
    `worldsim eval --memory`'s image metrics) saw the forgotten frame while the cache and
    last_frame held the remembered one."""
    big = np.random.default_rng(0).integers(0, 60, (32, 32))
    state = {"x": 16}

    def view(x):
        v = big[15:18, x - 2:x + 2].copy()
        v[1, 2] = 62  # the player
        return torch.as_tensor(np.concatenate([v, np.full((1, 4), 63)]).reshape(-1))

    def forgetful(model, cache, rows, last, action_BA, *args, **kwargs):
        dx = 1 if int(action_BA[0, 0]) == right_token else -1
        state["x"] += dx
        f = view(state["x"]).reshape(4, 4)
        f[:3, 3 if dx > 0 else 0] = 61  # the column coming into view drawn anew
        return f.reshape(1, -1), FrameStats()

    torch.manual_seed(0)
    model = WorldModel(preset_config("tiny", objective="block_diffusion")).eval()
    act = make_action_tokenizer(CRAFTER_SPACE, offset=model.cfg.codebook_size)
    right_token = int(act.encode(NAMES.index("move_right"))[0])
    eng = Engine(model, CodeImages(), act, DecoderSettings("block_diffusion", steps=2), memory=GEO)
    start = view(16)
    s = eng.open(start[None], [])
    monkeypatch.setattr(decode_block_diffusion, "decode", forgetful)
    for k in ["move_right"] * 3 + ["move_left"] * 3:
        image, _ = s.step(NAMES.index(k))
        assert torch.equal(torch.as_tensor(image[..., 0]).reshape(-1).long(), s.last_frame[0].cpu())
    assert s.memory.redrawn == 3 * 3
    assert torch.equal(torch.as_tensor(image[..., 0]).reshape(-1).long(), start)


def test_next_token_models_are_refused_world_memory():
    """ar and diagonal write a frame's tokens (all but its last) into the KV cache while drawing it,
    so memory could only change the frame shown, not the one the model goes on from: an ar model
    gets no memory (refused when asked; none by default from a bundle)."""
    from worldsim.inference.memory import geometry_for
    from worldsim.tokenizers.tile import TileTokenizer, TileTokenizerConfig

    torch.manual_seed(0)
    model = WorldModel(preset_config("tiny", objective="ar")).eval()
    act = make_action_tokenizer(CRAFTER_SPACE, offset=model.cfg.codebook_size)
    with pytest.raises(ValueError, match="block-diffusion"):
        Engine(model, None, act, DecoderSettings("ar", sampling=GREEDY), memory=GEO)
    tile = TileTokenizer(TileTokenizerConfig())
    assert geometry_for(tile, act, "ar") is None
    assert geometry_for(tile, act, "block_diffusion") is not None


def test_every_context_frame_goes_on_the_map(monkeypatch):
    """A session opened from several context frames (a recorded scene) remembers the places the
    earlier ones showed, not only the last one's."""
    big = np.random.default_rng(1).integers(0, 60, (32, 32))

    def view(x):
        v = big[15:18, x - 2:x + 2].copy()
        v[1, 2] = 62
        return torch.as_tensor(np.concatenate([v, np.full((1, 4), 63)]).reshape(-1))

    torch.manual_seed(0)
    model = WorldModel(preset_config("tiny", objective="block_diffusion")).eval()
    act = make_action_tokenizer(CRAFTER_SPACE, offset=model.cfg.codebook_size)
    eng = Engine(model, None, act, DecoderSettings("block_diffusion", steps=2), memory=GEO)
    left = NAMES.index("move_left")
    # Context: the player walked two tiles left, from x=16 to x=14.
    s = eng.open(torch.stack([view(16), view(15), view(14)]), [left, left])
    assert s.memory.pos == (0, -2) and s.memory.known == s.memory.redrawn == 0
    # Column x+1 of the first frame (now two tiles right of the view's edge) is on the map.
    for r in range(3):
        assert s.memory.tiles[(r - 1, 1)] == int(big[15 + r, 17])
