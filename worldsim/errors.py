"""Errors a user can fix. The CLI prints these as one line and exits with status 2."""


class WorldsimError(Exception):
    """Bad input or an unusable file: the message says what is wrong and what to do."""
