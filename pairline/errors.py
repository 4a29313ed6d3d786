"""Errors that reach the user as one clear line, never as a traceback."""


class PairlineError(Exception):
    """A failure the user can act on; the CLI prints `str(err)` and exits non-zero."""


_noticed: set[str] = set()


def notice(text: str) -> None:
    """A one-line notice on stderr (a fallback taken, a caveat), at most once per process."""
    import sys

    if text not in _noticed:
        _noticed.add(text)
        print(f"pairline: {text}", file=sys.stderr)
