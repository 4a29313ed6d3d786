"""`pairline serve`: WebSocket sessions and OpenAI-compatible HTTP on one port."""

from __future__ import annotations

import argparse
import logging
import os

from pairline.wire.listen import add_web_options, bind_socket, warn_if_exposed

API_KEY_ENV = "PAIRLINE_API_KEY"  # the same variable the clients (`--server`) send their key from


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from pairline.engine.load import add_runtime_option
    from pairline.models.registry import DEFAULT_REALTIME

    p = subparsers.add_parser(
        "serve",
        help="serve a model: WebSocket sessions at /v1/responses, OpenAI-compatible HTTP at /v1/...",
        description="Serve one model on HOST:PORT: the WebSocket session protocol at ws://HOST:PORT/v1/responses "
        "(docs/protocol.md), OpenAI-compatible /v1/chat/completions, /v1/completions, /v1/models, and /health, "
        "/metrics. Binds loopback by default; SIGTERM closes open sessions with a final event.",
    )
    p.add_argument("--model", "-m", default=DEFAULT_REALTIME, help=f"name or path (default {DEFAULT_REALTIME})")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' on /v1 (HTTP and WebSocket). Prefer the {API_KEY_ENV} "
                   "environment variable, read when this flag is absent: a flag is visible to every user in `ps`")
    add_web_options(p)
    p.add_argument("--max-sessions", type=int, default=8, metavar="N",
                   help="KV caches kept resident (least recently used evicted past N or past 1/4 of free RAM)")
    p.add_argument("--ctx", type=int, default=8192, metavar="N", help="context per session, tokens (default 8192)")
    p.add_argument("--max-queue", type=int, default=32, metavar="N", help="waiting requests before 429 (default 32)")
    add_runtime_option(p)
    p.add_argument("--idle-timeout", type=float, default=600.0, metavar="S", help="close idle sessions after S s")
    p.add_argument("--no-prefill-ahead", dest="prefill_ahead", action="store_false",
                   help="do not prefill sessions' drafts and context while the engine idles (they still count "
                   "in the prompt; docs/protocol.md, \"Prefill ahead\")")
    p.add_argument("--fim-order", default="spm", choices=["spm", "psm"],
                   help="infill prompt order for completions with a suffix (default spm: typing at the cursor "
                   "only appends to the prompt; docs/editor.md)")
    p.set_defaults(func=cmd_serve)
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    from pairline.engine.load import load_engine
    from pairline.errors import PairlineError
    from pairline.server.app import build_app, make_uvicorn
    from pairline.server.config import ServerConfig

    if args.max_sessions < 1 or args.ctx < 64 or args.max_queue < 1:
        raise PairlineError("--max-sessions and --max-queue must be at least 1, --ctx at least 64")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sock = bind_socket(args.host, args.port)  # before loading the model: a taken port fails in a second, clearly
    engine = load_engine(args.model, n_ctx=args.ctx, runtime=args.runtime)
    cfg = ServerConfig(host=args.host, port=args.port, api_key=api_key(args), max_sessions=args.max_sessions,
                       max_queue=args.max_queue, idle_timeout_s=args.idle_timeout, prefill_ahead=args.prefill_ahead,
                       fim_order=args.fim_order, allowed_hosts=tuple(args.allow_host),
                       allowed_origins=tuple(args.allow_origin))
    app = build_app(engine, cfg)
    server = make_uvicorn(app, args.host, args.port)
    warn_if_exposed(args.host, cfg.api_key, "pairline serve", f"set {API_KEY_ENV}")
    logging.getLogger("pairline.server").info("serving %s on http://%s:%d (ws://%s:%d/v1/responses), loaded in %.1fs",
                                              engine.model_name, args.host, args.port, args.host, args.port,
                                              engine.load_s)
    server.run(sockets=[sock])
    return 0


def api_key(args: argparse.Namespace) -> str | None:
    """--api-key, else $PAIRLINE_API_KEY, else None (no key)."""
    return args.api_key or os.environ.get(API_KEY_ENV) or None

