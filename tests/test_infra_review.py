"""The infrastructure every command rests on: bundles written by hand, by another version or on
another machine; atomic writes; argument types; device names; `worldsim info` on odd folders."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from worldsim import bundle
from worldsim.bundle import BundleError
from worldsim.cli import build_parser, main

from _cli import one_line_error
from _serving import tiny_bundle

ROOT = Path(__file__).resolve().parent.parent


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


def edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def info_row(folder: Path, capsys) -> str:
    assert main(["info", "--bundle", str(folder)]) == 0
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("bundle "))


# -- config.json --------------------------------------------------------------------------------
def test_config_json_is_utf8_whatever_the_locale(tmp_path):
    """JSON is UTF-8, but config.json was read (and text written) in the locale's encoding: under
    an ASCII locale a bundle whose config holds a non-ASCII name was "not valid JSON", and a
    report with one could not be written (on Windows, cp1252 misreads it instead)."""
    folder = tmp_path / "b"
    folder.mkdir()
    cfg = {"format": bundle.FORMAT, "version": bundle.VERSION, "env": "caf\u00e9"}
    (folder / "config.json").write_bytes(json.dumps(cfg, ensure_ascii=False).encode("utf-8"))
    bom = tmp_path / "bom"  # as Windows editors save it
    bom.mkdir()
    (bom / "config.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(cfg).encode())
    code = ("import sys\n"
            "from worldsim.bundle import read_config\n"
            "from worldsim.fileio import atomic_open\n"
            "print(ascii(read_config(sys.argv[1])['env']), ascii(read_config(sys.argv[2])['env']))\n"
            "with atomic_open(sys.argv[3], 'w') as f:\n"
            "    f.write('caf\\u00e9 \\u2192 ok')\n")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code, str(folder), str(bom), str(tmp_path / "report.md")],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["'caf\\xe9'", "'caf\\xe9'"]
    assert (tmp_path / "report.md").read_bytes().decode("utf-8") == "caf\u00e9 \u2192 ok"


@pytest.mark.parametrize("value", ["tiny", [1, 2], 3])
@pytest.mark.parametrize("component, load", [("model", bundle.load_world_model),
                                             ("image_tokenizer", bundle.load_image_tokenizer),
                                             ("action_tokenizer", bundle.load_action_tokenizer)])
def test_a_component_config_that_is_not_an_object_is_one_line(tmp_path, component, load, value):
    """An image tokenizer config of "vq" was a ValueError traceback (dict("vq")); a model config
    of "tiny" was refused as 'unknown model config keys: ['i', 'n', 't', 'y']'."""
    folder = tiny_bundle(tmp_path / "b")
    edit_config(folder, **{component: value})
    with pytest.raises(BundleError) as e:
        load(folder)
    msg = one_line(e)
    assert f"bad {component} config" in msg and ("JSON object" in msg or "is a dict" in msg), msg


@pytest.mark.parametrize("decoding", [[0.5], "hot", 0.9])
def test_a_decoding_entry_that_is_not_an_object_is_one_line(tmp_path, decoding, capsys):
    """It was an AttributeError traceback in play, serve, eval and info."""
    folder = tiny_bundle(tmp_path / "b")
    edit_config(folder, decoding=decoding)
    with pytest.raises(BundleError) as e:
        bundle.recorded_temperature(folder)
    assert "decoding must be a JSON object" in one_line(e)
    line = one_line_error(["info", "--bundle", str(folder)], capsys)
    assert line.startswith("worldsim info: error: ") and "decoding must be a JSON object" in line


# -- weights ------------------------------------------------------------------------------------
def test_a_half_precision_image_tokenizer_loads_as_float32_and_encodes(tmp_path):
    """It loaded in float16 and the first encode failed: 'Input type (float) and bias type
    (c10::Half) should be the same'."""
    folder = tiny_bundle(tmp_path / "b")
    sd = load_file(str(folder / "image_tokenizer.safetensors"))
    save_file({k: v.half() for k, v in sd.items()}, str(folder / "image_tokenizer.safetensors"))
    tok = bundle.load_image_tokenizer(folder)
    assert {p.dtype for p in tok.state_dict().values()} == {torch.float32}
    frames = torch.randint(0, 256, (2, tok.cfg.height, tok.cfg.width, 3), dtype=torch.uint8)
    assert tok.encode(frames).shape == (2, tok.cfg.tokens_per_frame)


def test_model_weights_of_mixed_floating_dtypes_are_refused_at_load(tmp_path):
    """They loaded, and the first forward failed deep in attention ('Expected query, key, and
    value to have the same dtype')."""
    folder = tiny_bundle(tmp_path / "b")
    sd = load_file(str(folder / "model.safetensors"))
    save_file({k: v.double() if i % 2 else v for i, (k, v) in enumerate(sd.items())},
              str(folder / "model.safetensors"))
    with pytest.raises(BundleError) as e:
        bundle.load_world_model(folder)
    assert "model.safetensors mixes weights of float32 and float64" in one_line(e)


def test_integer_weights_where_the_model_has_floats_name_the_tensor(tmp_path):
    """The line was 'does not match the config: Error(s) in loading state_dict for WorldModel:',
    with what was wrong on the lines it cut off."""
    folder = tiny_bundle(tmp_path / "b")
    sd = load_file(str(folder / "model.safetensors"))
    save_file({k: v.long() for k, v in sd.items()}, str(folder / "model.safetensors"))
    with pytest.raises(BundleError) as e:
        bundle.load_world_model(folder)
    msg = one_line(e)
    assert "model.safetensors does not match the config: " in msg and "is int64, not float32" in msg


def test_the_shipped_bundle_loads_as_before():
    shipped = ROOT / "assets" / "models" / "crafter"
    if not (shipped / "model.safetensors").is_file():
        pytest.skip("no shipped bundle in this checkout")
    model = bundle.load_world_model(shipped)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # as the file holds it
    tok = bundle.load_image_tokenizer(shipped)
    assert {t.dtype for t in tok.state_dict().values()} == {torch.float32}
    assert bundle.recorded_temperature(shipped) == 0.9


# -- checkpoints --------------------------------------------------------------------------------
def test_a_checkpoint_whose_state_is_not_an_object_is_refused(tmp_path):
    """A foreign safetensors file with a "state" that is JSON but not an object was returned as
    a list, and the trainer's `state.get("run")` was an AttributeError traceback."""
    from worldsim.checkpoint import read_checkpoint_state
    from worldsim.errors import WorldsimError

    path = tmp_path / "train_state.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"state": "[1, 2]"})
    with pytest.raises(WorldsimError) as e:
        read_checkpoint_state(path)
    assert "is not a worldsim checkpoint" in one_line(e)


# -- atomic writes ------------------------------------------------------------------------------
def test_an_atomic_write_of_a_long_name_fits_its_temporary(tmp_path):
    """The temporary was '.' + name + '.' + 8 random + '.tmp': a name of 250 bytes (which the
    filesystem takes) failed with 'File name too long'."""
    from worldsim.fileio import atomic_write_json

    path = tmp_path / ("r" * 245 + ".json")
    atomic_write_json(path, {"ok": 1})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert os.listdir(tmp_path) == [path.name]  # no temporary left behind


def test_a_failed_rename_names_the_file_asked_for(tmp_path, capsys, monkeypatch):
    """os.replace's error carries the temporary first: the line named '.report.json.x1y2.tmp',
    a file that was already removed, instead of the path that could not be written."""
    import worldsim.commands.collect as collect_cmd
    from worldsim.fileio import atomic_write_json

    target = tmp_path / "report.json"
    target.mkdir()  # a folder where the file should go
    monkeypatch.setattr(collect_cmd, "run", lambda args: atomic_write_json(target, {}))
    line = one_line_error(["collect", "--out", str(tmp_path / "x")], capsys)
    assert line == f"worldsim collect: error: Is a directory: {target}"
    assert sorted(os.listdir(tmp_path)) == ["report.json"]


def test_a_full_disk_keeps_the_old_file_and_names_the_new_one(tmp_path, capsys, monkeypatch):
    """A write that fails for space raises an OSError without a name: the line said only 'No
    space left on device', not which file was not written."""
    import errno

    import worldsim.commands.collect as collect_cmd
    from worldsim.fileio import atomic_write_json

    target = tmp_path / "config.json"
    target.write_text('{"old": 1}')

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    monkeypatch.setattr(collect_cmd, "run", lambda args: atomic_write_json(target, {"new": 1}))
    line = one_line_error(["collect", "--out", str(tmp_path / "x")], capsys)
    assert line == f"worldsim collect: error: No space left on device: {target}"
    assert target.read_text() == '{"old": 1}' and os.listdir(tmp_path) == ["config.json"]


def test_a_read_only_folder_names_the_file_not_a_temporary(tmp_path, capsys, monkeypatch):
    """The temporary could not be made: the line named '.report.json.k2j3x9q1.tmp', a random
    name that never existed. (mkstemp is refused as a read-only folder refuses it: the tests may
    run as root, whom permissions do not stop.)"""
    import tempfile

    import worldsim.commands.collect as collect_cmd
    from worldsim.fileio import atomic_write_json

    def read_only(dir, prefix, suffix):
        name = os.path.join(dir, prefix + "k2j3x9q1" + suffix)
        raise PermissionError(13, "Permission denied", name)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    target = tmp_path / "report.json"
    monkeypatch.setattr(collect_cmd, "run", lambda args: atomic_write_json(target, {}))
    line = one_line_error(["collect", "--out", str(tmp_path / "x")], capsys)
    assert line == f"worldsim collect: error: Permission denied: {target}"


# -- argument types -----------------------------------------------------------------------------
def test_an_empty_folder_name_is_refused_where_a_folder_must_exist(tmp_path, capsys):
    """Path("") is the working folder: `--data ""` (an unset shell variable) read it."""
    from worldsim.commands._args import existing_dir

    with pytest.raises(Exception, match="must name a folder, got ''"):
        existing_dir("")
    (tmp_path / "dir").mkdir()
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["tokenize", "--data", "", "--tokenizer", str(tmp_path / "dir"),
                                   "--out", str(tmp_path / "new")])
    assert e.value.code == 2
    assert "argument --data: must name a folder, got ''" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["-0", "-0.0", "-1e-400"])
def test_negative_zero_is_zero(text):
    from worldsim.commands._args import fraction, nonneg_float

    for check in (nonneg_float, fraction):
        x = check(text)
        assert x == 0 and math.copysign(1.0, x) == 1.0, (check.__name__, x)


def test_an_out_folder_through_a_broken_link_is_refused_at_parse_time(tmp_path):
    """The folder to make is a link to nowhere: it passed, and the command failed when it made
    the folder ('File exists')."""
    import argparse

    from worldsim.commands._args import out_dir, out_file

    (tmp_path / "link").symlink_to(tmp_path / "gone" / "away")
    for check, text in ((out_dir, tmp_path / "link"), (out_dir, tmp_path / "link" / "sub"),
                        (out_file, tmp_path / "link" / "x.json")):
        with pytest.raises(argparse.ArgumentTypeError, match="is a link to a missing"):
            check(str(text))
    assert out_dir(str(tmp_path / "new" / "sub")) == str(tmp_path / "new" / "sub")  # still fine


@pytest.mark.parametrize("name", ["cuda\n", "cpu\n", "cuda:\u0663", "cuda:0\n"])
def test_device_names_must_match_whole(name):
    """`$` matches before a final newline and `\\d` any Unicode digit: these passed the name
    check and reached torch.device, which refuses them with a traceback."""
    from worldsim.device import device_problem

    assert device_problem(name) == "must be auto, cpu, cuda, cuda:N or mps"


# -- worldsim info --------------------------------------------------------------------------------
def test_info_describes_a_model_config_from_before_objective_and_frames(tmp_path, capsys):
    """A model config without "objective" loads as the default (ar) model; info called it
    'no world model on crafter' and left out its window."""
    folder = tiny_bundle(tmp_path / "b", objective="ar")
    cfg = bundle.read_config(folder)
    model = {k: v for k, v in cfg["model"].items() if k not in ("objective", "frames")}
    edit_config(folder, model=model)
    assert bundle.load_world_model(folder).cfg.objective == "ar"
    row = info_row(folder, capsys)
    assert f"{folder}: ar on crafter, 8-frame window" in row and "no world model" not in row


@pytest.mark.parametrize("key, value", [("model", "tiny"), ("model_metrics", [1])])
def test_info_on_a_config_entry_that_is_not_an_object_is_one_line(tmp_path, key, value, capsys):
    folder = tiny_bundle(tmp_path / "b")
    edit_config(folder, **{key: value})
    line = one_line_error(["info", "--bundle", str(folder)], capsys)
    assert f"{key} must be a JSON object" in line


def test_info_on_a_training_run_in_progress(tmp_path, capsys):
    """A run that has not written its weights yet was described as a bundle that lost them."""
    from worldsim.checkpoint import save_checkpoint

    folder = tiny_bundle(tmp_path / "b")
    (folder / "model.safetensors").unlink()
    save_checkpoint(folder / "train_state.safetensors", torch.nn.Linear(2, 2), None,
                    {"step": 1200, "seconds": 3.0, "run": "world model"})
    row = info_row(folder, capsys)
    assert "no weights yet: a training run that has not finished (its checkpoint is at step 1,200)" in row
    assert "missing" not in row


def test_json_files_hold_no_nan(tmp_path):
    """An IDM's metrics (an F1 of a key group never pressed) went into config.json as `NaN`,
    which is no JSON: every reader but Python's refuses the file."""
    import json
    import math

    from worldsim.fileio import atomic_write_json

    atomic_write_json(tmp_path / "c.json", {"f1": {"drop": math.nan, "jump": 0.5}, "x": [math.inf, 1.0]})

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    assert json.loads((tmp_path / "c.json").read_text(), parse_constant=refuse) == \
        {"f1": {"drop": None, "jump": 0.5}, "x": [None, 1.0]}
