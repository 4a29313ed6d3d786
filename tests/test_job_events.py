"""JobEvents: the engine thread's events reach the asyncio task in order, none lost, tokens that
arrived together come out together; and a delta event encoded by DeltaEvents is the same text
json.dumps gives for its dict."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from pairline.engine.generate import TokenEvent
from pairline.server.scheduler import JobEvents
from pairline.wire.session_socket import DeltaEvents, encode_event


def tok(i: int) -> TokenEvent:
    return TokenEvent(i, f"t{i} ", i, 0.0)


def test_tokens_that_arrived_together_come_out_as_one_batch():
    async def main():
        events = JobEvents(asyncio.get_running_loop())
        for i in range(3):
            events.put("token", tok(i))
        events.put("done", "generation")
        events.put("token", tok(9))  # after a non-token event: a batch of its own
        first = await events.get()
        second = await events.get()
        third = await events.get()
        return first, second, third

    (k1, batch), (k2, done), (k3, late) = asyncio.run(main())
    assert k1 == "tokens" and [e.token_id for e in batch] == [0, 1, 2]
    assert (k2, done) == ("done", "generation")
    assert k3 == "tokens" and [e.token_id for e in late] == [9]


def test_a_waiting_task_gets_every_event_from_another_thread_in_order():
    n = 20_000

    async def main():
        events = JobEvents(asyncio.get_running_loop())

        def engine():
            for i in range(n):
                events.put("token", tok(i))
            events.put("done", None)

        thread = threading.Thread(target=engine)
        thread.start()
        seen, batches = [], 0
        while True:
            kind, payload = await asyncio.wait_for(events.get(), 10)
            if kind != "tokens":
                break
            batches += 1
            seen += [e.token_id for e in payload]
        thread.join()
        return seen, batches

    seen, batches = asyncio.run(main())
    assert seen == list(range(n))
    assert 1 <= batches <= n


def test_a_get_that_timed_out_does_not_lose_what_comes_later():
    async def main():
        loop = asyncio.get_running_loop()
        events = JobEvents(loop)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(events.get(), 0.01)  # its waiter is cancelled
        threading.Timer(0.02, events.put, ("error", ValueError("boom"))).start()
        return await asyncio.wait_for(events.get(), 5)

    kind, err = asyncio.run(main())
    assert kind == "error" and str(err) == "boom"


def test_put_after_the_loop_is_gone_raises_so_the_scheduler_stops_the_work():
    loop = asyncio.new_event_loop()
    events = JobEvents(loop)
    loop.close()
    with pytest.raises(RuntimeError):
        events.put("token", tok(0))


@pytest.mark.parametrize("text", ["x", ' "quoted" \\ back', "naïve 東京 \n\t", ""])
def test_delta_events_encode_as_json_dumps_does(text):
    pos = {"item_id": "msg_abc123", "output_index": 0, "content_index": 0}
    fields = {"type": "response.output_text.delta", **pos, "delta": text, "logprobs": []}
    assert DeltaEvents(pos).encode(41, text) == encode_event(41, fields)
    assert json.loads(DeltaEvents(pos).encode(41, text))["sequence_number"] == 41
