"""Scroll agreement of the eval's dreams under sampler variants, over several sampling draws.

    python benchmarks/sampler_variants.py [--bundle B] [--data data/crafter] [--episodes 64]
        [--seed 0] [--draws 0,1,2,3] [--temperature T] [--pass-temperatures 0.9,0.9,0.9,0.7]
        [--top-p P] [--order confidence|random|gumbel] [--choice-temperature C]
        [--decoder block_diffusion:4] [--out results.jsonl]

Runs `worldsim eval`'s rollouts (the same windows, and for draw 0 the same sampling seeds; draw
k samples as `worldsim eval --draws` does its draw k) and prints, per draw, the share of real
scrolls the dream follows, its false scrolls, its PSNR and its tiles from nowhere per frame,
then the figures pooled over the draws. Only the rollouts run (about 35 s per draw of 64
windows on one thread), so sampler variants can be ranked on many draws: one draw of 64
windows moves scroll agreement by about 3 points.

Two variants the engine does not offer swap the decoder's sampler for a stand-in:
`--pass-temperatures` gives block diffusion's K passes each their own temperature, and
`--order` changes which drawn tokens a pass keeps. The engine keeps the most probable of those
drawn (`confidence`, MaskGIT's order); `random` keeps random ones (the ancestral order of
masked diffusion), and `gumbel` adds Gumbel noise of scale C * (1 - (k + 1) / K) to the
log-probability at pass k before ranking (MaskGIT's annealed choice noise), so that the early
passes also commit to some tokens the model is unsure of.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from tqdm import tqdm

from _windows import CONTEXT, HORIZON, add_options, load
from worldsim import metrics
from worldsim.commands._args import fraction, nonneg_float, out_file
from worldsim.evaluation import run as ev
from worldsim.inference import decode_block_diffusion, sampling
from worldsim.inference.engine import Engine


def per_pass_sampler(temperatures: list[float], top_p: float):
    """A stand-in for `sampling.sample` that gives the k-th call of each frame (pass k) its own
    temperature; block diffusion without a threshold calls it exactly once per pass."""
    calls = [0]

    def sample(logits, s, generator=None, peak=False):
        t = temperatures[calls[0] % len(temperatures)]
        calls[0] += 1
        return sampling.sample(logits, sampling.SamplingSettings(t, s.top_k, top_p), generator, peak)

    return sample


def ordered_sampler(base, order: str, choice_temperature: float, steps: int):
    """A stand-in for `sampling.sample` that draws tokens as `base` does but hands back ranking
    scores in (0, 1) for the `order` of `--order` instead of the drawn tokens' probabilities.
    The noise comes from the sessions' own generators, so every draw is reproducible."""
    calls = [0]

    def uniform(shape, generator):
        if isinstance(generator, (list, tuple)):
            return torch.stack([torch.rand(shape[1:], generator=g) for g in generator])
        return torch.rand(shape, generator=generator)

    def sample(logits, s, generator=None, peak=False):
        k = calls[0] % steps
        calls[0] += 1
        tok, conf = base(logits, s, generator, peak)
        u = uniform(conf.shape, generator).to(conf.device).clamp(1e-9, 1 - 1e-9)
        if order == "random":
            return tok, u
        gumbel = -torch.log(-torch.log(u))
        score = conf.clamp_min(1e-30).log() + choice_temperature * (1 - (k + 1) / steps) * gumbel
        return tok, torch.sigmoid(score)

    return sample


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p)
    p.add_argument("--draws", default="0,1,2,3", help="sampling draws, comma list (default: 0,1,2,3)")
    p.add_argument("--pass-temperatures", default=None,
                   help="one temperature per block-diffusion pass, comma list (default: --temperature for all)")
    p.add_argument("--top-p", type=fraction, default=1.0, help="nucleus sampling (default: 1.0, off)")
    p.add_argument("--order", default="confidence", choices=("confidence", "random", "gumbel"),
                   help="which drawn tokens a block-diffusion pass keeps (default: confidence, the engine's)")
    p.add_argument("--choice-temperature", type=nonneg_float, default=1.0,
                   help="--order gumbel: the noise scale at the first pass (default: 1.0)")
    p.add_argument("--out", type=out_file, default=None, help="append one JSON line per draw to this file")
    args = p.parse_args()
    w = load(args, "model to measure")
    d = w.decoder
    temps = [float(x) for x in args.pass_temperatures.split(",")] if args.pass_temperatures else None
    if temps is not None or args.top_p < 1 or args.order != "confidence":
        if d.name != "block_diffusion" or d.threshold is not None:
            raise SystemExit("--pass-temperatures, --top-p and --order need block_diffusion:K without a threshold")
        if temps is not None and len(temps) != d.steps:
            raise SystemExit(f"--pass-temperatures needs {d.steps} values, one per pass")
        sample = per_pass_sampler(temps or [args.temperature] * d.steps, args.top_p)
        if args.order != "confidence":
            sample = ordered_sampler(sample, args.order, args.choice_temperature, d.steps)
        decode_block_diffusion.sample = sample
    real, B = w.real, len(w.windows)
    C, H = CONTEXT, HORIZON
    engine = Engine(w.model, w.image_tok, w.action_tok, d, max_sessions=B, seed=args.seed)

    def flat(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x.reshape(-1, *real.shape)))

    real_prev, real_next = flat(real.frames[:, C - 1:C + H - 1]), flat(real.frames[:, C:C + H])
    label = (f"{args.decoder} T={args.temperature}" + (f" per pass {args.pass_temperatures}" if temps else "")
             + (f" top-p {args.top_p}" if args.top_p < 1 else "")
             + {"confidence": "", "random": " random order",
                "gumbel": f" gumbel order C={args.choice_temperature}"}[args.order])
    rows = []
    for k in [int(x) for x in args.draws.split(",")]:
        t0 = time.perf_counter()
        with tqdm(total=H, desc=f"draw {k}", leave=False) as bar:
            dream, _, _ = ev._rollout(engine, real, w.codec, ev.draw_seed(args.seed, k, B), bar)
        gen_prev, gen = flat(real.before(dream)), flat(dream)
        counts = metrics.scroll_counts(real_prev, real_next, gen_prev, gen, real.tile, real.map_rows)
        n = {name: int(v.sum()) for name, v in counts.items()}
        psnr = metrics.pooled_psnr(gen, real_next)
        new, _ = metrics.new_tile_counts(gen_prev, gen, real.tile, real.map_rows)
        row = {"bundle": w.bundle, "data": args.data, "seed": args.seed, "draw": k, "sampler": label,
               "real_scrolls": n["real_scroll"], "agree": n["agree"], "false_scrolls": n["false_scroll"],
               "real_still": n["real_still"], "psnr": round(float(psnr), 3),
               "new_tiles_per_frame": round(float(new.float().mean()), 3),
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(f"draw {k}: scroll {row['agree']}/{row['real_scrolls']} ({row['agree'] / max(row['real_scrolls'], 1):.1%}), "
              f"false scroll {row['false_scrolls']}/{row['real_still']}, PSNR {row['psnr']:.2f} dB, "
              f"tiles from nowhere {row['new_tiles_per_frame']:.2f} per frame", flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    agree, real_n = sum(x["agree"] for x in rows), sum(x["real_scrolls"] for x in rows)
    per = [x["agree"] / x["real_scrolls"] for x in rows if x["real_scrolls"]]
    print(f"{w.bundle}, {B} windows (seed {args.seed}), {label}: scroll {agree}/{real_n} "
          f"({agree / max(real_n, 1):.1%}) over {len(rows)} draws (per draw {min(per):.1%}-{max(per):.1%}), "
          f"false scroll {sum(x['false_scrolls'] for x in rows) / max(sum(x['real_still'] for x in rows), 1):.1%}, "
          f"PSNR {np.mean([x['psnr'] for x in rows]):.2f} dB, "
          f"tiles from nowhere {np.mean([x['new_tiles_per_frame'] for x in rows]):.2f} per frame")


if __name__ == "__main__":
    main()
