"""A router session's drafts and context on their way to its pairline backend sessions (docs/protocol.md,
"Prefill ahead"): the context kept in step with each backend session (only what differs is sent), the
latest draft passed on at most every DRAFT_INTERVAL_S, and, before a session's first turn, a backend
session opened for the tier its draft would be routed to, so that turn is prefilled while it is typed.
An OpenAI-compatible backend needs none of this: it gets the context in each request's messages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from pairline.router.backends import Backend, Retryable, WsLink
from pairline.router.balance import choose
from pairline.wire.protocol import context_diff, with_context

log = logging.getLogger("pairline.router")

AHEAD_EVENT_ID = "router.ahead"  # the event_id of what the router passes on ahead: errors about it are its own
DRAFT_INTERVAL_S = 0.05  # drafts passed on to a backend at most this often (the latest wins)


class PrefillAhead:
    """Mixed into RouterSession, whose state it reads: r, id, key, mode, defaults, history, turn,
    closed, links, draft, context, link_context, draft_task, draft_sent, opening."""

    def _pass_draft(self) -> None:
        """The latest draft to the backend sessions held open, at most every DRAFT_INTERVAL_S (a
        backend counts drafts too); with none open, one is opened for the tier the draft would take."""
        if self.draft_task is not None and not self.draft_task.done():
            return  # on its way: it sends whatever is latest when it goes
        self.draft_task = asyncio.create_task(self._send_draft())
        self._open_ahead()

    async def _send_draft(self) -> None:
        sent = None
        while self.draft is not None and self.draft != sent:  # until the latest has gone out
            wait = self.draft_sent + DRAFT_INTERVAL_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.draft is None:  # consumed by a response.create meanwhile
                return
            self.draft_sent, sent = time.monotonic(), self.draft
            for link in list(self.links.values()):
                if not link.closed:
                    with contextlib.suppress(ConnectionError):
                        await link.send({"type": "draft.update", "text": sent, "event_id": AHEAD_EVENT_ID})

    async def _sync_context(self, tier: str, link: WsLink, context: dict[str, str]) -> None:
        """Make the backend session hold `context` (order included), sending only what differs."""
        items = context_diff(self.link_context.get(tier, {}), context)
        if not items:
            return
        self.link_context[tier] = context
        await link.send({"type": "context.update", "items": items, "event_id": AHEAD_EVENT_ID})

    def _open_ahead(self) -> None:
        """No backend session yet: open one, for the tier the draft would be routed to, so the first
        turn's prompt is prefilled while it is typed. An OpenAI-compatible backend has nothing to open."""
        if self.turn is not None or self.closed or (self.opening is not None and not self.opening.done()):
            return
        if self.history or any(not link.closed for link in self.links.values()):
            return  # a session opened now would lack the history: only before the first turn
        system = [{"role": "system", "content": self.defaults["instructions"]}] if self.defaults.get("instructions") \
            else []
        draft = [{"role": "user", "content": self.draft or ""}]
        _, route = self.r.decide(self.mode, with_context(system, self.context, self.history + draft))
        tier = route.tier
        b = choose(self.r.tiers[tier], self.key, self.r.rings[tier], self.r.cfg.affinity_slack)
        if b is None or not b.speaks_ws:
            return
        self.opening = asyncio.create_task(self._open_link(tier, b))

    async def _open_link(self, tier: str, b: Backend) -> None:
        try:
            link = await WsLink.open(b, self.r.cfg.connect_timeout_s, self.key)
        except Retryable as err:
            log.info("router: session %s: no backend session ahead: %s", self.id, err)
            return
        current = self.links.get(tier)
        if self.closed or (current is not None and not current.closed):
            await link.close()  # a turn opened one meanwhile
            return
        self.links[tier] = link
        self.link_context[tier] = {}
        with contextlib.suppress(ConnectionError):
            await self._sync_context(tier, link, self.context)
            if self.draft is not None and self.turn is None:
                await link.send({"type": "draft.update", "text": self.draft, "event_id": AHEAD_EVENT_ID})
