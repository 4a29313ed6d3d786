"""What the security tests share: a tiny-engine server and a router in front of it, both real
uvicorn servers on 127.0.0.1."""

from __future__ import annotations

from pairline.router.app import RouterThread
from pairline.router.config import parse_config
from pairline.server.app import ServerThread
from pairline.server.config import ServerConfig
from tests.engine_helpers import tiny_engine


def start_server(tokenizer, n_ctx: int = 512, **cfg) -> ServerThread:
    return ServerThread(tiny_engine(tokenizer, n_ctx=n_ctx), ServerConfig(**cfg)).__enter__()


def router_toml(backend_url: str, router_extra: str = "") -> str:
    """Both tiers on one pairline server (the tier does not matter to these tests)."""
    return f"""
[router]
health_interval_s = 0.5
{router_extra}
[tiers.realtime]
backends = [{{ kind = "pairline", url = "{backend_url}", name = "rt" }}]
[tiers.deep]
backends = [{{ kind = "pairline", url = "{backend_url}", name = "deep" }}]
"""


def start_router(backend_url: str, router_extra: str = "") -> RouterThread:
    return RouterThread(parse_config(router_toml(backend_url, router_extra), "test.toml")).__enter__()
