"""Copy a trained bundle into assets/ as the shipped model: weights in bf16, with its eval report.

    python scripts/ship_model.py runs/ship --eval runs/ship-eval --out assets/models/crafter

Writes OUT/config.json, OUT/model.safetensors (floating tensors in bf16: half the size, and the
engine runs bf16 on CPUs with fast bf16 anyway), OUT/image_tokenizer.safetensors, and from the
eval folder report.md, report.json, the plots and the GIF. The model card (OUT/CARD.md) is
written by hand from the report. Evaluate the shipped copy too (`worldsim eval --bundle OUT`):
bf16 weights must hold the quality of the float32 ones.

A run that kept a moving average of its weights (`worldsim train --ema`) writes the average into
its bundle; `--weights last` ships the last step's weights instead, read from the run's
`train_state.safetensors`, and records it in OUT/config.json (`model_metrics.weights`, with the
validation loss of those weights). On the Crafter model the average of a long run
(`--ema 0.998`) dreamed like a lower temperature, with fewer moves; at the end of a short
fine-tune it is close to the last weights (benchmarks/results/cpu/study).

A run that started from a bundle (`worldsim train --init PARENT`) can be shipped as a point on
the line between its parent and itself, `--interpolate ALPHA`: (1 - ALPHA) * parent + ALPHA *
the run's weights, key by key (weight-space ensembling of a fine-tune with the model it started
from, as in WiSE-FT). The parent is the one the run's config records; it must still hold the
weights the run started from (their sha256 is recorded too), and OUT/config.json records the
interpolation (`model_metrics.interpolated`). Where the parent has moved since, or a shipped
model now stands in its folder, `--parent DIR` names where its weights are now: they are checked
against the same hash. On the Crafter model, half way between the
H200-trained model and a fine-tune that taught it what `do` does on grass kept most of the
lesson and lost none of the scroll that the fine-tune lost, as far as eight sampling draws tell
(benchmarks/results/cpu/study, "Half way back").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from worldsim.bundle import read_config, recorded_path, update_config
from worldsim.checkpoint import checkpoint_weights
from worldsim.commands._args import out_dir
from worldsim.errors import WorldsimError
from worldsim.fileio import atomic_write_json, file_sha256

EVAL_FILES = ("report.md", "report.json", "psnr.png", "ssim.png", "changed_tiles.png", "rollouts.gif")
VIDEO_LINK = re.compile(r"- \[rollout_\d+\.mp4\]\(rollout_\d+\.mp4\)")  # report.md's links to its mp4s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="the trained bundle to ship (config.json, model.safetensors, "
                                  "image_tokenizer.safetensors)")
    p.add_argument("--eval", help="the bundle's `worldsim eval` folder, whose reports, plots and GIF go "
                                  "with it (default: none, and the reports --out held are removed: they "
                                  "judged the model shipped before)")
    p.add_argument("--out", default="assets/models/crafter",
                   help="the folder to ship into, made if missing; its model is replaced "
                        "(default: assets/models/crafter)")
    p.add_argument("--weights", choices=("bundle", "last"), default="bundle",
                   help="bundle: the bundle's model.safetensors (the moving average where the run "
                        "kept one); last: the last step's weights, from its train_state.safetensors")
    p.add_argument("--interpolate", type=float, metavar="ALPHA",
                   help="ship (1 - ALPHA) * parent + ALPHA * the run's weights, the parent being "
                        "the bundle the run started from (`worldsim train --init`)")
    p.add_argument("--parent", metavar="DIR",
                   help="with --interpolate: where the parent's weights are now (default: the bundle "
                        "the run's config names); they must be the ones the run started from")
    args = p.parse_args(argv)
    if args.parent and args.interpolate is None:
        print("error: --parent goes with --interpolate", file=sys.stderr)
        return 2
    src, out = Path(args.bundle), Path(args.out)
    problem = inputs_problem(src, out, args.eval)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        if args.weights == "last":
            sd, metrics = last_weights(src)
        else:
            sd, metrics = weights(src / "model.safetensors"), None
        if sd is not None and args.interpolate is not None:
            sd, metrics = interpolated(src, sd, metrics, args.interpolate, args.parent)
    except WorldsimError as e:
        sd, metrics = None, str(e)
    if sd is None:
        print(f"error: {metrics}", file=sys.stderr)
        return 2
    try:
        write(src, out, sd, metrics, Path(args.eval) if args.eval else None)
    except (OSError, WorldsimError) as e:
        print(f"error: cannot ship into {out}: {e}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"shipped {src} -> {out} ({size / 2**20:.1f} MiB)")
    return 0


def inputs_problem(src: Path, out: Path, eval_dir: str | None) -> str | None:
    """A one-line reason not to ship, checked before anything in --out is touched, or None."""
    if not all((src / n).is_file() for n in ("config.json", "model.safetensors")):
        return f"{src} is not a trained bundle (no config.json and model.safetensors)"
    try:
        read_config(src)  # a torn config would be shipped as is
    except WorldsimError as e:
        return str(e)
    if not (src / "image_tokenizer.safetensors").is_file():
        return f"{src} has no image_tokenizer.safetensors to ship with its model"
    try:
        out_dir(str(out))
    except argparse.ArgumentTypeError as e:
        return f"--out: {e}"
    if out.exists() and os.path.samefile(src, out):
        return f"--out {out} is the bundle itself: ship into another folder"
    if eval_dir is not None and not Path(eval_dir).is_dir():
        return f"--eval {eval_dir}: no such folder (the reports --out holds would go with nothing in their place)"
    if eval_dir is not None and not any((Path(eval_dir) / n).is_file() for n in EVAL_FILES):
        return f"--eval {eval_dir} holds no report ({', '.join(EVAL_FILES)}): not a `worldsim eval` folder"
    return None


def weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a torn or foreign file is a one-line WorldsimError."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise WorldsimError(f"cannot read the weights {path}: {e}") from e


def write(src: Path, out: Path, sd: dict[str, torch.Tensor], metrics: dict | None, eval_dir: Path | None) -> None:
    """The shipped bundle in `out`: config, image tokenizer, weights in bf16, eval reports."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "config.json", out / "config.json")
    if metrics is not None:
        update_config(out, model_metrics=metrics)
    shutil.copy(src / "image_tokenizer.safetensors", out / "image_tokenizer.safetensors")
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()},
              str(out / "model.safetensors"))
    # The model shipped there before was judged by the reports there, not this one: each goes,
    # replaced by the eval folder's; where the eval folder is --out itself, its reports stay.
    same = eval_dir is not None and os.path.samefile(eval_dir, out)
    for name in EVAL_FILES:
        if eval_dir is not None and (eval_dir / name).exists():
            if not same:
                shutil.copy(eval_dir / name, out / name)
        else:
            (out / name).unlink(missing_ok=True)
    if not same:  # the videos stay behind (assets/ has a size budget): no links to them
        drop_videos(out)
    for f in out.iterdir():
        if f.is_file():
            f.chmod(0o644)  # safetensors writes 0600; a shipped file is for everyone to read


def drop_videos(out: Path) -> None:
    """report.md's links to its mp4s, and report.json's entries for them, removed."""
    if (out / "report.md").exists():
        text = (out / "report.md").read_bytes().decode("utf-8")
        kept = "".join(line for line in text.splitlines(keepends=True) if not VIDEO_LINK.fullmatch(line.strip()))
        if kept != text:
            (out / "report.md").write_bytes(kept.encode("utf-8"))
    if (out / "report.json").exists():
        try:
            report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        except ValueError:
            return  # not a report this script can read: left as it is
        files = report.get("files") if isinstance(report, dict) else None
        if isinstance(files, dict) and any(str(k).endswith(".mp4") for k in files):
            report["files"] = {k: v for k, v in files.items() if not str(k).endswith(".mp4")}
            atomic_write_json(out / "report.json", report)


def last_weights(run: Path) -> tuple[dict[str, torch.Tensor] | None, dict | str]:
    """The last step's weights of a run and its bundle's metrics restated for them, or (None, a
    one-line reason) where the run kept no moving average or no training state."""
    state = run / "train_state.safetensors"
    metrics = dict(read_config(run).get("model_metrics") or {})
    if not metrics.get("ema"):
        return None, f"{run} kept no moving average: its model.safetensors holds its last weights"
    if not state.exists():
        return None, f"{state} is missing: the last weights of a run live in its training state"
    sd = checkpoint_weights(state)
    metrics.update(weights="last", ema_val_loss=metrics.get("val_loss"),
                   val_loss=metrics.get("val_loss_last_step"))
    return sd, metrics


def interpolated(run: Path, sd: dict[str, torch.Tensor], metrics: dict | None, alpha: float,
                 parent_dir: str | None = None) -> tuple[dict[str, torch.Tensor] | None, dict | str]:
    """(1 - alpha) * the run's parent + alpha * `sd`, and the run's metrics restated for it, or
    (None, a one-line reason) where the run has no parent or it no longer holds the weights the
    run started from. `parent_dir` names where the parent is now, if not where the run's config
    says."""
    if not 0.0 <= alpha <= 1.0:
        return None, f"--interpolate {alpha}: ALPHA is a share of the run's weights, from 0 to 1"
    cfg = read_config(run)
    init = cfg.get("init") or {}
    if not init.get("bundle"):
        return None, f"{run} did not start from a bundle (`worldsim train --init`): it has no parent to interpolate with"
    # recorded as `worldsim train --init` was given it: also looked for above the run's folder
    parent = Path(parent_dir or recorded_path(run, init["bundle"])) / "model.safetensors"
    if not parent.exists():
        return None, f"{parent}, the parent of {run}, is missing"
    if file_sha256(parent) != init.get("model_sha256"):
        return None, f"{parent} no longer holds the weights {run} started from (sha256 differs from its config's init.model_sha256)"
    base = weights(parent)
    if base.keys() != sd.keys() or any(base[k].shape != sd[k].shape for k in sd):
        return None, f"{parent} and {run} hold different tensors: not the same model"
    mixed = {k: torch.lerp(base[k].float(), v.float(), alpha) if v.is_floating_point() else v
             for k, v in sd.items()}
    metrics = dict(metrics if metrics is not None else cfg.get("model_metrics") or {})
    # no loss was measured on the interpolated weights; the run's own stays beside it
    metrics.update(interpolated={"parent": str(parent.parent), "parent_sha256": init["model_sha256"],
                                 "alpha": alpha},
                   run_val_loss=metrics.get("val_loss"), val_loss=None)
    return mixed, metrics


if __name__ == "__main__":
    sys.exit(main())
