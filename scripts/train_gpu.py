"""Train the default Crafter world model on a CUDA GPU in one short call, from carried inputs.

Three steps, the middle one on the GPU machine:

    python scripts/train_gpu.py prepare --shards data/tokens-mix --tokenizer assets/models/crafter \\
        --data data/crafter                       # here: pack the inputs into .gpu/ (< 64 MiB)
    python3 scripts/train_gpu.py run --minutes 7  # there, from the repository root (carry .gpu,
                                                  # timeout_s 600): train, evaluate, bench; into $OUT
    python scripts/train_gpu.py unpack --results DIR --out runs/wm-gpu   # here: rebuild the bundle

    python scripts/train_gpu.py smoke             # all three on this CPU, tiny, in about a minute

`data/tokens-mix` holds `data/crafter` and a store collected with `--idle-do 0.05`
(`worldsim tokenize --data data/crafter --data data/crafter-idle5 ...`, the study's "The same fix
mixed into the old store"); its first store's held-out episodes are the shipped model's.

`prepare` writes `.gpu/`: a snapshot of the committed code (`git archive HEAD` of the packages
alone, so edits in the working tree cannot break the run and the checkout's results and weights
do not travel twice), the token shards gzipped (codes of a 256-code tokenizer squeeze to about a
tenth), the tokenizer (a model bundle may be named: its world-model weights stay here) and the
store's first validation episodes. It refuses a carry that would not fit beside the checkout,
which travels too.
`run` installs nothing: it maps the snapshot's packages with PYTHONPATH, trains with
`worldsim train` under bf16 autocast for `--minutes` of training time (the learning-rate schedule
runs on that clock, so the cosine ends when the time does), evaluates the bundle on the carried
episodes with `worldsim eval` when the snapshot has it, and benches the decoders. It ends within
`--budget` minutes of wall clock, however slow the machine: training still running a minute
before then is stopped (it checkpoints on the way out), and the eval and the bench get what is
left, or are skipped. Training that stops early or fails after a checkpoint still brings back
the checkpoint's weights. What comes back fits the device's limits (at most 8 files of at most
16 MiB): the weights in bf16, split if they must be, the config, the training log, the eval
report and the bench.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU = ROOT / ".gpu"  # ignored by git (.gitignore), named in the device call's carry
PART = 15 * 2**20  # weights come back in parts under the 16 MiB limit per file
MAX_FILES = 8  # files that come back from a device call
CARRY_LIMIT = 64 * 2**20  # the device call's limit on the checkout and the carry together
CARRY_MARGIN = 4 * 2**20  # room for what the checkout gains before the call
CODE = ("pyproject.toml", "setup.py", "worldsim", "tokenizers", "inference", "client")  # what runs there
# What `prepare` writes into --dest and `run` into --work: the only folders they delete to start
# again, so that a mistyped folder is refused rather than emptied. origin.json comes first.
CARRY = {"origin.json", "src.tar", "shards", "tokenizer", "val"}
WORK = {"src", "shards", "bundle", "report"}
# Seconds of `run`'s --budget kept for what follows each step: after training, to bring the
# weights back (from its checkpoint if it was stopped); after the eval, for the bench.
AFTER_TRAIN, AFTER_EVAL = 60, 45
GRACE = 30  # seconds a stopped child gets to checkpoint and exit before it is killed


def sh(cmd: list[str], timeout: float | None = None, **kw) -> int:
    """Run `cmd`; past `timeout` seconds it is stopped with SIGTERM (a training run then
    checkpoints), and killed if it has not ended GRACE seconds later."""
    print("+", " ".join(cmd), flush=True)
    with subprocess.Popen(cmd, **kw) as p:
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"stopped after {timeout:.0f} s: the rest of --budget is kept for what follows", flush=True)
            p.terminate()
            try:
                return p.wait(timeout=GRACE)
            except subprocess.TimeoutExpired:
                p.kill()
                return p.wait()


# -- here ------------------------------------------------------------------------------------
def prepare(args: argparse.Namespace) -> None:
    dest = Path(args.dest)
    shards, tok = Path(args.shards), Path(args.tokenizer)
    # Every input checked before the old carry goes: a mistyped folder must not cost a good one.
    _need([shards / n for n in ("frames.npy", "actions.npy", "index.json")], "--shards: token shards")
    _need([tok / n for n in ("config.json", "image_tokenizer.safetensors")], "--tokenizer: a bundle with an image tokenizer")
    if args.data:
        _need([Path(args.data) / "dataset.json"], "--data: an episode store")
    # The committed code only: helpers' or editors' half-made changes never reach the GPU.
    ref = args.ref
    if ref == "WORKTREE":  # the tracked files as they are now, without touching the index
        ref = _git("stash", "create", what="--ref WORKTREE").decode().strip() or "HEAD"
    archive = _git("archive", "--format=tar", ref, "--", *CODE, what=f"--ref {ref}")
    _clear(dest, CARRY, "--dest", "a carry that `prepare` wrote")
    (dest / "shards").mkdir(parents=True)
    # Where the shards live here: `unpack` writes it into the bundle, whose training.shards
    # would otherwise name the device's copy (and `worldsim eval` would judge the whole store).
    # Written first, it also marks the folder as a carry should the rest be cut short.
    (dest / "origin.json").write_text(json.dumps({"shards": str(shards.resolve())}))
    (dest / "src.tar").write_bytes(archive)
    for name in ("frames.npy", "actions.npy"):
        # mtime 0: the same inputs pack to the same bytes
        with open(shards / name, "rb") as f, open(dest / "shards" / f"{name}.gz", "wb") as raw, \
                gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as g:
            shutil.copyfileobj(f, g)
    shutil.copy(shards / "index.json", dest / "shards" / "index.json")
    # `worldsim train --tokenizer` reads config.json and image_tokenizer.safetensors alone.
    (dest / "tokenizer").mkdir()
    for name in ("config.json", "image_tokenizer.safetensors"):
        shutil.copy(Path(args.tokenizer) / name, dest / "tokenizer" / name)
    if args.data:
        _copy_val_episodes(Path(args.data), dest / "val", args.val_episodes)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    tree = checkout_size()
    print(f"prepared {dest}: {size / 2**20:.1f} MiB, beside a checkout of {tree / 2**20:.1f} MiB "
          f"(the device call's limit is {CARRY_LIMIT / 2**20:.0f} MiB for both)")
    if size + tree > CARRY_LIMIT - CARRY_MARGIN:
        raise SystemExit(f"too large to carry: {(size + tree) / 2**20:.1f} MiB with the checkout, "
                         f"over {(CARRY_LIMIT - CARRY_MARGIN) / 2**20:.0f}; tokenize fewer episodes "
                         "or carry fewer validation episodes (--val-episodes)")


class Refused(Exception):
    """A one-line refusal (bad input), printed without a traceback."""


def _need(paths: list[Path], what: str) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise Refused(f"{what} is missing {', '.join(missing)}")


def _git(*args: str, what: str) -> bytes:
    """git's output, or a one-line refusal naming the option that led to it."""
    r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True)
    if r.returncode:
        err = r.stderr.decode(errors="replace").strip().splitlines()
        raise Refused(f"{what}: git {args[0]} failed ({err[0] if err else f'exit {r.returncode}'})")
    return r.stdout


def _clear(folder: Path, ours: set[str], option: str, what: str, delete: bool = True) -> None:
    """Delete `folder` to start again, where it is empty or holds only what this script writes
    there; any other folder is refused with nothing deleted. `delete=False` only checks."""
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise Refused(f"{option} {folder} is not a folder; name a new one")
    names = {p.name for p in folder.iterdir()}
    if names - ours:
        raise Refused(f"{option} {folder} holds {', '.join(sorted(names - ours)[:3])}: not {what}; "
                      "name a new or empty folder (nothing was deleted)")
    if delete:
        shutil.rmtree(folder)


def checkout_size() -> int:
    """Bytes of what the device copies of the checkout: tracked files and untracked ones that
    git does not ignore."""
    names = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard", what="the checkout's size")
    paths = (ROOT / n for n in names.decode().split("\0") if n)
    return sum(p.stat().st_size for p in paths if p.is_file())


def _copy_val_episodes(store: Path, out: Path, n: int) -> None:
    sys.path.insert(0, str(ROOT))
    from worldsim.data.store import EpisodeStore

    s = EpisodeStore(store)
    _, val = s.split()
    (out / "episodes").mkdir(parents=True)
    info = json.loads((store / "dataset.json").read_text())
    keep = val[:n]
    for eid in keep:
        shutil.copy(s.episode_path(eid), out / "episodes" / s.episode_path(eid).name)
    (out / "dataset.json").write_text(json.dumps(info))


def unpack(args: argparse.Namespace) -> None:
    """Rebuild a bundle from what `run` brought back: join the weight parts, copy the rest, and
    point its training.shards at the shards here (from --shards, else the carry's origin.json)."""
    res, out, inputs = Path(args.results), Path(args.out), Path(args.inputs)
    _need([res / "config.json"], "--results: what `run` brought back")
    cfg = json.loads((res / "config.json").read_text())
    sent = cfg.pop("transfer", None)  # how the weights were split, to check them by
    parts = sorted(res.glob("model.safetensors.part*"))
    if not parts:
        raise Refused(f"{res} holds no weight parts (model.safetensors.part*): training wrote no "
                      "weights there, or they were not brought back; nothing was unpacked")
    weights = b"".join(p.read_bytes() for p in parts)
    if sent is not None and (len(parts) != sent["parts"] or hashlib.sha256(weights).hexdigest() != sent["sha256"]):
        raise Refused(f"{res} holds {len(parts)} of the {sent['parts']} weight parts `run` wrote, or "
                      "other bytes: bring them all back before unpacking")
    tok = res / "image_tokenizer.safetensors"
    if not tok.exists():  # not brought back (it went there from here): the carry's copy
        tok = inputs / "tokenizer" / "image_tokenizer.safetensors"
        _need([tok], "--inputs: the carry `prepare` wrote (for the image tokenizer)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.safetensors").write_bytes(weights)
    shutil.copy(tok, out / "image_tokenizer.safetensors")
    for p in res.iterdir():
        if not p.name.startswith("model.safetensors.part") and p.name != "config.json":
            shutil.copy(p, out / p.name)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    _relocate_shards(out, args.shards, inputs / "origin.json")
    print(f"bundle in {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")


def _relocate_shards(bundle: Path, shards: str | None, origin: Path) -> None:
    if shards is None and origin.exists():
        shards = json.loads(origin.read_text())["shards"]
    sys.path.insert(0, str(ROOT))
    from worldsim.bundle import read_config, update_config

    if not (bundle / "config.json").exists():
        return
    cfg = read_config(bundle)
    if shards is None:
        print(f"warning: training.shards still names the device's {cfg.get('training', {}).get('shards')}; "
              "pass --shards (the shards prepared here) so that `worldsim eval` keeps to the held-out "
              "episodes", file=sys.stderr)
        return
    update_config(bundle, training={**cfg.get("training", {}), "shards": str(shards)})


# -- there -----------------------------------------------------------------------------------
def game_args() -> list[str]:
    """The eval's game column replays Crafter; a device without the game skips it (the
    bundle is judged with it here, after `unpack`)."""
    return [] if importlib.util.find_spec("crafter") else ["--no-game"]


def run(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.budget * 60  # the whole of `run`, however slow the machine

    def left(keep: float = 0.0) -> float:
        return deadline - time.monotonic() - keep

    if args.minutes * 60 + AFTER_TRAIN + AFTER_EVAL > args.budget * 60:
        raise Refused(f"--minutes {args.minutes:g} of training leaves no room for the eval and the bench "
                      f"in --budget {args.budget:g}; train for at most {args.budget - 2:g} minutes, or "
                      "raise --budget (below the device call's timeout_s)")
    work = Path(args.work).resolve()
    _clear(work, WORK, "--work", "a work folder that `run` made", delete=False)
    inputs = Path(args.inputs).resolve()
    _need([inputs / "src.tar", inputs / "tokenizer" / "image_tokenizer.safetensors"]
          + [inputs / "shards" / n for n in ("frames.npy.gz", "actions.npy.gz", "index.json")],
          "--inputs: the carry `prepare` wrote (name .gpu in the device call's carry)")
    out = Path(args.out if getattr(args, "force_out", False) else os.environ.get("OUT") or args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _clear(work, WORK, "--work", "a work folder that `run` made")
    src = work / "src"
    src.mkdir(parents=True)
    with tarfile.open(inputs / "src.tar") as t:
        # Python 3.12+ warns without a filter; the snapshot holds plain files alone
        t.extractall(src, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    # No install: the three top-level packages map into the worldsim namespace by links.
    for d in ("tokenizers", "inference", "client"):
        (src / "worldsim" / d).symlink_to(f"../{d}")
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONUNBUFFERED": "1"}
    # `python -m` puts the working directory first on sys.path: run from the repository root,
    # it would import the checkout's worldsim/, whose top-level packages are not mapped in. So
    # every child starts in the work folder.
    shards = work / "shards"
    shards.mkdir()
    for name in ("frames.npy", "actions.npy"):
        with gzip.open(inputs / "shards" / f"{name}.gz", "rb") as g, open(shards / name, "wb") as f:
            shutil.copyfileobj(g, f)
    shutil.copy(inputs / "shards" / "index.json", shards / "index.json")
    py = [sys.executable, "-m", "worldsim"]
    bundle = work / "bundle"
    t0 = time.time()
    rc = sh(py + ["train", "--shards", str(shards), "--tokenizer", str(inputs / "tokenizer"),
                  "--out", str(bundle), "--objective", "block_diffusion", "--preset", args.preset,
                  "--frames", str(args.frames), "--batch", str(args.batch), "--lr", str(args.lr),
                  "--warmup", str(args.warmup), "--steps", str(args.steps),
                  "--max-minutes", str(args.minutes), "--val-every", str(args.val_every),
                  "--dtype", args.dtype, "--device", args.device, "--no-progress"] + args.train_args,
            timeout=max(1.0, left(AFTER_TRAIN)), env=env, cwd=work)
    print(f"train: exit {rc} after {time.time() - t0:.0f} s", flush=True)
    if (bundle / "train_log.jsonl").exists():  # the curve comes back whatever happens next
        shutil.copy(bundle / "train_log.jsonl", out / "train_log.jsonl")
    if not (bundle / "model.safetensors").exists() and not _weights_of_checkpoint(bundle):
        return rc or 1
    _bring_back(bundle, out, args.keep_fp32)
    val = inputs / "val"
    if val.exists() and (src / "worldsim" / "commands" / "eval.py").exists():
        if left(AFTER_EVAL) < 20:
            print("eval: skipped, --budget is spent", flush=True)
        else:
            report = work / "report"
            rc_e = sh(py + ["eval", "--bundle", str(bundle), "--data", str(val), "--episodes",
                            str(args.eval_episodes), "--out", str(report), "--device", args.device,
                            "--no-progress"] + game_args() + args.eval_args,
                      timeout=left(AFTER_EVAL), env=env, cwd=work)
            for name in ("report.json", "report.md"):
                if (report / name).exists():
                    shutil.copy(report / name, out / f"eval_{name}")
            print(f"eval: exit {rc_e}", flush=True)
    if args.bench and left(5) < 15:
        print("bench: skipped, --budget is spent", flush=True)
    elif args.bench:
        with open(out / "bench.txt", "w") as f:
            sh(py + ["bench", "--bundle", str(bundle), "--device", args.device, "--dtype", args.dtype,
                     "--frames", "32", "--sessions", "1,16", "--json", str(out / "bench.json")],
               timeout=left(5), env=env, stdout=f, stderr=subprocess.STDOUT, cwd=work)
    return _fit_files(out) or (rc and 4)


def _weights_of_checkpoint(bundle: Path) -> bool:
    """A run stopped by --budget, or failed after a checkpoint, left its weights only in
    train_state.safetensors: write them into the bundle as its model (the last checkpoint's
    weights, its moving average where it kept one). Whether the bundle now has weights."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    state, cfg = bundle / "train_state.safetensors", bundle / "config.json"
    if not (state.is_file() and cfg.is_file() and "model" in json.loads(cfg.read_text())):
        return False
    with safe_open(str(state), "pt") as f:
        step = json.loads((f.metadata() or {}).get("state", "{}")).get("step")
    tensors = load_file(str(state))
    ema = {k[len("ema.module."):]: v for k, v in tensors.items() if k.startswith("ema.module.")}
    weights = ema or {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    save_file(weights, str(bundle / "model.safetensors"))
    print(f"training stopped before writing its bundle: bringing back its checkpoint's weights "
          f"(step {step})", flush=True)
    return True


def _fit_files(out: Path) -> int:
    """At most MAX_FILES files come back: drop what can be made again here (the bench's text
    beside its JSON, the report's markdown beside its JSON) before anything is lost."""
    def count() -> int:
        return sum(1 for p in out.iterdir() if p.is_file())

    for name in ("bench.txt", "eval_report.md"):
        if count() > MAX_FILES and (out / name).exists():
            (out / name).unlink()
            print(f"dropped {name}: at most {MAX_FILES} files come back", flush=True)
    n = count()
    if n > MAX_FILES:
        print(f"error: {n} files in {out}, over the {MAX_FILES} that come back: the weights' parts "
              "alone are too many (a smaller model, or bf16)", file=sys.stderr)
        return 3
    return 0


def _bring_back(bundle: Path, out: Path, keep_fp32: bool) -> None:
    """The weights in bf16 (they load into any dtype) in parts under 16 MiB, config and log."""
    import torch
    from safetensors.torch import load_file, save_file

    sd = load_file(str(bundle / "model.safetensors"))
    if not keep_fp32:
        sd = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in sd.items()}
    tmp = bundle / "model.bf16.safetensors"
    save_file(sd, str(tmp))
    data = tmp.read_bytes()
    for old in out.glob("model.safetensors.part*"):  # an earlier run's, never to be joined to these
        old.unlink()
    n = -(-len(data) // PART)  # parts, the last one short
    for k in range(n):
        (out / f"model.safetensors.part{k:02d}").write_bytes(data[k * PART:(k + 1) * PART])
    # The config says how the weights were split, so that `unpack` can check it has them all;
    # the image tokenizer stays: it came from here.
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["transfer"] = {"parts": n, "sha256": hashlib.sha256(data).hexdigest()}
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


# -- smoke -----------------------------------------------------------------------------------
def smoke(args: argparse.Namespace) -> int:
    """The whole recipe on this CPU with a tiny store, tokenizer and model, in about a minute."""
    import tempfile

    tmp = Path(args.work or tempfile.mkdtemp(prefix="worldsim-gpu-smoke-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    py = [sys.executable, "-m", "worldsim"]
    store, tok, shards = tmp / "store", tmp / "tok", tmp / "shards"
    steps = [
        py + ["collect", "--env", "crafter", "--episodes", "4", "--steps", "24", "--workers", "1",
              "--out", str(store), "--no-progress"],
        py + ["train-tokenizer", "--kind", "tile", "--data", str(store), "--out", str(tok),
              "--no-progress"],
        py + ["tokenize", "--data", str(store), "--tokenizer", str(tok), "--out", str(shards),
              "--no-progress"],
    ]
    for cmd in steps:
        if sh(cmd, env=env):
            return 1
    dest = tmp / "carry"
    prepare(argparse.Namespace(dest=str(dest), ref=args.ref, shards=str(shards), tokenizer=str(tok),
                               data=str(store), val_episodes=2))
    results = tmp / "results"
    # The device run's paths: bf16 autocast, the eval, the bench, all under a --budget.
    rc = run(argparse.Namespace(inputs=str(dest), out=str(results), force_out=True, work=str(tmp / "work"),
                                preset="tiny", frames=4, batch=2, lr=1e-3, warmup=2, steps=6,
                                minutes=0.5, budget=5.0, val_every=3, dtype="bf16", device="cpu",
                                keep_fp32=False, eval_episodes=2, bench=True, train_args=[],
                                eval_args=["--horizon", "3", "--context", "1"]))
    if rc:
        return rc
    unpack(argparse.Namespace(results=str(results), out=str(tmp / "bundle"), shards=None, inputs=str(dest)))
    from_bundle = [sys.executable, "-c",
                   "import sys; from worldsim.inference.engine import Engine; "
                   "e = Engine.from_bundle(sys.argv[1]); print('bundle loads:', e.cfg.dim, 'wide')",
                   str(tmp / "bundle")]
    return sh(from_bundle, env=env)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare", help="here: pack code, shards, tokenizer and validation episodes into .gpu/",
                       description="Pack the committed code, the token shards (gzipped), the tokenizer and "
                                   "the store's first validation episodes into one folder for the device "
                                   "call's carry. A folder an earlier `prepare` wrote is replaced; any "
                                   "other non-empty folder is refused.")
    a.add_argument("--shards", required=True,
                   help="the token shards to train on (`worldsim tokenize --out`: frames.npy, actions.npy, "
                        "index.json)")
    a.add_argument("--tokenizer", required=True,
                   help="a bundle with the image tokenizer the shards were made with (its world-model "
                        "weights, if any, stay here)")
    a.add_argument("--data", help="the episode store, for validation episodes to evaluate on (default: none, "
                                  "and no eval there)")
    a.add_argument("--val-episodes", type=int, default=16,
                   help="validation episodes to carry from --data (default: 16)")
    a.add_argument("--ref", default="HEAD",
                   help="the commit whose code runs there, or WORKTREE for the tracked files as they "
                        "are now (default: HEAD)")
    a.add_argument("--dest", default=str(GPU),
                   help="the folder to pack into: new, empty or an earlier carry (default: .gpu, the "
                        "path the device call's carry names)")
    a.set_defaults(func=prepare)
    r = sub.add_parser("run", help="on the GPU machine: train, evaluate and bench; results into $OUT",
                       description="On the GPU machine, from the repository root: unpack the carry into "
                                   "--work, train with `worldsim train` for --minutes, evaluate on the "
                                   "carried episodes, bench, and write what comes back (at most 8 files "
                                   "of at most 16 MiB) into $OUT.")
    r.add_argument("--inputs", default=str(GPU), help="the folder `prepare` wrote (default: .gpu)")
    r.add_argument("--out", default="/tmp/worldsim-gpu-out",
                   help="where results go when $OUT is unset (default: /tmp/worldsim-gpu-out)")
    r.add_argument("--work", default="/tmp/worldsim-gpu",
                   help="scratch folder for the code, shards and bundle, replaced on each run; only an "
                        "empty one or one `run` made is deleted (default: /tmp/worldsim-gpu)")
    r.add_argument("--minutes", type=float, default=7.0, help="training time (default: 7)")
    r.add_argument("--budget", type=float, default=9.0,
                   help="wall-clock minutes for the whole run: training still running a minute before "
                        "is stopped and brings back its checkpoint, and the eval and the bench get what "
                        "is left; keep it under the device call's timeout_s (default: 9)")
    r.add_argument("--preset", default="crafter", help="model preset for `worldsim train` (default: crafter)")
    r.add_argument("--frames", type=int, default=8, help="frames per training window (default: 8)")
    r.add_argument("--batch", type=int, default=64, help="windows per step (default: 64)")
    r.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: 0.002)")
    r.add_argument("--warmup", type=int, default=200, help="warmup steps (default: 200)")
    r.add_argument("--steps", type=int, default=100000,
                   help="an upper bound; --minutes ends the run (default: 100000)")
    r.add_argument("--val-every", type=int, default=500, help="steps between validations (default: 500)")
    r.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"),
                   help="autocast dtype of training, and the bench's dtype (default: bf16)")
    r.add_argument("--device", default="cuda", help="torch device to train, evaluate and bench on (default: cuda)")
    r.add_argument("--keep-fp32", action="store_true",
                   help="bring the weights back in float32 rather than bf16 (twice the size)")
    r.add_argument("--eval-episodes", type=int, default=16,
                   help="carried validation episodes to evaluate on (default: 16)")
    r.add_argument("--no-bench", dest="bench", action="store_false", help="skip the decoders' bench")
    r.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                   help="extra arguments for `worldsim train` (last on the line)")
    r.set_defaults(func=run, eval_args=[])
    u = sub.add_parser("unpack", help="here: rebuild the bundle from the results",
                       description="Rebuild a bundle from what `run` brought back: join and check the "
                                   "weight parts, add the image tokenizer from the carry, and point the "
                                   "bundle's training.shards at the shards here.")
    u.add_argument("--results", required=True, help="the files `run` brought back (the device call's $OUT)")
    u.add_argument("--out", required=True, help="the bundle folder to write (made if missing)")
    u.add_argument("--shards", default=None,
                   help="the token shards here, for the bundle's training.shards (default: the ones "
                        "`prepare` packed, from INPUTS/origin.json)")
    u.add_argument("--inputs", default=str(GPU), help="the folder `prepare` wrote (default: .gpu)")
    u.set_defaults(func=unpack)
    s = sub.add_parser("smoke", help="all steps on this CPU with tiny settings",
                       description="Collect, fit a tile tokenizer, tokenize, prepare, run and unpack on "
                                   "this CPU at toy sizes, in about a minute, and load the bundle.")
    s.add_argument("--work", default=None,
                   help="folder for everything the smoke run makes (default: a new temporary folder)")
    s.add_argument("--ref", default="WORKTREE", help="the code to run (default: WORKTREE)")
    s.set_defaults(func=smoke)
    args = p.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (Refused, OSError) as e:
        print(f"train_gpu {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
