"""A developer's probe, not a benchmark: the scheduler's own time per token (emit gap - engine busy
gap), in process, no transport, on a tiny random model. Two sinks, alternating, 6 turns each: one
that drops events ('noop'), and the server's own sink into an asyncio task ('hop': JobEvents where
the checkout has it, else the call_soon_threadsafe + asyncio.Queue it replaced), so the same file
measures a checkout before and after c9acba8 (docs/benchmarks.md, issue 20, per-token overhead).

    PYTHONPATH=CHECKOUT python scripts/scheduler_overhead_probe.py CHECKOUT
"""

import asyncio
import statistics
import sys
import threading

sys.path.insert(0, sys.argv[1] + "/tests")
from engine_helpers import tiny_engine  # noqa: E402

from pairline.engine.sampling import SamplingParams  # noqa: E402
from pairline.engine.tokenizer import Tokenizer  # noqa: E402
from pairline.models.fetch import resolve  # noqa: E402
from pairline.server import scheduler as S  # noqa: E402
from pairline.server.metrics import Metrics  # noqa: E402

tok = Tokenizer.load(resolve("smollm2-135m"))
eng = tiny_engine(tok, n_ctx=4096)
sched = S.Scheduler(eng, Metrics("tiny"), max_slots=2, max_queue=8)
sched.start()
loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()
prompt = tok.encode("Write a long story about a cat who codes in Python. " * 4)
new = hasattr(S, "JobEvents")


def run(kind: str) -> tuple[float, float]:
    done = threading.Event()
    if kind == "noop":
        def sink(k, v):
            if k != "token":
                done.set()
    elif new:
        ev = S.JobEvents(loop)

        async def consume():
            while (await ev.get())[0] == "tokens":
                pass
            done.set()

        asyncio.run_coroutine_threadsafe(consume(), loop)
        sink = ev.put
    else:
        q: asyncio.Queue = asyncio.Queue()

        async def consume():
            while (await q.get())[0] == "token":
                pass
            done.set()

        asyncio.run_coroutine_threadsafe(consume(), loop)

        def sink(k, v):
            loop.call_soon_threadsafe(q.put_nowait, (k, v))
    job = S.Job("http", lambda: prompt, SamplingParams(temperature=1.0, max_tokens=400, seed=1), sink)
    sched.submit(job)
    done.wait(300)
    t = job.server_timings()
    return t["emit_gap_s"] - t["engine_gap_s"], t["engine_gap_s"]


for kind in ("noop", "hop", "noop", "hop"):
    rs = [run(kind) for _ in range(6)]
    o, b = statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)
    side = "after " if new else "before"
    print(side, kind, f"overhead {1e6 * o:.1f} us, engine {1e3 * b:.3f} ms, {100 * o / b:.2f}% of a step")
sched.stop()
