import subprocess
import sys

import pytest

from worldsim.cli import COMMANDS, build_parser, main


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
    for key in ("torch", "crafter", "torch threads", "minerl", "cuda"):
        assert key in out


def test_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "worldsim", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("worldsim ")


def test_info_preset_prints_parameter_count(capsys):
    assert main(["info", "--preset", "mineworld-300m"]) == 0
    out = capsys.readouterr().out
    assert "321.0M parameters" in out and "hidden 1024" in out and "16 frames of 347 tokens" in out
    assert main(["info", "--preset", "nope"]) == 2
