"""`pairline serve`: WebSocket sessions and OpenAI-compatible HTTP on one port."""

from __future__ import annotations

import argparse
import logging
import os

from pairline.server.config import API_KEY_ENV, server_config
from pairline.wire.listen import add_web_options, bind_socket, warn_if_exposed


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="serve a model: WebSocket sessions at /v1/responses, OpenAI-compatible HTTP at /v1/...",
        description="Serve one model on HOST:PORT: the WebSocket session protocol at ws://HOST:PORT/v1/responses "
        "(docs/protocol.md), OpenAI-compatible /v1/chat/completions, /v1/completions, /v1/models, and /health, "
        "/metrics, and the web app's page at / (docs/app.md; it needs --workspace). Binds loopback by default; "
        "SIGTERM closes open sessions with a final event.",
    )
    _add_options(p, port=8765)
    p.add_argument("--workspace", metavar="DIR", default=None,
                   help="the folder the web app at / edits (prints the app's URL, with its token, once serving)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="serve on Ray Serve: replicas of the engine behind Serve's proxy on --port, sessions kept on "
                   "their replica; joins the Ray cluster running here (or at ADDRESS), else starts one "
                   "(docs/scaling.md, \"pairline on Ray Serve\"; needs pip install 'pairline[ray]')")
    p.add_argument("--replicas", default="1", metavar="N|MIN:MAX",
                   help="with --ray: N engine replicas, or MIN:MAX for Serve's autoscaling (default 1)")
    p.set_defaults(func=cmd_serve, open_browser=False, deep_model=None, commit=True, test_cmd="pytest -q", server=None)
    a = subparsers.add_parser(
        "app",
        help="the web app on a folder: files, live diffs, accept per hunk, stop, steer, undo (opens the browser)",
        description="Serve the real-time model and the web app on DIR (default: the current folder), and open the "
        "browser on it: the URL carries a one-time token, so no other page can drive it (docs/app.md). Edits go "
        "through the same workspace layer as `pairline edit`: atomic writes, refused if a file changed on disk, a "
        "commit per accepted hunk in a git repository, exact undo. Binds loopback by default.",
    )
    a.add_argument("workspace", nargs="?", default=".", metavar="DIR", help="the folder to edit (default: .)")
    _add_options(a, port=8766)
    a.add_argument("--deep-model", default=None, metavar="NAME",
                   help="the deep tier's model, loaded on the first deep turn (default: the 1.5B deep default; "
                   "'same' runs deep turns on --model)")
    a.add_argument("--no-browser", dest="open_browser", action="store_false", help="print the URL, open nothing")
    a.add_argument("--no-commit", dest="commit", action="store_false", help="no git commit per accepted hunk")
    a.add_argument("--test-cmd", default="pytest -q", help="what the deep tier runs as the tests (default: pytest -q)")
    a.add_argument("--server", default=None, metavar="URL",
                   help="use the model(s) of a running `pairline serve` or `pairline route` (its deep mode for deep "
                   f"turns) instead of loading one here; its key, if any, from {API_KEY_ENV}")
    a.set_defaults(func=cmd_serve, open_browser=True)
    return p


def _add_options(p: argparse.ArgumentParser, port: int) -> None:
    from pairline.engine.load import add_runtime_option
    from pairline.models.registry import DEFAULT_REALTIME

    p.add_argument("--model", "-m", default=DEFAULT_REALTIME, help=f"name or path (default {DEFAULT_REALTIME})")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=port, help=f"port (default {port})")
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


def cmd_serve(args: argparse.Namespace) -> int:
    """`pairline serve`, and `pairline app` (the same with a workspace, and the browser opened)."""
    from pairline.app.web import (
        AppConfig,
        app_routes,
        app_url,
        deep_tier,
        local_client,
        new_token,
        remote_tiers,
        run_app_only,
        workspace_root,
    )
    from pairline.engine.load import load_engine
    from pairline.engine.runtime import threads_beside_a_browser
    from pairline.errors import PairlineError
    from pairline.server.app import run_server

    if args.max_sessions < 1 or args.ctx < 64 or args.max_queue < 1:
        raise PairlineError("--max-sessions and --max-queue must be at least 1, --ctx at least 64")
    if getattr(args, "ray", None):  # `pairline app` has no --ray
        return serve_on_ray(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    root = workspace_root(args.workspace) if args.workspace else None
    sock = bind_socket(args.host, args.port)  # before loading the model: a taken port fails in a second, clearly
    # the web app's page is at / either way; its socket needs a workspace and the token of the printed URL
    token = new_token()

    def started() -> None:
        if root is None:
            return
        url = app_url(args.host, args.port, token)
        print(f"pairline app: {url}  (workspace {root}; Ctrl-C stops it)", flush=True)
        if args.open_browser:
            import webbrowser

            if not webbrowser.open(url):
                print("pairline app: no browser found here; open the URL above", flush=True)

    if args.command == "app" and not os.environ.get("PAIRLINE_THREADS"):  # the browser opens on this machine
        os.environ["PAIRLINE_THREADS"] = str(threads_beside_a_browser())
    if args.server:  # the app alone: its tabs are sessions of that server or router
        realtime, deep = remote_tiers(args.server, os.environ.get(API_KEY_ENV))
        realtime().close()  # unreachable, or not a pairline server: said now, not at the first tab
        app = AppConfig(root, token, realtime, open_deep=deep, commit=args.commit, test_cmd=args.test_cmd)
        run_app_only(app, sock, args.host, args.port, tuple(args.allow_host), tuple(args.allow_origin), started)
        return 0
    engine = load_engine(args.model, n_ctx=args.ctx, runtime=args.runtime)
    cfg = server_config(args)
    warn_if_exposed(args.host, cfg.api_key, f"pairline {args.command}", f"set {API_KEY_ENV}")
    app = AppConfig(root, token, local_client(args.host, args.port, cfg.api_key),
                    open_deep=deep_tier(args.deep_model, args.model, args.ctx, args.runtime), commit=args.commit,
                    test_cmd=args.test_cmd)
    run_server(engine, cfg, sock, app_routes(app), started)
    return 0


def serve_on_ray(args: argparse.Namespace) -> int:
    """`pairline serve --ray`: pairline/server/ray_serve.py, if Ray Serve is installed (an extra)."""
    from pairline.errors import PairlineError

    try:
        import ray.serve  # noqa: F401
    except ImportError:
        raise PairlineError("--ray needs Ray Serve: pip install 'pairline[ray]'") from None
    from pairline.server.ray_serve import replica_counts, run

    replica_counts(args.replicas)  # a bad value is said before Ray starts
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run(args)
