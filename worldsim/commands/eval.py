"""`worldsim eval`: dream from real context under the recorded actions and measure the dream."""

from __future__ import annotations

import argparse

from worldsim.commands._args import device, existing_dir, nonneg_float, nonneg_int, out_dir, positive_int, seed

HELP = """\
Dream from real context frames with the recorded actions, on every decoder, and judge the dream
against the real game, beside the copy-last-frame baseline, the tokenizer's ceiling and, on
Crafter stores from `worldsim collect`, the game itself replayed from the context with the
world out of view drawn anew (what the game's own rules score against one real episode):
PSNR and SSIM, changed-tile accuracy (rollout and one step ahead, teacher forced), changed-token
accuracy, scroll agreement and the keys followed in each dream's own world (Crafter: a move on
a way its own frame shows open must scroll the view, one into a wall must not), code flicker,
the action-sensitivity gap, an inverse dynamics model's F1 (--idm), drift over the horizon, and
ms/frame per decoder. Day and night frames are reported apart. Writes report.json, report.md, plots and videos into --out.

  worldsim eval --bundle runs/wm --data data/crafter
  worldsim eval --bundle runs/wm --data data/crafter --idm runs/idm --decoder block_diffusion:4 \\
      --decoder block_diffusion:8:t0.9 --out runs/wm-eval
  worldsim eval --compare runs/wm-eval runs/wm2-eval

Episodes come from the bundle's validation split when --data is the store it was trained on;
any other store is used whole. Defaults follow MineWorld: 16 episodes, 1 context frame, 15
generated frames."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="judge a model's rollouts against the real game; write a report",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=existing_dir,
                   help="the bundle to evaluate (default: the shipped model, assets/models/crafter)")
    p.add_argument("--data", type=existing_dir, help="episode store with the real frames and actions")
    p.add_argument("--episodes", type=positive_int, default=16, help="episodes, run as one batch (default: 16)")
    p.add_argument("--context", type=positive_int, default=1, help="real context frames (default: 1)")
    p.add_argument("--horizon", type=positive_int, default=15, help="dreamed frames (default: 15)")
    p.add_argument("--decoder", action="append", default=[], metavar="SPEC",
                   help="ar, diagonal:W or block_diffusion:K[:tT][:gW][:peak] (T: a confidence threshold, W: "
                        "action guidance, peak: keep the tokens at the most peaked positions); repeat for several "
                        "(default: every decoder valid for the model)")
    p.add_argument("--idm", type=existing_dir, help="inverse dynamics model from `worldsim train-idm`")
    p.add_argument("--out", type=out_dir, help="report folder (default: BUNDLE-eval beside the bundle)")
    p.add_argument("--seed", type=seed, default=0, help="episodes, starts and sampling (default: 0)")
    p.add_argument("--draws", type=positive_int, default=1,
                   help="sampling draws of every rollout and of the game, pooled: one draw of 64 windows "
                        "moves scroll agreement by about 3 points (default: 1)")
    p.add_argument("--temperature", type=nonneg_float, default=None,
                   help="sampling temperature (default: the bundle's own, as it plays; 0, greedy, for a "
                        "bundle that records none)")
    p.add_argument("--videos", type=nonneg_int, default=4, help="episodes drawn as mp4 (default: 4)")
    p.add_argument("--no-teacher-forced", action="store_true",
                   help="skip the one-step-ahead dreams (halves the time)")
    p.add_argument("--no-game", action="store_true",
                   help="skip the game reference (Crafter stores from `worldsim collect`; about 1 s per episode)")
    p.add_argument("--memory", action="store_true",
                   help="dream with world memory, as `play` does: a place the dream comes back to shows "
                        "what it drew there (Crafter models with tile tokens)")
    p.add_argument("--device", type=device, default="auto", help="cpu | cuda | auto (default: auto)")
    p.add_argument("--threads", type=nonneg_int, default=0, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--compare", nargs="+", metavar="REPORT",
                   help="print these reports' (report.json or its folder) headline numbers side by side")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from worldsim.errors import WorldsimError

    if args.compare:
        from worldsim.evaluation import compare

        print(compare(args.compare))
        return 0
    if not args.data:
        raise WorldsimError("--data is required (or --compare REPORT...)")
    from worldsim.bundle import find_bundle, play_temperature

    args.bundle = find_bundle(args.bundle, "model to evaluate")
    temperature = play_temperature(args.bundle, args.temperature, default=0.0)
    if args.draws > 1 and temperature == 0:
        import warnings

        warnings.warn(f"--draws {args.draws} at temperature 0 (greedy) draws the model's dream the same "
                      "each time; only the game column's draws differ (give --temperature to sample)",
                      stacklevel=2)
    import torch

    from worldsim.evaluation import EvalSettings, evaluate, summary_line

    if args.out is None:  # the default folder is checked before the work, as --out is
        from worldsim.evaluation.run import default_out

        try:
            args.out = out_dir(str(default_out(args.bundle)))
        except argparse.ArgumentTypeError as e:
            raise WorldsimError(f"the report's default folder: {e}; give --out") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    s = EvalSettings(episodes=args.episodes, context=args.context, horizon=args.horizon,
                     decoders=list(args.decoder), seed=args.seed, draws=args.draws, temperature=temperature,
                     videos=args.videos, teacher_forced=not args.no_teacher_forced, game=not args.no_game,
                     memory=args.memory, device=args.device)
    r = evaluate(args.bundle, args.data, s, idm=args.idm, out=args.out, progress=not args.no_progress)
    print(summary_line(r, r["out"]))
    return 0
