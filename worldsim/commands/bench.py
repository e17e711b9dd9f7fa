"""`worldsim bench`: every decoder on the same model and inputs, side by side."""

from __future__ import annotations

import argparse

from worldsim.commands._args import (device, existing_dir, fraction, nonneg_float, nonneg_int,
                                     out_file, positive_int)

HELP = """\
Time every decoder valid for a model on the same context and actions: forward passes per frame,
ms per frame (median, p95), frames/s, the ratio to `ar`, aggregate frames/s with several
sessions in one batch, peak memory and, with --data, PSNR of the rollout against the real
frames beside the copy-last-frame baseline.

  worldsim bench --bundle runs/wm --data data/crafter
  worldsim bench --preset crafter --frames 64
  worldsim bench --preset mineworld-300m --frames 4 --ar-frames 1 --sessions 1

Presets are randomly initialised: speed at a fixed number of passes does not depend on weights."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="compare decoders: passes, ms/frame, frames/s, PSNR, memory",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--bundle", type=existing_dir,
                     help="a trained bundle (default, without --preset: the shipped model, assets/models/crafter)")
    src.add_argument("--preset", help="a randomly initialised model preset: tiny | crafter | mineworld-300m")
    p.add_argument("--data", type=existing_dir, help="episode store for real context, actions and ground truth (with --bundle)")
    p.add_argument("--decoders", default="all",
                   help="comma list of decoders: ar, diagonal, block_diffusion (default: all that apply)")
    p.add_argument("--frames", type=positive_int, default=64, help="frames per decoder (default: 64)")
    p.add_argument("--ar-frames", type=nonneg_int, default=0,
                   help="frames for ar, which is slow (default: --frames; 8 where ar only times the "
                        "speed of a model trained otherwise, the baseline of the ratios)")
    p.add_argument("--sessions", default="1,4,16", help="batch sizes for aggregate frames/s (default: 1,4,16)")
    p.add_argument("--ar-sessions", default=None,
                   help="batch sizes for ar, which is slow (default: --sessions; 1 where ar only "
                        "times the speed of a model trained otherwise)")
    p.add_argument("--session-frames", type=positive_int, default=8, help="frames per batched run (default: 8)")
    p.add_argument("--context", type=positive_int, default=1, help="context frames (default: 1)")
    p.add_argument("--steps", type=positive_int, default=4, help="block-diffusion passes per frame, K (default: 4)")
    p.add_argument("--threshold", type=fraction, default=None, help="block-diffusion confidence threshold")
    p.add_argument("--guidance", type=nonneg_float, default=0.0,
                   help="block-diffusion action guidance w against the no-op (default: 0, off)")
    p.add_argument("--window", type=positive_int, default=2, help="diagonal window w (default: 2)")
    p.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="replay block-diffusion passes as CUDA graphs (CUDA; elsewhere static buffers) "
                        "(default: on with CUDA, off elsewhere)")
    p.add_argument("--temperature", type=nonneg_float, default=None,
                   help="sampling temperature (default: a bundle's own; 0, greedy, for a preset or a "
                        "bundle that records none)")
    p.add_argument("--device", type=device, default="auto", help="cpu | cuda | auto (default: auto)")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16"],
                   help="weights and cache dtype (default: a bundle's as stored, which is what "
                        "`worldsim play` and `serve` run; fp32 for a preset)")
    p.add_argument("--threads", type=nonneg_int, default=0, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", type=out_file, default=None, help="also write the results as JSON to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    import numpy as np
    import torch

    from worldsim.bench import BenchInputs, bench, format_table
    from worldsim.bundle import play_temperature
    from worldsim.device import pick_device
    from worldsim.errors import WorldsimError
    from worldsim.inference.engine import DECODERS, DecoderSettings, valid_decoders
    from worldsim.inference.sampling import SamplingSettings

    if args.preset and args.data:  # random weights dream nothing a store could judge
        raise WorldsimError("--data judges a trained bundle's dreams (PSNR); with --preset there are "
                            "none: give --bundle, or leave --data out")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = pick_device(args.device)
    model, image_tok, action_tok, inputs = _load(args, dev)
    # Without --dtype a bundle runs as `play` runs it: in the dtype its weights were stored in.
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(args.dtype, next(model.parameters()).dtype)
    model = model.to(dev, dtype)
    if image_tok is not None:
        image_tok = image_tok.to(dev)
    objective = model.cfg.objective
    # A preset's random weights time every decoder; a trained model, the decoders that fit it,
    # and `ar` beside them as the baseline of the ratios (speed only, where it does not fit).
    names = list(DECODERS) if args.preset else \
        list(dict.fromkeys(["ar", *valid_decoders(objective)]))
    if args.decoders != "all":
        names = [n.strip() for n in args.decoders.split(",")]
        for n in names:
            if n not in DECODERS:
                raise WorldsimError(f"unknown decoder {n!r}; choose from {', '.join(DECODERS)}")
    # `ar` on a trained model of another objective times speed only: a few frames say it.
    speed_only_ar = not args.preset and "ar" in names and objective != "ar"
    # A bundle decodes at its own temperature; a preset's random weights greedy unless told.
    temperature = (args.temperature or 0.0) if args.preset else \
        play_temperature(args.bundle, args.temperature, default=0.0)
    sampling = SamplingSettings(temperature=temperature)
    decoders = [DecoderSettings(n, steps=args.steps, threshold=args.threshold, window=args.window,
                                sampling=sampling, graphs=args.graphs, guidance=args.guidance) for n in names]
    for d in decoders:  # each decoder checks its own settings before anything runs
        try:
            d.resolve(DECODERS[d.name].OBJECTIVE)
        except ValueError as e:
            raise WorldsimError(str(e)) from None
    try:
        sessions = [int(x) for x in args.sessions.split(",") if x]
        ar_sessions = [int(x) for x in args.ar_sessions.split(",") if x] if args.ar_sessions else None
        if ar_sessions is None and speed_only_ar:
            ar_sessions = [1]
    except ValueError:
        raise WorldsimError("--sessions and --ar-sessions must be comma lists of integers") from None
    if min(sessions + (ar_sessions or []), default=1) < 1:
        raise WorldsimError("--sessions and --ar-sessions count sessions: 1 or more each")
    print(f"bench on {dev} ({torch.get_num_threads()} threads): {', '.join(names)}")
    result = bench(model, image_tok, action_tok, inputs, decoders, args.frames,
                   args.ar_frames or (min(args.frames, 8) if speed_only_ar else args.frames), sessions,
                   args.session_frames,
                   ar_sessions=ar_sessions)
    result["source"] = args.bundle or f"preset {args.preset} (random weights)"
    print(format_table(result))
    if args.json:
        from worldsim.fileio import atomic_open  # makes its folder

        with atomic_open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    best = max(result["rows"], key=lambda r: r["fps"])
    print(f"fastest: {best['decoder']} at {best['fps']:.2f} frames/s "
          f"({best['passes_per_frame']:.0f} passes/frame)")
    return 0


def _load(args, dev):
    import numpy as np
    import torch

    from worldsim.bench import BenchInputs
    from worldsim.errors import WorldsimError

    g = torch.Generator().manual_seed(0)
    if args.preset:
        from worldsim.envs.crafter import CRAFTER_SPACE
        from worldsim.envs.minerl_space import MINERL_SPACE
        from worldsim.model import WorldModel, preset_config
        from worldsim.tokenizers.action import make_action_tokenizer
        from worldsim.tokenizers.image import PRESETS, ImageTokenizer

        try:
            cfg = preset_config(args.preset)
        except ValueError as e:
            raise WorldsimError(str(e)) from None
        torch.manual_seed(0)
        with torch.device(dev):
            model = WorldModel(cfg).eval()
        image_tok = ImageTokenizer(PRESETS["crafter"]).eval() if args.preset == "crafter" else None
        minerl = cfg.action_tokens == 11
        action_tok = make_action_tokenizer(MINERL_SPACE if minerl else CRAFTER_SPACE, offset=cfg.codebook_size)
        ctx = torch.randint(0, cfg.codebook_size, (args.context, cfg.tokens_per_frame), generator=g)
        rng = np.random.default_rng(0)
        if minerl:
            def act():
                a = MINERL_SPACE.noop()
                a["forward"] = int(rng.random() < 0.5)
                a["camera"] = [float(rng.normal(0, 5)), float(rng.normal(0, 5))]
                return a
        else:
            def act():
                return int(rng.integers(0, 17))
        return model, image_tok, action_tok, BenchInputs(ctx, [act() for _ in range(args.context - 1)],
                                                         [act() for _ in range(64)])
    from worldsim import bundle
    from worldsim.data.store import EpisodeStore

    args.bundle = bundle.find_bundle(args.bundle, "model to bench")
    cfg = bundle.read_config(args.bundle)
    model = bundle.load_world_model(args.bundle, dev)
    image_tok = bundle.load_image_tokenizer(args.bundle, dev)
    action_tok = bundle.load_action_tokenizer(args.bundle)
    if args.data:
        store = EpisodeStore(args.data)
        size = (image_tok.cfg.height, image_tok.cfg.width)
        if tuple(store.info.frame_size) != size:
            raise WorldsimError(f"{args.bundle} takes {size[0]}x{size[1]} frames but {args.data} holds "
                                f"{store.info.frame_size[0]}x{store.info.frame_size[1]}")
        _, val = store.split(0.05)
        need = args.context + max(args.frames, args.ar_frames) + 1
        ep = next((e for e in store.iter_episodes(val) if len(e.frames) >= need), None)
        if ep is None:
            ep = max(store.iter_episodes(val), key=lambda e: len(e.frames), default=None)
        if ep is None:
            raise WorldsimError(f"no readable held-out episode in {args.data}")
        space = store.info.action_space
        acts = [space.from_array(ep.actions, t) for t in range(ep.num_steps)]
        c = args.context
        with torch.no_grad():
            # A tokenizer that factors out the light reads the recorded daylight.
            light = {"light": ep.daylight[:c]} if getattr(image_tok, "uses_light", False) and \
                ep.daylight is not None else {}
            ctx = image_tok.encode(ep.frames[:c], **light).cpu()
        return model, image_tok, action_tok, BenchInputs(ctx, acts[:c - 1], acts[c - 1:],
                                                         truth=ep.frames[c:], last_real=ep.frames[c - 1])
    ctx = torch.randint(0, model.cfg.codebook_size, (args.context, model.cfg.tokens_per_frame), generator=g)
    from worldsim.envs.base import ActionSpace

    space = ActionSpace.from_dict(cfg["action_space"])
    if space.kind != "discrete":
        raise WorldsimError("benchmarking a bundle with dict actions needs --data (recorded actions)")
    rng = np.random.default_rng(0)

    def act() -> int:
        return int(rng.integers(0, space.n))

    return model, image_tok, action_tok, BenchInputs(ctx, [act() for _ in range(args.context - 1)],
                                                     [act() for _ in range(64)])
