"""The `pairline` command. Each part of the mission registers its own subcommands."""

from __future__ import annotations

import argparse
import sys

from pairline import __version__
from pairline.errors import PairlineError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pairline", description="A latency-first coding model, for one user.")
    parser.add_argument("--version", action="version", version=f"pairline {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    from pairline.assistant import agent_cmd, chat_cmd, edit_cmd
    from pairline.bench import cli as bench_cli
    from pairline.bench import eval_cli
    from pairline.editor import cli as editor_cli
    from pairline.engine import cli as engine_cli
    from pairline.models import cli as models_cli
    from pairline.router import cli as router_cli
    from pairline.server import cli as server_cli

    models_cli.add_parser(sub)
    edit_cmd.add_parser(sub)
    chat_cmd.add_parser(sub)
    agent_cmd.add_parser(sub)
    bench_cli.add_parser(sub)
    eval_cli.add_parser(sub)
    server_cli.add_parser(sub)
    router_cli.add_parser(sub)
    engine_cli.add_parser(sub)
    editor_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PairlineError as err:
        print(f"pairline: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pairline: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
