"""Where a server or router listens, and who may reach it: the listening socket, the web options
(`--allow-host`, `--allow-origin`) that `pairline serve` and `pairline route` share, and the warning
for a bind beyond this machine with no key (docs/server.md, "Threat model"). Standard library only,
so the commands can take their options from here without loading the web stack."""

from __future__ import annotations

import argparse
import logging
import socket

from pairline.errors import PairlineError


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening address taken now, before anything slow: a taken port fails at once, clearly.
    `pairline serve`, `pairline route` and the test threads (port 0) all bind through it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise PairlineError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def add_web_options(p: argparse.ArgumentParser) -> None:
    """What web pages and names get in (docs/server.md, "Threat model"); `pairline serve` and
    `pairline route` both take them (pairline.wire.guard enforces them)."""
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a host name clients use to reach this server (repeatable; '*' for any). Loopback names and "
                   "IP addresses are always accepted; other names are refused, against DNS rebinding")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (https://app.example:8443) whose pages may use this server (repeatable; '*' for "
                   "any). Pages on loopback names are always allowed; other pages are refused")


def warn_if_exposed(host: str, key: str | None, what: str, remedy: str) -> None:
    """A bind beyond this machine with no key: anyone who can reach the port drives the model."""
    if key is None and host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
        logging.getLogger("pairline.server").warning(
            "%s listens on %s with no API key: anyone who can reach this port can use it (%s)", what, host, remedy)
