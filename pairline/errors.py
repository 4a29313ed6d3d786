"""Errors that reach the user as one clear line, never as a traceback."""


class PairlineError(Exception):
    """A failure the user can act on; the CLI prints `str(err)` and exits non-zero."""
