"""Copy a trained bundle into assets/ as the shipped model: weights in bf16, with its eval report.

    python scripts/ship_model.py runs/ship --eval runs/ship-eval --out assets/models/crafter

Writes OUT/config.json, OUT/model.safetensors (floating tensors in bf16: half the size, and the
engine runs bf16 on CPUs with fast bf16 anyway), OUT/image_tokenizer.safetensors, and from the
eval folder report.md, report.json, the plots and the GIF. The model card (OUT/CARD.md) is
written by hand from the report. Evaluate the shipped copy too (`worldsim eval --bundle OUT`):
bf16 weights must hold the quality of the float32 ones.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

EVAL_FILES = ("report.md", "report.json", "psnr.png", "ssim.png", "changed_tiles.png", "rollouts.gif")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--eval", help="the bundle's `worldsim eval` folder")
    p.add_argument("--out", default="assets/models/crafter")
    args = p.parse_args(argv)
    src, out = Path(args.bundle), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "config.json", out / "config.json")
    shutil.copy(src / "image_tokenizer.safetensors", out / "image_tokenizer.safetensors")
    sd = load_file(str(src / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()},
              str(out / "model.safetensors"))
    if args.eval:
        for name in EVAL_FILES:
            if (Path(args.eval) / name).exists():
                shutil.copy(Path(args.eval) / name, out / name)
    for f in out.iterdir():
        if f.is_file():
            f.chmod(0o644)  # safetensors writes 0600; a shipped file is for everyone to read
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"shipped {src} -> {out} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
