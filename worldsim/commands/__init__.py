"""Subcommands of the `worldsim` CLI, one module each (see worldsim.cli)."""
