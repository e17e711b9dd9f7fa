"""Checks that need a CUDA GPU (run by hand on a machine that has one; CI has none).

    python benchmarks/cuda_check.py

1. Every decoder gives the same greedy frames on CUDA as on the CPU (fp32, tiny model).
2. Both objectives train on CUDA under bf16 autocast and the loss falls.
3. The image tokenizer encodes and decodes on CUDA.
4. Block-diffusion passes replayed as CUDA graphs give the same greedy frames as eager passes
   (tiny fp32, and the crafter preset in bf16), with sessions joining and leaving.
5. A block-diffusion frame makes no host sync before its end (CUDA's sync debug mode).
Prints one line per check and exits non-zero if any fails; a check that raises (a CUDA error, an
out-of-memory) is one FAIL line, and the checks after it still run. Without a CUDA device it
says so in one line and exits 2.
"""

import sys
import warnings

import numpy as np
import torch

from worldsim.envs.crafter import CRAFTER_SPACE
from worldsim.model import WorldModel, preset_config
from worldsim.objectives import Objective
from worldsim.tokenizers.action import make_action_tokenizer
from worldsim.tokenizers.image import PRESETS, ImageTokenizer
from worldsim.inference.cache import KVCache
from worldsim.inference.common import prefill
from worldsim.inference.decode_block_diffusion import decode as decode_bd
from worldsim.inference.engine import DecoderSettings, Engine
from worldsim.inference.sampling import GREEDY


def dream(model, decoder, device, ctx, plan):
    act = make_action_tokenizer(CRAFTER_SPACE, offset=model.cfg.codebook_size)
    e = Engine(model.to(device), None, act, DecoderSettings(decoder, sampling=GREEDY))
    s = e.open(ctx.to(device), [1])
    out = []
    for a in plan:
        s.step(a)
        out.append(s.last_frame.cpu())
    return torch.cat(out)


def graph_dream(model, graphs, ctx):
    """Greedy frames of 3 sessions over 12 steps; session 1 leaves at 5 and rejoins at 8."""
    act = make_action_tokenizer(CRAFTER_SPACE, offset=model.cfg.codebook_size)
    e = Engine(model, None, act, DecoderSettings("block_diffusion", sampling=GREEDY, graphs=graphs),
               max_sessions=3)
    s = [e.open(ctx.cuda(), [1]) for _ in range(3)]
    out = []
    for t in range(12):
        if t == 5:
            s[1].close()
        if t == 8:
            s[1] = e.open(ctx.cuda(), [1])
        live = [x for x in s if not x.closed]
        e.step({x: t % 17 for x in live}, decode_images=False)
        out.append(torch.cat([x.last_frame for x in live]).cpu().flatten())
    return torch.cat(out)


def count_syncs() -> int:
    """Host syncs inside block-diffusion frames of the crafter preset, past the first frames."""
    cfg = preset_config("crafter", objective="block_diffusion")
    model = WorldModel(cfg).eval().to("cuda", torch.bfloat16)
    cache = KVCache(cfg, 1, cfg.frames - 1, device="cuda", dtype=torch.bfloat16)
    frames = torch.randint(0, cfg.codebook_size, (1, 2, cfg.tokens_per_frame), device="cuda")
    acts = torch.zeros(1, 1, 1, dtype=torch.long, device="cuda") + cfg.codebook_size
    prefill(model, cache, [0], frames, acts)
    last = frames[:, -1]
    for _ in range(3):  # warm-up: allocator and pinned-memory pools
        last, _ = decode_bd(model, cache, [0], last, acts[:, 0], GREEDY)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(4):
                last, _ = decode_bd(model, cache, [0], last, acts[:, 0], GREEDY)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    for w in syncs[:5]:
        print(f"      sync: {w.filename}:{w.lineno}: {str(w.message)[:120]}")
    # The frame's end waits once, for its stage timings: allow one per frame.
    return max(0, len(syncs) - 4)


def check_decoders() -> int:
    failures = 0
    for objective, decoders in (("ar", ["ar", "diagonal"]), ("block_diffusion", ["block_diffusion"])):
        torch.manual_seed(0)
        model = WorldModel(preset_config("tiny", objective=objective)).eval()
        ctx = torch.randint(0, model.cfg.codebook_size, (2, model.cfg.tokens_per_frame))
        for d in decoders:
            cpu = dream(model, d, "cpu", ctx, [1, 2, 3, 4])
            gpu = dream(model, d, "cuda", ctx, [1, 2, 3, 4])
            same = (cpu == gpu).float().mean().item()
            ok = same > 0.95  # greedy argmax may flip on near-ties between devices
            failures += not ok
            print(f"{'ok' if ok else 'FAIL'}  {d}: CUDA and CPU greedy frames agree on {same:.1%} of tokens")
    return failures


def check_training() -> int:
    failures = 0
    for objective in ("ar", "block_diffusion"):
        torch.manual_seed(0)
        model = WorldModel(preset_config("tiny", objective=objective)).cuda().train()
        obj = Objective(model)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)
        f = torch.randint(0, 64, (1, 4, 16), device="cuda").expand(8, -1, -1)
        a = 64 + torch.randint(0, 17, (1, 4, 1), device="cuda").expand(8, -1, -1)
        losses = []
        for _ in range(60):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, _ = obj(f, a)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        ok = losses[-1] < losses[0] * 0.5
        failures += not ok
        print(f"{'ok' if ok else 'FAIL'}  train {objective} on CUDA bf16: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return failures


def check_tokenizer() -> int:
    tok = ImageTokenizer(PRESETS["crafter"]).cuda().eval()
    frames = np.random.default_rng(0).integers(0, 256, (8, 72, 72, 3), dtype=np.uint8)
    codes = tok.encode(frames)
    out = tok.decode(codes)
    ok = codes.shape == (8, 81) and out.shape == (8, 72, 72, 3) and out.is_cuda
    print(f"{'ok' if ok else 'FAIL'}  image tokenizer on CUDA: codes {tuple(codes.shape)}, frames {tuple(out.shape)}")
    return int(not ok)


def check_graphs() -> int:
    failures = 0
    for preset, dtype in (("tiny", torch.float32), ("crafter", torch.bfloat16)):
        torch.manual_seed(0)
        model = WorldModel(preset_config(preset, objective="block_diffusion")).eval().to("cuda", dtype)
        ctx = torch.randint(0, model.cfg.codebook_size, (2, model.cfg.tokens_per_frame))
        eager, replayed = (graph_dream(model, g, ctx) for g in (False, True))
        same = (eager == replayed).float().mean().item()
        ok = same > 0.99
        failures += not ok
        print(f"{'ok' if ok else 'FAIL'}  {preset} block_diffusion: CUDA graphs and eager frames agree "
              f"on {same:.2%} of tokens")
    return failures


def check_syncs() -> int:
    n_syncs = count_syncs()
    ok = n_syncs == 0
    print(f"{'ok' if ok else 'FAIL'}  block_diffusion frame: {n_syncs} host syncs before its end")
    return int(not ok)


CHECKS = (check_decoders, check_training, check_tokenizer, check_graphs, check_syncs)


def main() -> int:
    if not torch.cuda.is_available():
        print(f"cuda_check: no CUDA device (torch {torch.__version__}, built for CUDA "
              f"{torch.version.cuda}): nothing checked", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    failures = 0
    for check in CHECKS:
        try:
            failures += check()
        except Exception as e:  # one check's crash must not hide the others' results
            failures += 1
            first = (str(e).strip().splitlines() or [""])[0][:200]
            print(f"FAIL  {check.__name__}: {type(e).__name__}: {first}", flush=True)
            torch.cuda.empty_cache()  # an out-of-memory's leftovers, before the next check
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
