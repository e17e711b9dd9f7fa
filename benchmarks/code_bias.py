"""Can a per-code logit bias stop a long dream's drift toward grass? (A probe; it did not earn a place.)

    python benchmarks/code_bias.py [--bundle B] [--data data/crafter] [--episodes 64]
        [--estimate-seed 1] [--seed 0] [--horizon 150] [--scales 0.25,1] [--threads 2]

Over 150 dreamed steps the shipped model draws more plain fields of grass than the game
(`benchmarks/long_dream.py`). This dreams `--horizon` steps on the windows of `--estimate-seed`,
compares the dream's map codes on day frames with the real episodes' and takes, per code, the
log of the ratio of the real frequency to the dream's (clipped to [-2, 2]; 0 for codes seen fewer
than 20 times). Then, for each scale s of `--scales`, it runs `long_dream.py` on the windows of
`--seed` (other windows than the estimate's) with s times that bias added to every logit before
sampling, and prints its table. Scale 0 is the model as it is.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from tqdm import tqdm

from _windows import CONTEXT, DAY, add_options, load
from worldsim.commands._args import nonneg_int, positive_int
from worldsim.evaluation import run as ev
from worldsim.inference import decode_block_diffusion, sampling
from worldsim.inference.engine import Engine


def scales(text: str) -> list[float]:
    try:
        out = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not out or any(not 0 <= x <= 10 for x in out):
        raise argparse.ArgumentTypeError(f"scales must lie in [0, 10], got {text!r}")
    return out


def estimate(args: argparse.Namespace) -> np.ndarray:
    """(K,) log(real / dream) frequency of each map code on day frames, from --estimate-seed's windows."""
    est = argparse.Namespace(**{**vars(args), "seed": args.estimate_seed})
    w = load(est, "model to measure", horizon=args.horizon)
    real, H, C = w.real, args.horizon, CONTEXT
    engine = Engine(w.model, w.image_tok, w.action_tok, w.decoder, max_sessions=len(w.windows), seed=est.seed)
    with tqdm(total=H, desc="estimate") as bar:
        _, codes, _ = ev._rollout(engine, real, w.codec, est.seed, bar)
    m = real.map_rows * w.image_tok.cfg.grid[1]
    day = real.light[:, C:C + H] > DAY
    K = w.model.cfg.codebook_size
    dream = np.bincount(codes[:, :, :m].numpy()[day].ravel(), minlength=K).astype(float)
    truth = np.bincount(real.tokens[:, C:C + H, :m].numpy()[day].ravel(), minlength=K).astype(float)
    p, q = dream / dream.sum(), truth / truth.sum()
    bias = np.clip(np.log((q + 1e-4) / (p + 1e-4)), -2, 2)
    bias[dream + truth < 20] = 0.0
    print(f"estimate on seed {est.seed}: codes TV {0.5 * np.abs(p - q).sum():.3f}; the most common codes, "
          "real / dream frequency and bias: " + ", ".join(
              f"{c}: {q[c]:.3f} / {p[c]:.3f} {bias[c]:+.2f}" for c in np.argsort(-q)[:6]), flush=True)
    return bias.astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p)
    p.set_defaults(threads=2)
    p.add_argument("--estimate-seed", type=nonneg_int, default=1,
                   help="the eval's --seed whose windows the bias is estimated on (default: 1)")
    p.add_argument("--horizon", type=positive_int, default=150, help="dreamed steps (default: 150)")
    p.add_argument("--scales", type=scales, default=[0.25, 1.0],
                   help="bias scales to judge, comma-separated (default: 0.25,1)")
    args = p.parse_args()
    bias = torch.as_tensor(estimate(args))
    plain = sampling.sample
    import long_dream

    for s in args.scales:
        def biased(logits, settings, generator=None, peak=False, _b=s * bias):
            return plain(logits.float() + _b.to(logits.device), settings, generator, peak)

        decode_block_diffusion.sample = biased
        try:
            print(f"\n== scale {s:g} ==", flush=True)
            sys.argv = ["long_dream.py", "--episodes", str(args.episodes), "--seed", str(args.seed),
                        "--horizon", str(args.horizon), "--threads", str(args.threads),
                        "--decoder", args.decoder, "--data", str(args.data)] \
                + (["--bundle", str(args.bundle)] if args.bundle else []) \
                + (["--temperature", str(args.temperature)] if args.temperature is not None else [])
            long_dream.main()
        finally:
            decode_block_diffusion.sample = plain


if __name__ == "__main__":
    main()
