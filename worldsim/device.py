"""Where a run computes: the one rule for `--device auto`, and a one-line check of the others.

    auto      the process's CUDA device if torch sees one (cuda:LOCAL_RANK under torchrun), else cpu
    cpu | cuda | cuda:N | mps

torch is imported inside the functions so that the CLI can check a `--device` while parsing
without importing torch for `auto` or `cpu`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from worldsim.errors import WorldsimError

if TYPE_CHECKING:
    import torch

_NAME_RE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")  # fullmatch: "$" would let "cuda\n" in


def device_problem(name: str) -> str | None:
    """Why `name` cannot be used on this machine (one line, without the name), or None."""
    if not _NAME_RE.fullmatch(name):
        return "must be auto, cpu, cuda, cuda:N or mps"
    if name in ("auto", "cpu"):
        return None
    import torch

    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        return None if mps is not None and mps.is_available() else "MPS is not available here"
    if not torch.backends.cuda.is_built():
        return (f"this torch ({torch.__version__}) is a CPU-only build; use --device cpu, or "
                "install a CUDA build of torch")
    if not torch.cuda.is_available():
        return "torch sees no CUDA device (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
    if ":" in name and int(name.split(":")[1]) >= torch.cuda.device_count():
        return f"torch sees only {torch.cuda.device_count()} CUDA device(s)"
    return None


def pick_device(name: str = "auto", local_rank: int = 0) -> "torch.device":
    """The device a process runs on. Under torchrun, `auto` and `cuda` mean this rank's GPU."""
    import torch

    problem = device_problem(name)
    if problem:
        raise WorldsimError(f"--device {name}: {problem}")
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)
