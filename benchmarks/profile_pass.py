"""Where a block-diffusion frame's time goes on a GPU: ms/frame and the top ops by CUDA time.

    python benchmarks/profile_pass.py [--preset mineworld-300m] [--frames 16] [--graphs]
"""

import argparse
import time

import torch

from worldsim.envs.minerl_space import MINERL_SPACE
from worldsim.envs.crafter import CRAFTER_SPACE
from worldsim.commands._args import positive_int
from worldsim.model import PRESETS, WorldModel, preset_config
from worldsim.tokenizers.action import make_action_tokenizer
from worldsim.inference.engine import DecoderSettings, Engine
from worldsim.inference.sampling import GREEDY


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mineworld-300m", choices=list(PRESETS),
                   help="the model shape to profile (default: mineworld-300m)")
    p.add_argument("--frames", type=positive_int, default=16, help="frames to profile (default: 16)")
    p.add_argument("--steps", type=positive_int, default=4, help="block-diffusion passes per frame (default: 4)")
    p.add_argument("--graphs", action="store_true", help="replay passes as CUDA graphs")
    args = p.parse_args()
    dev = torch.device("cuda")
    cfg = preset_config(args.preset, objective="block_diffusion")
    with torch.device(dev):
        model = WorldModel(cfg).eval().to(torch.bfloat16)
    space = MINERL_SPACE if cfg.action_tokens == 11 else CRAFTER_SPACE
    act = make_action_tokenizer(space, offset=cfg.codebook_size)
    a = space.noop()
    settings = DecoderSettings("block_diffusion", steps=args.steps, sampling=GREEDY, graphs=args.graphs)
    e = Engine(model, None, act, settings, max_sessions=1)
    s = e.open(torch.randint(0, cfg.codebook_size, (2, cfg.tokens_per_frame)), [a])
    for _ in range(4):  # warm-up
        s.step(a)
    ts = []
    for _ in range(args.frames):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        s.step(a)
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1000)
    ts.sort()
    print(f"{ts[len(ts) // 2]:.1f} ms/frame median, {1000 / ts[len(ts) // 2]:.1f} fps")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        s.step(a)
        torch.cuda.synchronize()
    ka = prof.key_averages()
    print("ops per frame:", sum(k.count for k in ka))
    print(ka.table(sort_by="cuda_time_total", row_limit=12))

if __name__ == "__main__":
    main()
