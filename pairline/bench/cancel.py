"""`pairline bench cancel`: how long a cancel takes to stop the engine in the middle of a long
prompt's prefill (what a user waits for after Ctrl-C or a steer while a big file loads).

One uncancelled prefill is timed first; then each repeat starts the same prefill on a cold cache
and cancels it at a seeded random moment inside that time. Reported per repeat: the engine's
`timings.cancel_latency_s` (cancel() to the loop stopping) and how many prompt tokens stayed cached.
"""

from __future__ import annotations

import random
import statistics
import threading
import time

PROMPT_SOURCE = "sched-one-line"  # a real Python module, repeated until the prompt is long enough


def add_parser(sub) -> None:
    """`pairline bench cancel` (registered by pairline/bench/cli.py)."""
    from pairline.engine.load import add_runtime_option

    p = sub.add_parser(
        "cancel",
        help="cancel latency in the middle of a long prompt's prefill",
        description="Prefills a long prompt of real code, cancels it at seeded random moments, and reports "
        "how long each cancel took to stop the engine; prints a summary and writes JSON.",
    )
    p.add_argument("--model", "-m", default="qwen2.5-coder-0.5b", help="registry name or path")
    add_runtime_option(p)
    p.add_argument("--prompt-tokens", type=int, default=1500, help="prompt length (default 1500)")
    p.add_argument("--repeats", type=int, default=8, help="cancels to time (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed for the cancel moments")
    p.add_argument("--out", default=None, help="JSON file or folder (default: bench-results/)")
    p.set_defaults(func=cmd_cancel)


def run_cancel_bench(engine, prompt: list[int], repeats: int, seed: int, log=print) -> dict:
    from pairline.engine.generate import CancelToken
    from pairline.engine.sampling import SamplingParams

    one = SamplingParams(max_tokens=1)
    going_on = SamplingParams(max_tokens=64, ignore_eos=True)
    engine.reset()
    t0 = time.perf_counter()
    engine.generate(prompt, one, speculation="off").run()
    full_s = time.perf_counter() - t0
    log(f"uncancelled prefill of {len(prompt)} tokens: {full_s:.2f} s")
    rng = random.Random(seed)
    runs = []
    for i in range(repeats):
        engine.reset()
        cancel = CancelToken()
        at = rng.uniform(0.05, 0.95) * full_s
        timer = threading.Timer(at, cancel.cancel)
        timer.start()
        # room to decode a little: a cancel that lands only after the prefill is still timed
        g = engine.generate(prompt, going_on, cancel=cancel, speculation="off").run()
        timer.cancel()
        run = {"cancel_at_s": round(at, 4), "finish_reason": g.finish_reason,
               "landed_in": "decode" if g.token_ids else "prefill",  # a faster prefill may beat the timer
               "latency_s": g.timings.cancel_latency_s, "tokens_cached_after": engine.runtime.n_past}
        runs.append(run)
        shown = "—" if run["latency_s"] is None else f"{run['latency_s'] * 1000:.1f} ms"
        log(f"[{i + 1}/{repeats}] cancel at {at:.2f} s: {g.finish_reason}, stopped in {shown}, "
            f"{run['tokens_cached_after']} tokens kept (landed in {run['landed_in']})")
    engine.reset()
    latencies = sorted(r["latency_s"] for r in runs if r["latency_s"] is not None)
    return {
        "prompt_tokens": len(prompt),
        "prefill_chunk": engine.prefill_chunk,
        "runtime": engine.runtime.name,
        "interruptible": engine.runtime.interruptible,
        "uncancelled_prefill_s": full_s,
        "runs": runs,
        "median_latency_s": statistics.median(latencies) if latencies else None,
        "max_latency_s": latencies[-1] if latencies else None,
    }


def cmd_cancel(args) -> int:
    from pairline.bench.common import (
        default_out_path,
        git_state,
        invocation,
        load_tasks,
        machine_info,
        stderr_log,
        write_json,
    )
    from pairline.engine.load import load_engine
    from pairline.errors import PairlineError

    if args.prompt_tokens < 2 or args.repeats < 1:
        raise PairlineError("--prompt-tokens must be at least 2 and --repeats at least 1")
    err, log = stderr_log()
    engine = load_engine(args.model, runtime=args.runtime, n_ctx=args.prompt_tokens + 64)
    if args.prompt_tokens + 64 > engine.runtime.n_ctx:  # the model's own context is the cap
        raise PairlineError(f"--prompt-tokens {args.prompt_tokens} does not fit {args.model}'s context of "
                            f"{engine.runtime.n_ctx} tokens with room to decode (64)")
    source = next(t["source"] for t in load_tasks() if t["name"] == PROMPT_SOURCE)
    ids = engine.tokenizer.encode(source)
    prompt = (ids * (args.prompt_tokens // len(ids) + 1))[: args.prompt_tokens]
    result = {
        "bench": "cancel",
        "command": invocation(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": args.model,
        "machine": machine_info(),
        "git": git_state(),
        **run_cancel_bench(engine, prompt, args.repeats, args.seed, log=log),
    }
    path = default_out_path(args.out, args.model, kind="cancel")
    write_json(result, path)
    med, worst = result["median_latency_s"], result["max_latency_s"]
    print(f"{args.model} on {result['runtime']}: {len(result['runs'])} cancels inside a "
          f"{result['prompt_tokens']}-token prefill ({result['uncancelled_prefill_s']:.2f} s uncancelled, "
          f"chunks of {result['prefill_chunk']}): median {_ms(med)}, max {_ms(worst)}")
    err.print(f"wrote {path}")
    return 0


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.1f} ms"
