"""What would fail or waste time on the device machine: scripts/train_gpu.py's budget and its
weights from a checkpoint, what `prepare` packs and `unpack` accepts, and benchmarks/gpu.sh and
cuda_check.py failing fast and bringing back at most the device's 8 files. No GPU is needed."""

import argparse
import gzip
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from _scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
needs_git = pytest.mark.skipif(not (ROOT / ".git").exists(), reason="the GPU script snapshots the code with git")


def _one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


# -- train_gpu.py prepare --------------------------------------------------------------------
@pytest.fixture
def gpu_inputs(tmp_path):
    shards, tok = tmp_path / "shards", tmp_path / "tok"
    shards.mkdir()
    tok.mkdir()
    for name in ("frames.npy", "actions.npy", "index.json"):
        (shards / name).write_bytes(os.urandom(4096))
    for name in ("config.json", "image_tokenizer.safetensors"):
        (tok / name).write_bytes(b"{}")
    return shards, tok


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@needs_git
def test_prepare_packs_the_same_inputs_to_the_same_bytes(gpu_inputs, tmp_path, monkeypatch):
    gpu = load_script("train_gpu")
    shards, tok = gpu_inputs
    packed = []
    for k, clock in enumerate((1_000_000_000.0, 1_000_000_100.0)):  # two prepares, a while apart
        monkeypatch.setattr(time, "time", lambda clock=clock: clock)
        dest = tmp_path / f"carry{k}"
        assert gpu.main(["prepare", "--shards", str(shards), "--tokenizer", str(tok), "--dest", str(dest)]) == 0
        packed.append(_files(dest))
    assert packed[0].keys() == packed[1].keys()
    assert [k for k in packed[0] if packed[0][k] != packed[1][k]] == []


# -- train_gpu.py unpack ---------------------------------------------------------------------
def test_unpack_refuses_results_without_weights(tmp_path, capsys):
    gpu = load_script("train_gpu")
    res = tmp_path / "res"
    res.mkdir()
    (res / "config.json").write_text(json.dumps({"model": {"dim": 8}}))  # no transfer, no parts
    (res / "train_log.jsonl").write_text("{}\n")
    carry = tmp_path / "carry"
    (carry / "tokenizer").mkdir(parents=True)
    (carry / "tokenizer" / "image_tokenizer.safetensors").write_bytes(b"tok")
    assert gpu.main(["unpack", "--results", str(res), "--out", str(tmp_path / "bundle"),
                     "--inputs", str(carry)]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "weight" in err
    assert not (tmp_path / "bundle").exists()


# -- train_gpu.py run ------------------------------------------------------------------------
def test_run_without_the_carry_names_it_and_keeps_the_work_folder(tmp_path, monkeypatch, capsys):
    gpu = load_script("train_gpu")
    monkeypatch.delenv("OUT", raising=False)
    work = tmp_path / "work"
    (work / "bundle").mkdir(parents=True)  # an earlier run's bundle
    (work / "bundle" / "model.safetensors").write_bytes(b"weights")
    assert gpu.main(["run", "--inputs", str(tmp_path / "no-carry"), "--out", str(tmp_path / "out"),
                     "--work", str(work)]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "carry" in err and ".gpu" in err
    assert (work / "bundle" / "model.safetensors").read_bytes() == b"weights"


def test_run_refuses_more_training_than_its_budget_holds(tmp_path, monkeypatch, capsys):
    gpu = load_script("train_gpu")
    monkeypatch.delenv("OUT", raising=False)
    assert gpu.main(["run", "--inputs", str(tmp_path), "--out", str(tmp_path / "out"), "--work",
                     str(tmp_path / "work"), "--minutes", "9", "--budget", "9"]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "--budget" in err
    assert not (tmp_path / "work").exists()


# A stand-in for the snapshot's `worldsim`: `train` writes what a real run has on disk after its
# first checkpoint (the bundle's config, the checkpoint, the log), then fails or hangs; `bench`
# writes its JSON. Written with numpy alone, so it starts in a moment.
FAKE_MAIN = '''
import json, sys, time
from pathlib import Path
import numpy as np
from safetensors.numpy import save_file

args = sys.argv[1:]
out = Path(args[args.index("--out") + 1]) if "--out" in args else None
if args[0] == "train":
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"model": {"dim": 4}, "training": {"shards": "there"}}))
    save_file({"model.w": np.full((4, 4), 0.5, np.float32), "optim.0.exp_avg": np.zeros((4, 4), np.float32)},
              str(out / "train_state.safetensors"), metadata={"state": json.dumps({"step": 7})})
    (out / "train_log.jsonl").write_text(json.dumps({"step": 7, "loss": 1.0}) + "\\n")
    print("checkpointed at step 7", flush=True)
    if "--fake-hang" in args:
        time.sleep(45)  # a stalled run; the budget must stop it
    sys.exit(1)  # a crash after the checkpoint (out of memory, say)
if args[0] == "bench":
    Path(args[args.index("--json") + 1]).write_text("{}")
'''


@pytest.fixture
def fake_carry(tmp_path):
    carry = tmp_path / "carry"
    for d in ("shards", "tokenizer"):
        (carry / d).mkdir(parents=True)
    for name in ("frames.npy.gz", "actions.npy.gz"):
        (carry / "shards" / name).write_bytes(gzip.compress(b"x"))
    (carry / "shards" / "index.json").write_text("{}")
    (carry / "tokenizer" / "image_tokenizer.safetensors").write_bytes(b"tok")
    (carry / "tokenizer" / "config.json").write_text("{}")
    with tarfile.open(carry / "src.tar", "w") as t:
        for name, text in (("worldsim/__init__.py", ""), ("worldsim/__main__.py", FAKE_MAIN),
                           ("tokenizers/__init__.py", ""), ("inference/__init__.py", ""),
                           ("client/__init__.py", "")):
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            t.addfile(info, io.BytesIO(text.encode()))
    return carry


def _run_args(carry: Path, tmp_path: Path, **kw) -> argparse.Namespace:
    base = dict(inputs=str(carry), out=str(tmp_path / "out"), force_out=True, work=str(tmp_path / "work"),
                preset="tiny", frames=4, batch=2, lr=1e-3, warmup=2, steps=6, minutes=0.01, budget=5.0,
                val_every=3, dtype="fp32", device="cpu", keep_fp32=False, eval_episodes=2, bench=True,
                train_args=[], eval_args=[])
    return argparse.Namespace(**{**base, **kw})


def _weights_back(out: Path) -> dict:
    from safetensors.torch import load

    cfg = json.loads((out / "config.json").read_text())
    parts = sorted(out.glob("model.safetensors.part*"))
    assert len(parts) == cfg["transfer"]["parts"] >= 1
    return load(b"".join(p.read_bytes() for p in parts))


def test_run_brings_back_the_checkpoint_of_a_training_that_failed(fake_carry, tmp_path):
    gpu = load_script("train_gpu")
    rc = gpu.run(_run_args(fake_carry, tmp_path))
    out = tmp_path / "out"
    assert rc != 0  # the failure is still reported...
    w = _weights_back(out)  # ...but the checkpoint's weights, the log and the bench came back
    assert list(w) == ["w"] and float(w["w"][0, 0]) == 0.5  # the model's, not the optimizer's
    assert (out / "train_log.jsonl").exists() and (out / "bench.json").exists()
    assert len([p for p in out.iterdir()]) <= 8


def test_run_stops_a_training_that_outlasts_its_budget(fake_carry, tmp_path, monkeypatch):
    gpu = load_script("train_gpu")
    # A budget of 20 s, of which the training may take all but 5: it is stopped, not waited for.
    monkeypatch.setattr(gpu, "AFTER_TRAIN", 5, raising=False)
    monkeypatch.setattr(gpu, "AFTER_EVAL", 0, raising=False)
    monkeypatch.setattr(gpu, "GRACE", 5, raising=False)
    rc = gpu.run(_run_args(fake_carry, tmp_path, budget=20 / 60, train_args=["--fake-hang"]))
    out = tmp_path / "out"
    assert rc != 0
    assert "w" in _weights_back(out)
    assert (out / "train_log.jsonl").exists()


def test_smoke_runs_the_device_paths(monkeypatch, tmp_path):
    """The smoke run trains under bf16 autocast and benches, as the device run does, under a budget."""
    gpu = load_script("train_gpu")
    seen = {}
    monkeypatch.setattr(gpu, "sh", lambda cmd, **kw: 0)
    monkeypatch.setattr(gpu, "prepare", lambda args: None)
    monkeypatch.setattr(gpu, "run", lambda args: seen.setdefault("run", args) and 1)
    assert gpu.main(["smoke", "--work", str(tmp_path)]) == 1
    args = seen["run"]
    assert args.dtype == "bf16" and args.bench and args.budget * 60 >= args.minutes * 60 + 105
    parsed = _run_parser_defaults(gpu)  # every option of the real run is set by the smoke run too
    assert set(parsed) - {"cmd", "func"} <= set(vars(args))


def _run_parser_defaults(gpu) -> dict:
    caught = {}

    def grab(self, args=None, namespace=None):
        caught["ns"] = argparse.ArgumentParser.parse_known_args(self, args, namespace)[0]
        raise SystemExit(0)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", grab)
        with pytest.raises(SystemExit):
            gpu.main(["run"])
    return vars(caught["ns"])


# -- benchmarks/gpu.sh -----------------------------------------------------------------------
STUB_PY = '''#!/usr/bin/env bash
# python3 on a machine with a GPU, minus the work: --json files are written, calls are logged.
echo "$*" >> "$STUB_LOG"
if [ "$1" = -c ]; then
    case "$2" in *cuda.is_available*) [ -z "${STUB_NO_CUDA:-}" ] || { echo "no CUDA" >&2; exit 1; };; esac
    exit 0
fi
prev=
for a in "$@"; do [ "$prev" = --json ] && echo '{}' > "$a"; prev=$a; done
echo "torch 2.11.0 cuda 13.0"
'''


def _gpu_sh(tmp_path: Path, *args: str, no_cuda: bool = False, python_too: bool = False):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "tee", "mkdir", "ln", "tail", "grep", "timeout", "cat", "env", "rm", "dirname"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    stub = bin_dir / "python3"
    stub.write_text(STUB_PY)
    stub.chmod(0o755)
    if python_too:
        (bin_dir / "python").symlink_to(stub)
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\necho 'NVIDIA H100 80GB HBM3, 81559 MiB'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    repo = tmp_path / "repo"  # gpu.sh maps the package folders by links in the copy it runs in
    (repo / "worldsim").mkdir(parents=True)
    out = tmp_path / "OUT"
    out.mkdir()
    env = {"PATH": str(bin_dir), "OUT": str(out), "STUB_LOG": str(tmp_path / "calls.log"), "HOME": str(tmp_path)}
    if no_cuda:
        env["STUB_NO_CUDA"] = "1"
    r = subprocess.run([str(bin_dir / "bash"), str(ROOT / "benchmarks" / "gpu.sh"), *args], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=120)
    calls = (tmp_path / "calls.log").read_text().splitlines() if (tmp_path / "calls.log").exists() else []
    return r, out, calls


@pytest.mark.parametrize("mode", ["quick", ""])
def test_gpu_sh_brings_back_at_most_8_files(tmp_path, mode):
    r, out, calls = _gpu_sh(tmp_path, *([mode] if mode else []), python_too=True)
    assert r.returncode == 0, r.stdout + r.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= 8, sorted(p.name for p in files)
    jsons = [p for p in files if p.suffix == ".json"]
    assert len(jsons) == sum("--json" in c for c in calls) >= 4  # every bench's JSON is among them
    assert any("cuda_check.py" in c for c in calls)


def test_gpu_sh_runs_with_python3_alone_and_installs_nothing(tmp_path):
    r, out, calls = _gpu_sh(tmp_path, "quick")  # the device's python3; no `python`, no `pip`
    assert r.returncode == 0, r.stdout + r.stderr
    assert "command not found" not in r.stdout + r.stderr
    assert sum("--json" in c for c in calls) == 4 and len(list(out.glob("*.json"))) == 4
    assert not any("pip" in c.split()[:3] for c in calls)


def test_gpu_sh_without_cuda_stops_at_once_with_one_line(tmp_path):
    r, out, calls = _gpu_sh(tmp_path, "quick", no_cuda=True, python_too=True)
    assert r.returncode != 0
    assert not any("bench" in c or "cuda_check.py" in c for c in calls)  # nothing more was run
    log = (out / "gpu.log").read_text()
    assert "no CUDA" in log


# -- benchmarks/cuda_check.py ----------------------------------------------------------------
def _cuda_check():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("cuda_check", ROOT / "benchmarks" / "cuda_check.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_cuda_check_without_cuda_says_so_in_one_line(monkeypatch, capsys):
    import torch

    mod = _cuda_check()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert mod.main() == 2
    cap = capsys.readouterr()
    assert _one_line(cap.err) and "no CUDA device" in cap.err


def test_cuda_check_goes_on_after_a_check_that_raises(monkeypatch, capsys):
    import torch

    mod = _cuda_check()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ran = []

    def crash():
        ran.append("crash")
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")

    def fine():
        ran.append("fine")
        print("ok  fine")
        return 0

    monkeypatch.setattr(mod, "CHECKS", (crash, fine), raising=False)
    # Old code has no CHECKS: its first CUDA step raises out of main on this CPU.
    if not hasattr(mod, "check_syncs"):
        with pytest.raises(Exception):
            mod.main()
        pytest.fail("cuda_check.main lets a check's exception end the run")
    assert mod.main() == 1
    out = capsys.readouterr().out
    assert ran == ["crash", "fine"]
    assert "FAIL  crash: RuntimeError: CUDA error: an illegal memory access was encountered" in out
    assert "ok  fine" in out and out.rstrip().endswith("1 failed")
