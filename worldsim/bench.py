"""`worldsim bench`: every decoder on the same model, context and actions, side by side.

Per decoder: forward passes per frame, ms per frame (median, p95; image decode included when
the model has an image tokenizer), frames/s, the ratio to `ar`, PSNR against ground truth over
the rollout when data is given (beside the copy-last-frame baseline), aggregate frames/s with
several sessions stepped as one batch, and peak memory.

Speed at a fixed number of passes does not depend on the weights, so randomly initialised
presets measure speed too. A preset is built once and run under both objectives' decoders with
the same weights, so `ar`, `diagonal` and `block_diffusion` are timed on one network.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from worldsim.model import WorldModel
from worldsim.metrics import pooled_psnr_per_step
from worldsim.tokenizers.image import ImageTokenizer
from worldsim.inference.engine import DECODERS, DecoderSettings, Engine, graphs_by_default
from worldsim.inference.sampling import SamplingSettings


@dataclass
class BenchInputs:
    context: torch.Tensor  # (C, N) image tokens of the context frames
    context_actions: list[Any]  # C-1 actions
    plan: list[Any]  # one action per dreamed frame
    truth: np.ndarray | None = None  # (frames, H, W, 3) real frames that the plan leads to
    last_real: np.ndarray | None = None  # (H, W, 3) the last context frame, for copy-last


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _with_objective(model: WorldModel, objective: str) -> WorldModel:
    """The same weights viewed as a model of another objective (decoders check cfg.objective)."""
    if model.cfg.objective == objective:
        return model
    import copy

    view = copy.copy(model)  # shares parameters and submodules
    view.cfg = type(model.cfg).from_dict({**model.cfg.to_dict(), "objective": objective})
    return view


def run_decoder(model: WorldModel, image_tok: ImageTokenizer | None, action_tok: Any,
                settings: DecoderSettings, inputs: BenchInputs, frames: int, warmup: int = 1
                ) -> dict[str, Any]:
    """One session dreaming `frames` frames; per-frame stats after `warmup` frames."""
    eng = Engine(model, image_tok, action_tok, settings, max_sessions=1)
    s = eng.open(inputs.context, inputs.context_actions, seed=0)
    ms, passes, model_ms, sample_ms, decode_ms, images = [], [], [], [], [], []
    plan = (inputs.plan * (1 + (frames + warmup) // max(1, len(inputs.plan))))[: frames + warmup]
    for i, a in enumerate(plan):
        t0 = time.perf_counter()
        img, st = s.step(a)
        if eng.device.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) * 1000
        if i >= warmup:
            ms.append(dt)
            passes.append(st.passes)
            model_ms.append(st.model_ms)
            sample_ms.append(st.sample_ms)
            decode_ms.append(st.decode_ms)
        images.append(img)
    s.close()
    out = {"decoder": settings.name, "frames": len(ms), "passes_per_frame": float(np.mean(passes)),
           "ms_median": float(np.median(ms)), "ms_p95": float(np.percentile(ms, 95)),
           "model_ms": float(np.median(model_ms)), "sample_ms": float(np.median(sample_ms)),
           "decode_ms": float(np.median(decode_ms)), "image_decode": image_tok is not None}
    out["fps"] = 1000 / out["ms_median"]
    if inputs.truth is not None and image_tok is not None:
        n = min(len(inputs.truth), len(images))
        # One rollout: the error is pooled over its frames (see pooled_psnr_per_step).
        dreamed = torch.from_numpy(np.stack(images[:n]))[:, None]  # (S, 1, H, W, 3)
        truth = torch.from_numpy(inputs.truth[:n])[:, None]
        last = torch.from_numpy(inputs.last_real)[None, None].expand_as(truth)
        out["psnr"], out["psnr_first3"] = (pooled_psnr_per_step(dreamed[:k], truth[:k])[0] for k in (n, 3))
        out["copy_last_psnr"], out["copy_last_first3"] = (pooled_psnr_per_step(last[:k], truth[:k])[0]
                                                          for k in (n, 3))
    return out


def run_sessions(model: WorldModel, image_tok: ImageTokenizer | None, action_tok: Any,
                 settings: DecoderSettings, inputs: BenchInputs, sessions: int, frames: int
                 ) -> float:
    """Aggregate frames/s with `sessions` sessions stepped as one batch."""
    eng = Engine(model, image_tok, action_tok, settings, max_sessions=sessions)
    ss = [eng.open(inputs.context, inputs.context_actions, seed=i) for i in range(sessions)]
    eng.step({s: inputs.plan[0] for s in ss})  # warm-up
    t0 = time.perf_counter()
    for i in range(frames):
        eng.step({s: inputs.plan[(i + 1) % len(inputs.plan)] for s in ss})
    if eng.device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    for s in ss:
        s.close()
    return sessions * frames / dt


def bench(model: WorldModel, image_tok: ImageTokenizer | None, action_tok: Any, inputs: BenchInputs,
          decoders: list[DecoderSettings], frames: int, ar_frames: int, sessions: list[int],
          session_frames: int, progress: bool = True, ar_sessions: list[int] | None = None
          ) -> dict[str, Any]:
    device = next(model.parameters()).device
    rows = []
    for d in decoders:
        objective = DECODERS[d.name].OBJECTIVE
        m = _with_objective(model, objective)
        n = ar_frames if d.name == "ar" else frames
        if progress:
            print(f"  {d.name}: {n} frames ...", flush=True)
        r = run_decoder(m, image_tok, action_tok, d, inputs, n)
        r["speed_only"] = objective != model.cfg.objective  # weights not trained for this decoder
        resolved = d.resolve(objective)
        # The decoder's own settings, with graph replay as the engine ran it (its default on CUDA).
        r["settings"] = asdict(replace(resolved, graphs=graphs_by_default(resolved, device)).own())
        r["sessions_fps"] = {}
        for b in (ar_sessions if d.name == "ar" and ar_sessions is not None else sessions):
            if b > 1:
                if progress:
                    print(f"  {d.name}: {b} sessions ...", flush=True)
                r["sessions_fps"][b] = run_sessions(m, image_tok, action_tok, d, inputs, b, session_frames)
            else:
                r["sessions_fps"][b] = r["fps"]
        rows.append(r)
    ar = next((r for r in rows if r["decoder"] == "ar"), None)
    for r in rows:
        r["vs_ar"] = ar["ms_median"] / r["ms_median"] if ar else None
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return {"device": str(device), "dtype": dtype, "params": model.num_params(), "objective": model.cfg.objective,
            "tokens_per_frame": model.cfg.tokens_per_frame, "peak_memory_mb": peak_memory_mb(device),
            "threads": torch.get_num_threads(), "rows": rows}


# How a decoder's settings read in the table; a setting at its off value is left out.
_LABELS = {"steps": "K", "window": "w", "threshold": "t", "guidance": "g"}
_OFF = {"guidance": 0.0}


def _setting_label(key: str, value: Any) -> str:
    if value is None or value is False or (key in _OFF and value == _OFF[key]):
        return ""
    return key if value is True else f"{_LABELS.get(key, key)}={value}"


def format_table(result: dict[str, Any]) -> str:
    sessions = sorted({b for r in result["rows"] for b in r["sessions_fps"]})
    head = ["decoder", "passes/frame", "ms median", "ms p95", "frames/s", "x ar"]
    head += [f"fps@{b}" for b in sessions]
    has_psnr = any("psnr" in r for r in result["rows"])
    if has_psnr:
        head += ["PSNR", "copy-last", "PSNR 1-3", "copy 1-3"]
    lines = []
    for r in result["rows"]:
        name = " ".join(x for x in [r["decoder"], *(_setting_label(k, v) for k, v in r["settings"].items())] if x)
        if r["speed_only"]:
            name += " *"
        row = [name, f"{r['passes_per_frame']:.1f}", f"{r['ms_median']:.1f}", f"{r['ms_p95']:.1f}",
               f"{r['fps']:.2f}", f"{r['vs_ar']:.1f}" if r["vs_ar"] else "-"]
        row += [f"{r['sessions_fps'][b]:.2f}" if b in r["sessions_fps"] else "-" for b in sessions]
        if has_psnr:
            row += [f"{r['psnr']:.2f}", f"{r['copy_last_psnr']:.2f}", f"{r['psnr_first3']:.2f}",
                    f"{r['copy_last_first3']:.2f}"] if "psnr" in r and not r["speed_only"] else ["-"] * 4
        lines.append(row)
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*head), fmt.format(*["-" * w for w in widths])]
    out += [fmt.format(*l) for l in lines]
    notes = [f"{result['params'] / 1e6:.1f}M params, {result['tokens_per_frame']} tokens/frame, "
             f"{result['device']}, {result['dtype']}, {result['threads']} threads, "
             f"peak memory {result['peak_memory_mb']:.0f} MB"]
    if any(r["speed_only"] for r in result["rows"]):
        notes.append(f"* speed only: the weights were trained as {result['objective']}")
    if not result["rows"][0]["image_decode"]:
        notes.append("ms/frame is the model alone (no image tokenizer)")
    return "\n".join(out + notes)
