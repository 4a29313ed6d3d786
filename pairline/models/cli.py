"""`pairline models list | pull NAME | path NAME`."""

from __future__ import annotations

import argparse
from pathlib import Path

from pairline.models import fetch
from pairline.models.registry import MODELS, get_spec


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list, pull and locate the models pairline knows")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION")
    sub.required = True

    list_p = sub.add_parser("list", help="show the known models and whether they are pulled")
    list_p.set_defaults(func=cmd_list)

    pull_p = sub.add_parser("pull", help="download and verify a model, then print its path")
    pull_p.add_argument("name", metavar="NAME", help=f"one of: {', '.join(MODELS)}")
    pull_p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    pull_p.set_defaults(func=cmd_pull)

    path_p = sub.add_parser("path", help="print the path of a pulled model")
    path_p.add_argument("name", metavar="NAME", help=f"one of: {', '.join(MODELS)}")
    path_p.set_defaults(func=cmd_path)


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="pairline models")
    table.add_column("name", no_wrap=True)
    table.add_column("role")
    table.add_column("family")
    table.add_column("size (MB)", justify="right")
    table.add_column("pulled")
    table.add_column("path", overflow="fold")
    for spec in MODELS.values():
        pulled = fetch.is_pulled(spec.name)
        path = _short(fetch.model_path(spec.name)) if pulled else ""
        table.add_row(
            spec.name, spec.role, spec.family, f"{spec.size / 1e6:.0f}", "yes" if pulled else "no", path
        )
    Console().print(table)
    return 0


def _short(path: Path) -> str:
    # Only for display: the table is read by a person, `models path` gives the full path.
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def cmd_pull(args: argparse.Namespace) -> int:
    path = fetch.pull(args.name, progress=not getattr(args, "no_progress", False))
    print(path)
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    spec = get_spec(args.name)
    if not fetch.is_pulled(spec.name):
        raise fetch.not_pulled_error(spec.name)
    print(fetch.model_path(spec.name))
    return 0
