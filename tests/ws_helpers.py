"""A synchronous client of a pairline session (WebSocket), for the server tests."""

from __future__ import annotations

import json

from websockets.sync.client import connect


class SessionClient:
    def __init__(self, url: str, **kw):
        self.ws = connect(url, open_timeout=10, close_timeout=5, **kw).__enter__()
        self.created = self.recv()

    def recv(self, timeout: float = 60) -> dict:
        return json.loads(self.ws.recv(timeout=timeout))

    def send(self, **event) -> None:
        self.ws.send(json.dumps(event))

    def until(self, *types: str, timeout: float = 60) -> list[dict]:
        """Every event up to and including the first of one of `types`."""
        events = []
        while True:
            events.append(self.recv(timeout))
            if events[-1]["type"] in types:
                return events

    def close(self) -> None:
        self.ws.close()
