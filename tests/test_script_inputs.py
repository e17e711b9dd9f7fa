"""Bad input to scripts/ship_model.py, train_gpu.py and pick_temperature.py: one line, at parse
time where it can be, and nothing the user had is deleted or overwritten."""

import argparse
import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from _scripts import caught_parser, load_script
from _serving import tiny_bundle

ROOT = Path(__file__).resolve().parent.parent


def _one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


def _parser(mod, argv: list[str]) -> argparse.ArgumentParser:
    """The parser `mod.main` builds, caught as it is asked to parse `argv`."""
    return caught_parser(lambda: mod.main(argv))


def _undocumented(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    """Options and positionals without help, and subcommands without a description."""
    missing = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                if not sub.description:
                    missing.append(f"{name} (description)")
                missing += _undocumented(sub, f"{name} ")
        elif not isinstance(a, argparse._HelpAction) and not a.help:
            missing.append(prefix + (a.option_strings[0] if a.option_strings else a.dest))
    return missing


def _read_only(monkeypatch, root: Path, checked: bool = True) -> None:
    """Make `root` behave as a read-only filesystem: nothing can be made under it, and (where
    `checked`) os.access says so, as it does for root too on a read-only mount."""
    mkdir, access = Path.mkdir, os.access

    def under(p) -> bool:
        return Path(p).absolute().is_relative_to(root)

    def no_mkdir(self, *a, **k):
        if under(self):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", no_mkdir)
    if checked:
        monkeypatch.setattr(os, "access", lambda p, mode, **k: False if under(p) else access(p, mode, **k))


# -- ship_model.py ---------------------------------------------------------------------------
EVAL = ("report.md", "report.json", "psnr.png", "rollouts.gif")


@pytest.fixture
def shipped(tmp_path):
    """(the source bundle, an eval folder, an --out that holds a shipped model and its reports)."""
    ship = load_script("ship_model")
    src, ev, out = tmp_path / "run", tmp_path / "run-eval", tmp_path / "shipped"
    tiny_bundle(src)
    ev.mkdir()
    for name in EVAL:
        (ev / name).write_text(f"the run's {name}")
    assert ship.main([str(src), "--eval", str(ev), "--out", str(out)]) == 0
    return src, ev, out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_ship_model_refuses_a_missing_or_empty_eval_folder_and_keeps_the_reports(shipped, tmp_path, capsys):
    ship = load_script("ship_model")
    src, _, out = shipped
    before = _snapshot(out)
    capsys.readouterr()
    assert ship.main([str(src), "--eval", str(tmp_path / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "nope" in err and "no such folder" in err
    assert _snapshot(out) == before
    # a folder that holds no report at all (a mistyped path to some other folder) likewise
    (tmp_path / "empty").mkdir()
    assert ship.main([str(src), "--eval", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert _one_line(capsys.readouterr().err) and _snapshot(out) == before


def test_ship_model_eval_folder_that_is_out_keeps_its_reports(shipped, capsys):
    ship = load_script("ship_model")
    src, _, out = shipped
    reports = {n: (out / n).read_bytes() for n in EVAL}
    (out / "ssim.png").write_text("a stale plot, of the model shipped before")
    assert ship.main([str(src), "--eval", str(out), "--out", str(out)]) == 0
    assert {n: (out / n).read_bytes() for n in EVAL} == reports
    assert (out / "ssim.png").exists()  # it is in the eval folder named, so it stays


def test_ship_model_refuses_a_bundle_whose_config_is_not_json(tmp_path, capsys):
    ship = load_script("ship_model")
    src = tiny_bundle(tmp_path / "run")
    (src / "config.json").write_text('{"format": "worldsim.bundle", "vers')
    assert ship.main([str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "not valid JSON" in err and not (tmp_path / "out").exists()


def test_ship_model_refuses_truncated_weights_in_one_line_with_nothing_written(shipped, capsys):
    ship = load_script("ship_model")
    src, ev, out = shipped
    before = _snapshot(out)
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[:len(data) // 2])
    capsys.readouterr()
    assert ship.main([str(src), "--eval", str(ev), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "model.safetensors" in err
    assert _snapshot(out) == before


def test_ship_model_refuses_an_out_that_is_a_file(shipped, tmp_path, capsys):
    ship = load_script("ship_model")
    src, _, _ = shipped
    (tmp_path / "file").write_text("mine")
    capsys.readouterr()
    assert ship.main([str(src), "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "existing file" in err and (tmp_path / "file").read_text() == "mine"


def test_ship_model_refuses_an_out_that_is_the_bundle_itself(shipped, tmp_path, capsys):
    ship = load_script("ship_model")
    src, _, _ = shipped
    before = _snapshot(src)
    capsys.readouterr()
    assert ship.main([str(src), "--out", str(src)]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "the bundle itself" in err and _snapshot(src) == before
    assert ship.main([str(src), "--out", str(tmp_path / "." / "run")]) == 2  # another spelling of it
    assert _one_line(capsys.readouterr().err) and _snapshot(src) == before


@pytest.mark.parametrize("checked", [True, False], ids=["refused-up-front", "found-on-writing"])
def test_ship_model_out_on_a_read_only_filesystem_is_one_line(shipped, tmp_path, monkeypatch, capsys, checked):
    ship = load_script("ship_model")
    src, ev, _ = shipped
    ro = tmp_path / "ro"
    ro.mkdir()
    _read_only(monkeypatch, ro, checked)
    capsys.readouterr()
    assert ship.main([str(src), "--eval", str(ev), "--out", str(ro / "model")]) in (1, 2)
    err = capsys.readouterr().err
    assert _one_line(err) and str(ro) in err


def test_ship_model_help_describes_every_argument_and_the_default_out(capsys):
    ship = load_script("ship_model")
    assert _undocumented(_parser(ship, [])) == []
    with pytest.raises(SystemExit):
        ship.main(["--help"])
    assert "(default: assets/models/crafter)" in " ".join(capsys.readouterr().out.split())


# -- train_gpu.py ----------------------------------------------------------------------------
needs_git = pytest.mark.skipif(not (ROOT / ".git").exists(), reason="the GPU script snapshots the code with git")


@pytest.fixture
def gpu_inputs(tmp_path):
    """(shards, tokenizer) as `prepare` checks them: the files it packs, with any bytes."""
    shards, tok = tmp_path / "shards", tmp_path / "tok"
    shards.mkdir()
    tok.mkdir()
    for name in ("frames.npy", "actions.npy", "index.json"):
        (shards / name).write_bytes(b"0" * 64)
    for name in ("config.json", "image_tokenizer.safetensors"):
        (tok / name).write_bytes(b"{}")
    return shards, tok


def _prepare(gpu, gpu_inputs, dest, *extra) -> int:
    shards, tok = gpu_inputs
    return gpu.main(["prepare", "--shards", str(shards), "--tokenizer", str(tok), "--dest", str(dest), *extra])


@needs_git
def test_train_gpu_prepare_refuses_a_dest_it_did_not_write(gpu_inputs, tmp_path, capsys):
    gpu = load_script("train_gpu")
    victim = tmp_path / "victim"
    shutil.copytree(gpu_inputs[0], victim)  # `cp -r some_store victim`
    before = _snapshot(victim)
    assert _prepare(gpu, gpu_inputs, victim, "--ref", "HEAD") == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "victim" in err and "nothing was deleted" in err
    assert _snapshot(victim) == before
    (tmp_path / "a-file").write_text("mine")
    assert _prepare(gpu, gpu_inputs, tmp_path / "a-file") == 2
    assert _one_line(capsys.readouterr().err) and (tmp_path / "a-file").read_text() == "mine"


@needs_git
def test_train_gpu_prepare_replaces_an_empty_folder_or_its_own_carry(gpu_inputs, tmp_path, capsys):
    gpu = load_script("train_gpu")
    dest = tmp_path / "carry"
    dest.mkdir()
    assert _prepare(gpu, gpu_inputs, dest) == 0
    assert {p.name for p in dest.iterdir()} == {"origin.json", "src.tar", "shards", "tokenizer"}
    (dest / "src.tar").write_bytes(b"an old snapshot")
    assert _prepare(gpu, gpu_inputs, dest) == 0
    assert (dest / "src.tar").read_bytes() != b"an old snapshot"


@needs_git
def test_train_gpu_prepare_with_an_unknown_ref_is_one_line_and_keeps_the_carry(gpu_inputs, tmp_path, capsys):
    gpu = load_script("train_gpu")
    dest = tmp_path / "carry"
    assert _prepare(gpu, gpu_inputs, dest) == 0
    before = _snapshot(dest)
    capsys.readouterr()
    assert _prepare(gpu, gpu_inputs, dest, "--ref", "nosuchref") == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "--ref nosuchref" in err
    assert _snapshot(dest) == before


def test_train_gpu_run_refuses_a_work_folder_it_did_not_make(tmp_path, monkeypatch, capsys):
    gpu = load_script("train_gpu")
    monkeypatch.delenv("OUT", raising=False)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine")
    assert gpu.main(["run", "--inputs", str(tmp_path / "carry"), "--out", str(tmp_path / "out"),
                     "--work", str(victim)]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "notes.txt" in err and (victim / "notes.txt").read_text() == "mine"


def test_train_gpu_help_describes_every_subcommand_and_option():
    assert _undocumented(_parser(load_script("train_gpu"), [])) == []


def test_train_gpu_help_example_keeps_its_line_break(capsys):
    gpu = load_script("train_gpu")
    # The example's line continuation is a backslash in the text, not one that joins the lines.
    assert "--tokenizer assets/models/crafter \\\n        --data data/crafter" in gpu.__doc__
    with pytest.raises(SystemExit):
        gpu.main(["--help"])
    assert "crafter         --data" not in capsys.readouterr().out


# -- pick_temperature.py ---------------------------------------------------------------------
@pytest.fixture
def pick_args(tmp_path, monkeypatch):
    """A bundle and the start of a command line; judging fails the test (bad input must stop
    before any judging, and --threads before torch is told it)."""
    import torch

    import worldsim.evaluation

    monkeypatch.setattr(worldsim.evaluation, "evaluate", lambda *a, **k: pytest.fail("judged"))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: pytest.fail(f"torch told {n} threads"))
    b = tiny_bundle(tmp_path / "wm")
    return [str(b), "--data", str(tmp_path / "store"), "--temperatures", "1", "--no-progress"]


@pytest.mark.parametrize("extra, option", [
    (["--seeds", "-1"], "--seeds"),
    (["--seeds", "0,-3"], "--seeds"),
    (["--threads", "-2"], "--threads"),
    (["--out", "FILE"], "--out"),
])
def test_pick_temperature_refuses_bad_options_at_parse_time(pick_args, tmp_path, capsys, extra, option):
    pick = load_script("pick_temperature")
    (tmp_path / "FILE").write_text("mine")
    extra = [str(tmp_path / "FILE") if a == "FILE" else a for a in extra]
    with pytest.raises(SystemExit) as e:
        pick.main(pick_args + extra)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert _one_line(err) and option in err
    assert (tmp_path / "FILE").read_text() == "mine"


@pytest.mark.parametrize("checked", [True, False], ids=["refused-at-parse-time", "found-on-writing"])
def test_pick_temperature_out_on_a_read_only_filesystem_is_one_line(pick_args, tmp_path, monkeypatch, capsys,
                                                                   checked):
    pick = load_script("pick_temperature")
    ro = tmp_path / "ro"
    ro.mkdir()
    _read_only(monkeypatch, ro, checked)
    try:
        rc = pick.main(pick_args + ["--out", str(ro / "judged")])
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert _one_line(err) and str(ro) in err


def test_pick_temperature_help_describes_every_option():
    assert _undocumented(_parser(load_script("pick_temperature"), [])) == []


def test_ship_model_report_links_no_video_it_leaves_behind(shipped):
    """The mp4s stay behind (only the reports, plots and GIF are shipped): the shipped report.md
    linked four files that were not there."""
    ship = load_script("ship_model")
    src, ev, out = shipped
    (ev / "report.md").write_text("# report\n\n![rollouts](rollouts.gif)\n\n- [rollout_00.mp4](rollout_00.mp4)\n"
                                  "- [rollout_01.mp4](rollout_01.mp4)\n", encoding="utf-8")
    (ev / "rollout_00.mp4").write_bytes(b"video")
    assert ship.main([str(src), "--eval", str(ev), "--out", str(out)]) == 0
    assert (out / "report.md").read_text() == "# report\n\n![rollouts](rollouts.gif)\n\n"
    assert not (out / "rollout_00.mp4").exists()
    assert "rollout_00.mp4" in (ev / "report.md").read_text()  # the eval folder's own report is left as it was
    # report.json's list of files drops them too; an eval folder that is --out keeps its videos' links
    (ev / "report.json").write_text('{"files": {"report.md": "tables", "rollout_00.mp4": "video"}}')
    assert ship.main([str(src), "--eval", str(ev), "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text()) == {"files": {"report.md": "tables"}}
    (out / "rollout_00.mp4").write_bytes(b"video")
    (out / "report.md").write_text("- [rollout_00.mp4](rollout_00.mp4)\n")
    assert ship.main([str(src), "--eval", str(out), "--out", str(out)]) == 0
    assert (out / "report.md").read_text() == "- [rollout_00.mp4](rollout_00.mp4)\n"
