"""`pairline route -c tiers.toml`: the two-tier router on one port (docs/scaling.md)."""

from __future__ import annotations

import argparse
import logging

from pairline.wire.listen import add_web_options, bind_socket, warn_if_exposed


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "route",
        help="route sessions and requests to a real-time and a deep tier of backends",
        description="One ingress (the same WebSocket session protocol and OpenAI-compatible HTTP as `pairline "
        "serve`) in front of two tiers of backends: pairline servers, in-process engines, or any "
        "OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ray Serve). The tier comes from the request's `mode` "
        "(realtime | deep | auto); see docs/scaling.md for the config file. The client key, if any, is read from the "
        "environment variable named by [router] api_key_env, never from the command line.",
    )
    p.add_argument("--config", "-c", required=True, metavar="TOML", help="the tiers file (docs/scaling.md)")
    p.add_argument("--host", default=None, help="address to bind (default: [router] host, else 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: [router] port, else 8780)")
    add_web_options(p)  # added to [router] allowed_hosts / allowed_origins
    p.set_defaults(func=cmd_route)
    return p


def cmd_route(args: argparse.Namespace) -> int:
    from pairline.router.app import build_app, make_uvicorn
    from pairline.router.config import load_config
    from pairline.router.core import Router

    cfg = load_config(args.config)
    cfg.host = args.host or cfg.host
    cfg.port = args.port if args.port is not None else cfg.port
    cfg.allowed_hosts += args.allow_host
    cfg.allowed_origins += args.allow_origin
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sock = bind_socket(cfg.host, cfg.port)  # before loading anything: a taken port fails at once, clearly
    router = Router(cfg)
    router.load_inprocess()
    app = build_app(router)
    server = make_uvicorn(app, cfg.host, cfg.port)
    warn_if_exposed(cfg.host, cfg.api_key, "pairline route", "set [router] api_key_env")
    tiers = "; ".join(f"{t}: {', '.join(f'{b.name} ({b.kind} {b.root})' for b in bs)}"
                      for t, bs in router.tiers.items())
    logging.getLogger("pairline.router").info("routing on http://%s:%d (ws://%s:%d/v1/responses), default mode %s; %s",
                                              cfg.host, cfg.port, cfg.host, cfg.port, cfg.default_mode, tiers)
    server.run(sockets=[sock])
    return 0
