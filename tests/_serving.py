"""Helpers for the server and client tests: a tiny Crafter bundle with random weights and a
real server on a free loopback port."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

SIZE = 36  # Crafter frames of 36x36 (a multiple of its 9 tiles), 3x3 tokens of 12x12 pixels


def tiny_bundle(folder: Path, objective: str = "block_diffusion") -> Path:
    """A Crafter bundle with a tiny random world model and image tokenizer (milliseconds a
    frame on one CPU thread)."""
    import torch

    from worldsim import bundle
    from worldsim.envs.crafter import CRAFTER_FPS, CRAFTER_SPACE
    from worldsim.model import WorldModel, preset_config
    from worldsim.tokenizers.action import make_action_tokenizer
    from worldsim.tokenizers.image import ImageTokenizer, ImageTokenizerConfig

    torch.manual_seed(0)
    tok_cfg = ImageTokenizerConfig(height=SIZE, width=SIZE, patch=SIZE // 3, channels=16,
                                   enc_blocks=1, dec_blocks=1, codebook_size=64, code_dim=8)
    cfg = preset_config("tiny", tokens_per_frame=9, grid=(3, 3), objective=objective)
    folder.mkdir(parents=True, exist_ok=True)
    bundle.save_weights(folder, "model", WorldModel(cfg))
    bundle.save_weights(folder, "image_tokenizer", ImageTokenizer(tok_cfg))
    bundle.update_config(folder, image_tokenizer=tok_cfg.to_dict(), model=cfg.to_dict(),
                         action_tokenizer=make_action_tokenizer(CRAFTER_SPACE, cfg.codebook_size).to_config(),
                         env="crafter", action_space=CRAFTER_SPACE.to_dict(),
                         frame_size=[SIZE, SIZE], fps=CRAFTER_FPS)
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
