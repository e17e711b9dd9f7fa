"""What CLI tests share: running a command that must fail in one line."""

from worldsim.cli import main


def one_line_error(argv, capsys) -> str:
    """Run the CLI, expect exit status 2 and exactly one line on stderr; return that line."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse stops at parse time
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err.strip()
