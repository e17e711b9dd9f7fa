import subprocess
import sys

import pytest

from worldsim.cli import COMMANDS, build_parser, main

from _cli import one_line_error


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"worldsim {command}" in out and len(out.splitlines()) > 3


def test_top_level_help_lists_commands():
    text = build_parser().format_help()
    for c in COMMANDS:
        assert c in text


def test_info_runs(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("torch", "crafter", "torch threads", "minerl", "cuda", "shipped model"):
        assert key in out


def test_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "worldsim", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("worldsim ")


def test_info_preset_prints_parameter_count(capsys):
    assert main(["info", "--preset", "mineworld-300m"]) == 0
    out = capsys.readouterr().out
    assert "321.0M parameters" in out and "hidden 1024" in out and "16 frames of 347 tokens" in out
    assert main(["info", "--preset", "nope"]) == 2


@pytest.fixture
def paths(tmp_path):
    """An existing file, an existing folder and a missing one, for path options."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    return {"file": str(tmp_path / "file"), "dir": str(tmp_path / "dir"), "new": str(tmp_path / "new")}


BAD_INPUTS = [
    # (argv with {file}/{dir}/{new} placeholders, what the one line must say)
    ("collect --out {file}", "argument --out: {file} is an existing file, not a folder"),
    ("collect --out {file}/sub", "argument --out: cannot make {file}/sub: {file} is a file"),
    ("collect --out {new} --episodes 0", "argument --episodes: must be at least 1, got 0"),
    ("collect --out {new} --steps -5", "argument --steps: must be at least 1, got -5"),
    ("collect --out {new} --workers 0", "argument --workers: must be at least 1, got 0"),
    ("collect --out {new} --seed -1", "argument --seed: must be 0 or more, got -1"),
    ("collect --out {new} --size 9y", "argument --size: must be N or HxW, got '9y'"),
    ("collect --out {new} --size 4", "argument --size: must be at least 8x8"),
    ("collect --out {new} --from-vpt {new}", "argument --from-vpt: no such folder: {new}"),
    ("tokenize --data {dir} --tokenizer {dir} --out {file}", "argument --out: {file} is an existing file"),
    ("tokenize --data {dir} --tokenizer {dir} --out {new} --batch 0", "argument --batch: must be at least 1"),
    ("tokenize --data {file} --tokenizer {dir} --out {new}", "argument --data: {file} is a file, not a folder"),
    ("tokenize --data {dir} --tokenizer {dir} --out {new} --device gpu",
     "argument --device: gpu: must be auto, cpu, cuda, cuda:N or mps"),
    ("train --shards {dir} --tokenizer {dir} --out {file}", "argument --out: {file} is an existing file"),
    ("train --shards {dir} --tokenizer {dir} --out {new} --val-every 0", "argument --val-every: must be at least 1"),
    ("train --shards {dir} --tokenizer {dir} --out {new} --lr -1", "argument --lr: must be greater than 0, got -1"),
    ("train --shards {dir} --tokenizer {dir} --out {new} --lr nan", "argument --lr: must be a finite number"),
    ("train --shards {dir} --tokenizer {dir} --out {new} --lr fast", "argument --lr: must be a number, got 'fast'"),
    ("train --shards {dir} --tokenizer {dir} --out {new} --steps 1.5", "argument --steps: must be a whole number"),
    ("train --shards {dir} --tokenizer {dir} --out {new} --frames 1", "argument --frames: must be 0 (the preset's) or at least 2"),
    ("train --shards {dir} --tokenizer {dir} --out {new} --warmup -1", "argument --warmup: must be 0 or more"),
    ("train --shards {dir} --tokenizer {dir} --out {new} --max-minutes -2", "argument --max-minutes: must be 0 or more"),
    ("train --shards {dir} --tokenizer {dir} --out {new} --checkpoint-seconds inf", "argument --checkpoint-seconds: must be a finite number"),
    ("train --shards {new} --tokenizer {dir} --out {new}", "argument --shards: no such folder: {new}"),
    ("train --shards {dir} --tokenizer {dir} --out {new} --objective mask", "argument --objective: invalid choice: 'mask'"),
    ("train --shards {dir} --tokenizer {dir}", "the following arguments are required: --out"),
    ("train-tokenizer --data {dir} --out {new} --eval-frames 0", "argument --eval-frames: must be at least 1, got 0"),
    ("train-tokenizer --data {dir} --out {new} --max-frames 0", "argument --max-frames: must be at least 1, got 0"),
    ("train-tokenizer --data {dir} --out {file}", "argument --out: {file} is an existing file"),
    ("train-tokenizer --data {dir} --out {new} --lr 0", "argument --lr: must be greater than 0, got 0"),
    ("bench --preset tiny --frames 0", "argument --frames: must be at least 1, got 0"),
    ("bench --preset tiny --context 0", "argument --context: must be at least 1, got 0"),
    ("bench --preset tiny --threshold 1.5", "argument --threshold: must be between 0 and 1, got 1.5"),
    ("bench --preset tiny --temperature -1", "argument --temperature: must be 0 or more, got -1"),
    ("bench --bundle {new}", "argument --bundle: no such folder: {new}"),
    # files written at the end are checked before the work
    ("bench --preset tiny --json {dir}", "argument --json: {dir} is a folder, not a file"),
    ("bench --preset tiny --json {file}/x.json", "argument --json: {file} is an existing file, not a folder"),
    ("play --gif {dir}", "argument --gif: {dir} is a folder, not a file"),
    ("play --gif {file}/x.gif", "argument --gif: {file} is an existing file, not a folder"),
]


@pytest.mark.parametrize("argv, says", BAD_INPUTS, ids=[a for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_at_parse_time(argv, says, paths, capsys):
    command = argv.split()[0]
    line = one_line_error(argv.format(**paths).split(), capsys)
    assert line.startswith(f"worldsim {command}: error: ")
    assert says.format(**paths) in line
    assert "Traceback" not in line


def test_evals_default_report_folder_is_checked_before_the_work(tmp_path, paths, capsys, monkeypatch):
    """Without --out the report goes beside the bundle: where that cannot be written (a
    read-only bundle), the eval ran to the end and then failed, losing the work."""
    import worldsim.evaluation as evaluation
    from _serving import tiny_bundle

    def must_not_run(*a, **k):
        raise AssertionError("the eval ran")

    monkeypatch.setattr(evaluation, "evaluate", must_not_run)
    tiny_bundle_dir = tiny_bundle(tmp_path / "b")
    blocker = tmp_path / "b-eval"
    blocker.write_text("a file where the report folder would go")
    line = one_line_error(["eval", "--bundle", str(tiny_bundle_dir), "--data", paths["dir"]], capsys)
    assert "the report's default folder" in line and "give --out" in line


def test_cuda_on_a_machine_without_it_is_one_line(paths, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = one_line_error(["train", "--shards", paths["dir"], "--tokenizer", paths["dir"],
                            "--out", paths["new"], "--device", "cuda"], capsys)
    assert "argument --device: cuda: " in line
    assert ("CPU-only build" if not torch.backends.cuda.is_built() else "no CUDA device") in line


def test_pick_device_rule():
    import torch

    from worldsim.device import pick_device
    from worldsim.errors import WorldsimError

    assert pick_device("cpu") == torch.device("cpu")
    want = "cuda:1" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto", local_rank=1) == torch.device(want)  # torchrun: this rank's GPU
    with pytest.raises(WorldsimError, match="--device tpu: must be auto"):
        pick_device("tpu")


def test_filesystem_errors_are_one_line(tmp_path, capsys, monkeypatch):
    """An OSError (here: a folder that cannot be made) ends in one line, not a traceback."""
    import worldsim.commands.collect as collect_cmd

    def refuse(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr(collect_cmd, "run", refuse)
    line = one_line_error(["collect", "--out", str(tmp_path / "x")], capsys)
    assert line == f"worldsim collect: error: Permission denied: {tmp_path / 'x'}"


@pytest.mark.parametrize("command, argv, resumes", [("collect", ["--out", "x"], True), ("info", [], False)])
def test_an_interrupted_command_says_it_resumes_only_if_it_does(command, argv, resumes, capsys, monkeypatch):
    """`worldsim eval` (or info, bench, play, serve) keeps nothing when stopped; its Ctrl-C
    said "finished work is kept, run again to resume" all the same."""
    import importlib

    from worldsim.cli import COMMANDS, RESUMABLE, main

    mod = importlib.import_module(f"worldsim.commands.{command}")

    def stopped(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "run", stopped)
    assert main([command, *argv]) == 130
    err = capsys.readouterr().err
    assert ("run again to resume" in err) is resumes and err.startswith(f"worldsim {command}: interrupted")
    assert RESUMABLE <= set(COMMANDS) and "eval" not in RESUMABLE


def test_warnings_print_on_their_own_line_under_a_progress_bar(capsys):
    import re
    import warnings

    from tqdm import tqdm

    from worldsim.cli import _warning_line

    with warnings.catch_warnings():
        warnings.showwarning = _warning_line
        bar = tqdm(total=10, file=sys.stderr, desc="work", mininterval=0)
        bar.update(3)
        warnings.warn("skipping corrupt episode 000001")
        bar.update(1)
        bar.close()
    err = capsys.readouterr().err
    # Split where a terminal starts a new line or returns the cursor to its start: the warning
    # must begin one of the pieces, not follow the bar's text.
    pieces = re.split(r"[\r\n]", err)
    assert any(p.startswith("worldsim: warning: skipping corrupt episode 000001") for p in pieces), err


def test_main_leaves_the_callers_handlers_as_they_were(capsys):
    """main() sets its SIGTERM handler and warning printer for the command's run only, so a
    program that calls it (the tests do) keeps its own."""
    import signal
    import warnings

    before = signal.getsignal(signal.SIGTERM), warnings.showwarning
    assert main(["info"]) == 0
    assert (signal.getsignal(signal.SIGTERM), warnings.showwarning) == before


@pytest.mark.parametrize("argv", [
    "eval --seed {big}",
    "train --shards {d} --tokenizer {d} --out {d}/o --seed {big}",
    "train-tokenizer --data {d} --out {d}/o --seed {big}",
    "play --seed {big}",
    "collect --out {d}/o --seed {big}",
    "train-idm --data {d} --out {d}/o --seed {big}",
])
def test_a_seed_past_31_bits_is_refused_at_parse_time(argv, tmp_path, capsys):
    """Seeds reach torch and numpy generators, some offset on the way: one past 2**64 failed
    with an overflow traceback once the data had loaded."""
    line = one_line_error(argv.format(big=2**64, d=tmp_path).split(), capsys)
    assert "--seed" in line and "at most 2147483647" in line


def test_building_every_command_parser_imports_no_torch():
    """`worldsim --help` must be instant: train-idm's parser read its defaults from the module
    that holds the model, which imports torch (some 2 s)."""
    code = "import sys; from worldsim.cli import build_parser; build_parser(); print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))[:3])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_a_mistyped_option_points_at_its_commands_help(capsys):
    """argparse said it from the top parser: "(see `worldsim --help`)", which lists commands only."""
    line = one_line_error(["eval", "--bundel", "x"], capsys)
    assert "unrecognized arguments: --bundel x" in line and "(see `worldsim eval --help`)" in line
