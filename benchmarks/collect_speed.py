"""Collector speed beside Crafter's own step rate, on one core.

    python benchmarks/collect_speed.py [--steps 3000]

Crafter alone: `env.step` with uniform random actions at 72x72, no policy, nothing written.
Collector: `worldsim collect` with one worker (exploration policy, daylight, compression,
atomic writes), in frames per second of wall time.
"""

import argparse
import tempfile
import time

import numpy as np

from worldsim.commands._args import positive_int
from worldsim.data.collect import collect_crafter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=positive_int, default=3000, help="game steps to time (default: 3000)")
    args = p.parse_args()
    import crafter

    env = crafter.Env(size=(72, 72), seed=0, reward=False)
    env.reset()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        _, _, done, _ = env.step(int(rng.integers(0, 17)))
        if done:
            env.reset()
    raw = args.steps / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as d:
        episodes = max(1, args.steps // 200)
        s = collect_crafter(d, episodes=episodes, steps=200, seed=0, workers=1, progress=False)
    col = s["frames"] / s["seconds"]
    print(f"crafter alone: {raw:.0f} steps/s; collector: {col:.0f} frames/s "
          f"({col / raw:.0%} of crafter alone, {s['frames']} frames)")


if __name__ == "__main__":
    main()
