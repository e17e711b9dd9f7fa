"""PSNR of dreamed rollouts against real held-out frames, beside the copy-last-frame baseline.

    python benchmarks/rollout_psnr.py --bundle runs/wm-ar --data data/crafter [--steps 15]

Writes a PNG strip (real frames over dreamed ones) beside the bundle with --png.
"""

import argparse
import json

import torch

from worldsim.evaluate import rollout_psnr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--data", required=True, help="the episode store the model's shards came from")
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--context", type=int, default=1)
    p.add_argument("--decode-steps", type=int, default=8, help="block-diffusion passes per frame")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--png", default=None, help="write real-over-dreamed strips of 2 episodes here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    r = rollout_psnr(args.bundle, args.data, args.episodes, args.steps, args.context,
                     args.decode_steps, args.temperature)
    if args.png:
        import imageio.v3 as iio

        rows = []
        for i in range(min(2, r["episodes"])):
            rows += [torch.cat(list(r["truth"][i]), 1), torch.cat(list(r["frames"][i]), 1)]
        iio.imwrite(args.png, torch.cat(rows, 0).numpy().repeat(2, 0).repeat(2, 1))
    out = {k: v for k, v in r.items() if k not in ("frames", "truth")}
    print(json.dumps(out, indent=1))
    print(f"{r['objective']}: {r['psnr']:.2f} dB over {r['steps']} steps ({r['psnr_first3']:.2f} over "
          f"the first 3) vs copy-last {r['copy_last_psnr']:.2f} ({r['copy_last_first3']:.2f}); "
          f"tokenizer ceiling {r['tokenizer_psnr']:.2f}; {r['episodes']} held-out episodes")


if __name__ == "__main__":
    main()
