"""Server settings: every limit in one place, so tests can shrink them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pairline.wire.protocol import DEFAULT_MAX_OUTPUT_TOKENS, AheadLimits


@dataclass(slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    api_key: str | None = None  # None: no auth (loopback default)
    # besides loopback names and IP addresses (docs/server.md, "Threat model"): the Host names a
    # remote bind answers to, and the web origins whose pages may use the server ("*": any)
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    max_sessions: int = 8  # KV caches kept resident (one engine fork each); LRU beyond that
    kv_budget_bytes: int | None = None  # also cap resident forks by memory (None: 1/4 of free RAM)
    max_connections: int = 64  # open WebSocket sessions (their text is kept; their KV may be evicted)
    max_queue: int = 32  # requests waiting for the engine; past it: 429 / an error event
    max_message_bytes: int = 1 << 20  # one WebSocket message or HTTP body
    max_output_tokens: int = 4096  # the most a request may ask for
    default_max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS
    idle_timeout_s: float = 600.0  # a WebSocket session with no client message for this long is closed
    shutdown_grace_s: float = 2.0  # SIGTERM: time given to open sessions for their final event
    retry_after_s: int = 1
    ahead: AheadLimits = field(default_factory=AheadLimits)  # draft and context limits per session
    prefill_ahead: bool = True  # prefill sessions' drafts and context while the engine idles
    fim_order: str = "spm"  # infill prompts (completions with a suffix): engine/fim.py


API_KEY_ENV = "PAIRLINE_API_KEY"  # the same variable the clients (`--server`) send their key from


def server_config(args) -> ServerConfig:
    """The ServerConfig of `pairline serve`'s options (`pairline app` and each Ray Serve replica take
    the same): the key from --api-key, else $PAIRLINE_API_KEY, else none."""
    return ServerConfig(host=args.host, port=args.port, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                        max_sessions=args.max_sessions, max_queue=args.max_queue, idle_timeout_s=args.idle_timeout,
                        prefill_ahead=args.prefill_ahead, fim_order=args.fim_order,
                        allowed_hosts=tuple(args.allow_host), allowed_origins=tuple(args.allow_origin))
