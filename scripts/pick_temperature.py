"""Choose the sampling temperature a bundle plays at, on held-out windows, and record it.

    python scripts/pick_temperature.py runs/wm --data data/crafter --temperatures 0.8,0.9,1.0 \\
        --episodes 64 --seeds 0,1 --write

Dreams 15 steps from one real frame under the recorded keys (`worldsim eval`'s protocol, on the
bundle's held-out episodes) at each temperature and each draw of windows, then picks the
temperature whose dreams scroll with the real player most often, pooled over the draws, among
those that keep PSNR above the copy-last-frame baseline at each of the first 5 steps and over
all 15. The study found the best temperature moves with the model: a model trained to a lower
loss is sharper and needs a hotter sampler (benchmarks/results/cpu/study). With --write the
choice goes into the bundle's config.json ("decoding": {"temperature": T}), which `worldsim
play`, `serve`, `eval` and `bench` then use unless told otherwise.

Each judgement is kept in OUT/judgements.json as it finishes, with the weights' hash and the
store it was made on, so an interrupted run picks up where it stopped, and new weights or another
store are judged afresh.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from worldsim.commands._args import Parser, nonneg_int, out_dir

FLOOR_STEPS = 5  # PSNR above copy-last at each of the first 5 steps: the model issue's floor


def weights_hash(bundle: Path) -> str:
    """The model weights' hash: the book's key (config.json changes with --write, so not it)."""
    from worldsim.fileio import file_sha256

    return file_sha256(bundle / "model.safetensors")


def judgement(report: dict) -> dict:
    """The figures the choice needs from one eval report (its first decoder)."""
    q = report["quality"]
    dec = next(k for k in q if k not in ("copy-last", "game", "tokenizer"))
    model, copy = q[dec]["rollout"]["all"], q["copy-last"]["rollout"]["all"]
    real = model["overall"]["real_scroll_steps"] or 0
    agree = model["overall"]["scroll_agreement"]
    return {"decoder": dec, "real_scrolls": real, "agree": round((agree or 0.0) * real),
            "psnr": model["overall"]["psnr"], "copy_psnr": copy["overall"]["psnr"],
            "psnr_steps": model["per_step"]["psnr"][:FLOOR_STEPS],
            "copy_psnr_steps": copy["per_step"]["psnr"][:FLOOR_STEPS]}


def forget_stale_choice(bundle: Path, weights: str) -> None:
    """With nothing chosen, a temperature chosen for other weights (an earlier leg of the run)
    is removed, so the bundle plays and is judged at the default rather than at a stale choice.
    One inherited from a parent bundle, or chosen before choices recorded their weights, stays."""
    from worldsim.bundle import read_config
    from worldsim.fileio import atomic_write_json

    cfg = read_config(bundle)
    was = (cfg.get("decoding") or {}).get("chosen_on", {}).get("weights")
    if was is not None and was != weights:
        cfg.pop("decoding")
        atomic_write_json(bundle / "config.json", cfg)
        print(f"pick_temperature: removed the temperature chosen for the weights {bundle} held before",
              file=sys.stderr)


def read_book(path: Path) -> dict:
    """The judgements kept so far; a book that cannot be read is started again, with a warning."""
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as e:
        print(f"pick_temperature: warning: {path} cannot be read ({e}); judging again", file=sys.stderr)
        return {}


def choose(judged: dict[float, list[dict]]) -> tuple[float | None, list[dict]]:
    """Pool each temperature's draws; the best pooled scroll agreement among those above the
    PSNR floor on every draw (ties: the higher mean PSNR). Returns (choice, table rows)."""
    rows = []
    for t, js in sorted(judged.items()):
        real = sum(j["real_scrolls"] for j in js)
        floor = all(j["psnr"] > j["copy_psnr"] and all(a > b for a, b in zip(j["psnr_steps"], j["copy_psnr_steps"]))
                    for j in js)
        rows.append({"temperature": t, "scroll": sum(j["agree"] for j in js) / real if real else None,
                     "real_scrolls": real, "psnr": sum(j["psnr"] for j in js) / len(js),
                     "copy_psnr": sum(j["copy_psnr"] for j in js) / len(js), "floor": floor})
    ok = [r for r in rows if r["floor"] and r["scroll"] is not None]
    if not ok:
        return None, rows
    best = max(ok, key=lambda r: (r["scroll"], r["psnr"]))
    return best["temperature"], rows


def seed_list(text: str) -> list[int]:
    """--seeds: a comma list of whole numbers >= 0 (numpy takes no negative seed)."""
    seeds = [nonneg_int(s.strip()) for s in text.split(",") if s.strip()]
    if not seeds:
        raise argparse.ArgumentTypeError(f"give at least one seed, got {text!r}")
    return seeds


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="the bundle to tune")
    p.add_argument("--data", required=True, help="the episode store it was trained on (its held-out episodes are used)")
    p.add_argument("--temperatures", default="0.7,0.8,0.9,1.0", help="comma list (default: 0.7,0.8,0.9,1.0)")
    p.add_argument("--episodes", type=int, default=64, help="windows per draw, one per episode (default: 64)")
    p.add_argument("--seeds", type=seed_list, default="0,1",
                   help="draws of windows, comma list of whole numbers >= 0 (default: 0,1)")
    p.add_argument("--draws", type=int, default=1,
                   help="sampling draws of each window draw, pooled (default: 1; one draw of 64 windows "
                        "moves scroll agreement by about 3 points)")
    p.add_argument("--decoder", default=None, help="decoder spec (default: eval's default for the model)")
    p.add_argument("--out", type=out_dir, default=None,
                   help="folder for the eval reports (default: BUNDLE-temperature)")
    p.add_argument("--threads", type=nonneg_int, default=0, help="torch CPU threads (default: 0, torch's)")
    p.add_argument("--write", action="store_true", help="record the choice in the bundle's config.json")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = p.parse_args(argv)
    import warnings

    with warnings.catch_warnings():  # restored after: main() also runs inside other programs
        # One line per warning, and once: every judgement evaluates the same windows, and says so.
        warnings.simplefilter("once")
        warnings.showwarning = lambda message, *_a, **_k: print(f"pick_temperature: warning: {message}",
                                                              file=sys.stderr)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from worldsim.bundle import find_bundle, update_config
    from worldsim.errors import WorldsimError
    from worldsim.fileio import atomic_write_json

    try:
        bundle = Path(find_bundle(args.bundle, "model to tune"))
        temps = sorted({float(t) for t in args.temperatures.split(",") if t.strip()})
        seeds = args.seeds
    except (WorldsimError, ValueError) as e:
        print(f"pick_temperature: {e}", file=sys.stderr)
        return 2
    if not temps or not seeds or min(temps) < 0 or args.draws < 1:
        print("pick_temperature: give at least one temperature (>= 0), one seed and one draw", file=sys.stderr)
        return 2
    import torch

    from worldsim.evaluation import EvalSettings, evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else bundle.parent / f"{bundle.name}-temperature"
    try:  # the default folder is not checked at parse time, and a check can go stale
        out_dir(str(out))
        out.mkdir(parents=True, exist_ok=True)
    except (argparse.ArgumentTypeError, OSError) as e:
        print(f"pick_temperature: cannot write the reports in {out}: {e}", file=sys.stderr)
        return 2
    book_path = out / "judgements.json"
    book = read_book(book_path)
    weights = weights_hash(bundle)
    data = str(Path(args.data).resolve())  # a judgement holds for these weights on this store
    judged: dict[float, list[dict]] = {}
    for t in temps:
        for seed in seeds:
            key = f"T{t:g}-s{seed}-e{args.episodes}-{args.decoder or 'default'}" + (
                f"-d{args.draws}" if args.draws > 1 else "")
            if (book.get(key, {}).get("weights"), book.get(key, {}).get("data")) != (weights, data):
                s = EvalSettings(episodes=args.episodes, seed=seed, draws=args.draws, temperature=t, videos=0,
                                 teacher_forced=False, game=False,
                                 decoders=[args.decoder] if args.decoder else [])
                try:
                    r = evaluate(bundle, args.data, s, out=out / key, progress=not args.no_progress)
                except (WorldsimError, OSError) as e:
                    print(f"pick_temperature: {e}", file=sys.stderr)
                    return 1
                except KeyboardInterrupt:
                    print(f"pick_temperature: interrupted; the finished judgements are kept in {book_path}",
                          file=sys.stderr)
                    return 130
                book[key] = {"weights": weights, "data": data, **judgement(r)}
                atomic_write_json(book_path, book)  # a kill mid-write leaves the last whole book
            judged.setdefault(t, []).append(book[key])
            j = book[key]
            print(f"T {t:g}, seed {seed}: scroll {j['agree']}/{j['real_scrolls']}, "
                  f"PSNR {j['psnr']:.2f} dB (copy-last {j['copy_psnr']:.2f})", flush=True)
    if not any(j["real_scrolls"] for js in judged.values() for j in js):
        print("pick_temperature: no real scrolls in these windows: scroll agreement is measured on "
              "Crafter stores, where the view scrolls as the player walks", file=sys.stderr)
        return 1
    best, rows = choose(judged)
    print(f"\n{'temperature':>11} | scroll (pooled) | real scrolls | PSNR | copy-last | PSNR floor")
    for r in rows:
        scroll = f"{100 * r['scroll']:.1f}%" if r["scroll"] is not None else "-"
        print(f"{r['temperature']:>11g} | {scroll:>15} | {r['real_scrolls']:>12} | {r['psnr']:.2f} | "
              f"{r['copy_psnr']:.2f} | {'kept' if r['floor'] else 'below'}")
    if best is None:
        print("pick_temperature: no temperature keeps PSNR above copy-last on every draw; nothing chosen",
              file=sys.stderr)
        if args.write:
            forget_stale_choice(bundle, weights)
        return 1
    print(f"chosen: temperature {best:g}")
    if args.write:
        row = next(r for r in rows if r["temperature"] == best)
        update_config(bundle, decoding={"temperature": best, "chosen_on": {
            "data": str(args.data), "weights": weights, "episodes": args.episodes, "seeds": seeds, "draws": args.draws,
            "temperatures": temps,
            "scroll_agreement": round(row["scroll"], 4), "real_scrolls": row["real_scrolls"]}})
        print(f"recorded in {bundle / 'config.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
