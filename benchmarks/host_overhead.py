"""Operators a decoded frame dispatches, and the host time they take with no work in them.

    python benchmarks/host_overhead.py [--preset mineworld-300m] [--decoder block_diffusion]

On a fast GPU the host, launching one kernel per operator, can set the frame rate: a frame
takes about the larger of the host's time and the device's own. The operator count per frame
is the machine-independent measure of that cost. It is counted on the preset's layers, heads,
action tokens and context, with the tensors shrunk to nothing (a 4x5 token grid, 4-wide
heads), which changes no count for block diffusion; `ar` and `diagonal` make passes per token,
so for them read the per-pass figure. The time is the same shrunk frame's, in float32 on the
CPU: Python, the dispatcher and the host-side plan, plus each CPU kernel's fixed cost, which
is larger than a CUDA launch; read it as an upper bound on the host's share, not a GPU figure.
"""

import argparse
import collections
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from worldsim.commands._args import positive_int
from worldsim.model import PRESETS, WorldModel, preset_config
from worldsim.inference.cache import KVCache
from worldsim.inference.common import prefill
from worldsim.inference.engine import DECODERS, DecoderSettings
from worldsim.inference.sampling import GREEDY


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mineworld-300m", choices=list(PRESETS),
                   help="the model shape whose host work to time (default: mineworld-300m)")
    p.add_argument("--decoder", default="block_diffusion", choices=list(DECODERS), help="default: block_diffusion")
    p.add_argument("--steps", type=positive_int, default=4, help="block-diffusion passes per frame (default: 4)")
    p.add_argument("--sessions", type=positive_int, default=1, help="sessions stepped as one batch (default: 1)")
    p.add_argument("--frames", type=positive_int, default=20, help="frames to time (default: 20)")
    args = p.parse_args()
    objective = DECODERS[args.decoder].OBJECTIVE
    full = preset_config(args.preset, objective=objective)
    cfg = preset_config(args.preset, objective=objective, grid=(4, 5), tokens_per_frame=20,
                        dim=4 * full.n_heads, ffn_dim=8, codebook_size=16,
                        vocab_size=16 + full.action_ids + 1)
    b = args.sessions
    torch.set_num_threads(1)
    model = WorldModel(cfg).eval()  # float32: the CPU kernels of tiny float32 tensors cost least
    frames = torch.zeros(b, 2, cfg.tokens_per_frame, dtype=torch.long)
    acts = torch.zeros(b, 1, cfg.action_tokens, dtype=torch.long) + cfg.codebook_size
    blocks = cfg.frames - 1 if objective == "block_diffusion" else cfg.frames
    cache = KVCache(cfg, b, blocks)
    rows = list(range(b))
    prefill(model, cache, rows, frames, acts)
    own = DecoderSettings(args.decoder, steps=args.steps).own()  # the decoder's own settings
    decode = DECODERS[args.decoder].decode
    for _ in range(blocks + 2):  # past the window filling up: every frame rolls it, as in a long session
        decode(model, cache, rows, frames[:, -1], acts[:, 0], GREEDY, None, own)
    ms = []
    for _ in range(args.frames):
        t0 = time.perf_counter()
        _, stats = decode(model, cache, rows, frames[:, -1], acts[:, 0], GREEDY, None, own)
        ms.append((time.perf_counter() - t0) * 1000)
    counter = CountOps()
    with counter:
        decode(model, cache, rows, frames[:, -1], acts[:, 0], GREEDY, None, own)
    ms.sort()
    n_ops = sum(counter.ops.values())
    print(f"{args.preset} {args.decoder} ({stats.passes} passes, {b} session(s)): host "
          f"{ms[len(ms) // 2]:.1f} ms/frame median with shrunk tensors; {n_ops} operators dispatched "
          f"per frame ({n_ops / stats.passes:.0f} per pass)")


if __name__ == "__main__":
    main()
