"""Helpers for the server and client tests: a tiny Crafter bundle with random weights and a
real server on a free loopback port."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

SIZE = 36  # Crafter frames of 36x36 (a multiple of its 9 tiles), 3x3 tokens of 12x12 pixels


def tiny_bundle(folder: Path, objective: str = "block_diffusion", game: str = "crafter") -> Path:
    """A Crafter (or MineRL-action) bundle with a tiny random world model and image tokenizer
    (milliseconds a frame on one CPU thread)."""
    import torch

    from worldsim import bundle
    from worldsim.envs.crafter import CRAFTER_FPS, CRAFTER_SPACE
    from worldsim.envs.minerl_space import MINERL_FPS, MINERL_SPACE
    from worldsim.model import WorldModel, preset_config
    from worldsim.tokenizers.action import make_action_tokenizer
    from worldsim.tokenizers.image import ImageTokenizer, ImageTokenizerConfig

    torch.manual_seed(0)
    space, fps = (CRAFTER_SPACE, CRAFTER_FPS) if game == "crafter" else (MINERL_SPACE, MINERL_FPS)
    actions = make_action_tokenizer(space, 64)
    tok_cfg = ImageTokenizerConfig(height=SIZE, width=SIZE, patch=SIZE // 3, channels=16,
                                   enc_blocks=1, dec_blocks=1, codebook_size=64, code_dim=8)
    cfg = preset_config("tiny", tokens_per_frame=9, grid=(3, 3), objective=objective,
                        action_tokens=actions.tokens_per_action, action_ids=actions.num_ids)
    folder.mkdir(parents=True, exist_ok=True)
    bundle.save_weights(folder, "model", WorldModel(cfg))
    bundle.save_weights(folder, "image_tokenizer", ImageTokenizer(tok_cfg))
    bundle.update_config(folder, image_tokenizer=tok_cfg.to_dict(), model=cfg.to_dict(),
                         action_tokenizer=actions.to_config(), env=game, action_space=space.to_dict(),
                         frame_size=[SIZE, SIZE], fps=fps)
    return folder


def scene_store(folder: Path, game: str = "crafter", steps: int = 12) -> Path:
    """An episode store of one recorded episode of random frames (episode id "000000")."""
    import numpy as np

    from worldsim.data.store import EpisodeStore
    from worldsim.envs.crafter import CRAFTER_SPACE
    from worldsim.envs.minerl_space import MINERL_SPACE

    space = CRAFTER_SPACE if game == "crafter" else MINERL_SPACE
    rng = np.random.default_rng(0)
    store = EpisodeStore.create(folder, env=game, action_space=space, frame_size=(SIZE, SIZE), fps=10)
    frames = rng.integers(0, 256, (steps + 1, SIZE, SIZE, 3), dtype=np.uint8)
    actions = (rng.integers(0, space.n, steps).astype(np.int16) if space.kind == "discrete"
               else np.zeros((steps, space.width), np.float32))
    store.write_episode("000000", frames, actions)
    store.refresh()
    return folder


@contextlib.contextmanager
def running_server(bundle_dir: Path, fps: float = 0, max_sessions: int = 4, scene: str | None = None,
                   **settings) -> Iterator:
    """A real FrameServer on 127.0.0.1 with a free port, in a background thread."""
    from worldsim.inference.engine import DecoderSettings
    from worldsim.inference.sampling import SamplingSettings
    from worldsim.inference.server import ServerSettings, ServerThread, make_server

    server = make_server(bundle_dir, ServerSettings(host="127.0.0.1", port=0, max_sessions=max_sessions, **settings),
                         fps=fps, decoder=DecoderSettings(steps=2, sampling=SamplingSettings(0.0)), scene=scene)
    thread = ServerThread(server).start()
    try:
        yield thread
    finally:
        thread.stop()


def wait_until(cond, timeout: float) -> bool:
    """Poll `cond` until it holds or `timeout` seconds pass; its last answer."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()
