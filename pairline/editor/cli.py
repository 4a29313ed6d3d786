"""`pairline lsp`: the language server on stdin/stdout (docs/editor.md)."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from pairline.engine.load import add_runtime_option
    from pairline.models.registry import DEFAULT_REALTIME

    p = subparsers.add_parser(
        "lsp",
        help="a language server on stdio: inline completions, edits and explanations in your editor",
        description="Speak the Language Server Protocol on stdin/stdout: textDocument/inlineCompletion "
        "(suggestions at the cursor), code actions and the commands pairline.editSelection [uri, range, "
        "instruction] and pairline.explain [uri, range]. Logs go to stderr. Editor setup: docs/editor.md.",
    )
    p.add_argument("--model", "-m", default=DEFAULT_REALTIME, help=f"name or path (default {DEFAULT_REALTIME})")
    p.add_argument("--server", default=None, metavar="URL",
                   help="use a running `pairline serve` (e.g. http://127.0.0.1:8765) instead of loading the model "
                   "here; its API key, if any, comes from PAIRLINE_API_KEY")
    add_runtime_option(p)
    p.add_argument("--debounce-ms", type=float, default=30.0, metavar="MS",
                   help="an inline request waits this long and is dropped if a newer one or a change arrives "
                   "(default 30)")
    p.add_argument("--max-tokens", type=int, default=64, metavar="N", help="tokens per inline suggestion (default 64)")
    p.add_argument("--max-document-mib", type=float, default=2.0, metavar="MIB",
                   help="refuse (with an LSP error) documents larger than this (default 2)")
    p.add_argument("--stdio", action="store_true",
                   help="accepted and ignored: stdio is the only transport (VS Code's client adds this flag)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="what goes to stderr (default INFO)")
    p.set_defaults(func=cmd_lsp)
    return p


def _take_stdout() -> tuple[object, object]:
    """The protocol's own binary streams. fd 1 is then pointed at stderr, so that nothing else (a
    print, a native library's log line) can write into the LSP stream and corrupt it."""
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return sys.stdin.buffer, protocol_out


def cmd_lsp(args: argparse.Namespace) -> int:
    from pairline.editor.lsp import MIB, LspConfig, build_server
    from pairline.errors import PairlineError

    if args.debounce_ms < 0 or args.max_tokens < 1 or args.max_document_mib <= 0:
        raise PairlineError("--debounce-ms must be >= 0, --max-tokens >= 1, --max-document-mib > 0")
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("pygls").setLevel(logging.WARNING)  # pygls logs every message it sends at INFO
    stdin, stdout = _take_stdout()
    runtime = None if args.runtime == "auto" else args.runtime
    config = LspConfig(model=args.model, server=args.server, runtime=runtime, debounce_ms=args.debounce_ms,
                       max_tokens=args.max_tokens, max_document_bytes=int(args.max_document_mib * MIB))
    server = build_server(config)
    server.start_loading()  # while the editor initializes
    try:
        server.start_io(stdin, stdout)  # returns on `exit` or when the client closes stdin
    finally:
        server.close()
    # The LSP exit code: 0 after a shutdown request, else 1. os._exit because pygls' reader thread is
    # still blocked on stdin, and a normal exit would wait for it (until the client closes the pipe).
    logging.shutdown()
    sys.stderr.flush()
    os._exit(0 if server.shutdown_requested else 1)
